#!/usr/bin/env bash
# The one-shot GPU check: run the CUDA tests, compute-sanitizer (memcheck and racecheck) over
# them, and the kernel and attention benchmarks, and write a short report.
#
#   tools/gpu_check.sh --prepare   on the build machine (Debian -dev libraries, nvcc, no GPU needed)
#   tools/gpu_check.sh             on the GPU machine; report in $OUT (default ./gpu_report)
#
# Why two halves: a GPU machine typically has nvcc, cmake, ninja and python3, but not the
# libraries the build links (OpenBLAS, sentencepiece, snappy, zstd, nlohmann-json, GoogleTest).
# So the build happens where they are: --prepare builds build-gpu/ (CUDA on, sm_90 for H100/H200;
# CST_GPU_ARCH overrides), copies the test and benchmark programs to build-gpu/bin and the shared
# libraries they need, compressed, to build-gpu/lib/shared-libraries.tar.gz. Only those two
# folders travel (about 25 MB). The CUDA toolkit's own libraries, cuBLAS above all, are far too
# big to carry and are taken from the GPU machine's CUDA install, which must be CUDA 13 like the
# build's. On the GPU machine the libraries are unpacked and the programs run with
# LD_LIBRARY_PATH=build-gpu/lib plus the CUDA library folder. If build-gpu/bin is missing but the
# machine does have the -dev libraries, the check builds there itself.
#
# Every step has a time limit and the check goes on past a failing step; the summary lists each
# step's status. The report is at most 8 files in one folder: summary.md, tests.log, tests.xml,
# sanitizer.log, bench.log, kernel_bench.json, attention_bench.json. Total time on an H100 is
# bounded by the step limits below (about 7 minutes).
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$REPO/build-gpu"
GPU_ARCH="${CST_GPU_ARCH:-90}"
# GoogleTest filter for every GPU suite: CudaKernels*, AttentionCuda*, ...
GPU_TESTS="${CST_GPU_TESTS:-*Cuda*:*CUDA*}"
PROGRAMS=(cst_tests kernel_bench attention_bench)

# Shared libraries the bundle leaves to the GPU machine: the C library family (must match the
# kernel and loader there) and the CUDA driver and toolkit.
SYSTEM_LIBRARIES='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libcuda|libcudart|libcublas|libcublasLt|libnvidia)[.-]'

# ---- --prepare: build and bundle on the build machine ----

prepare() {
  cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="$GPU_ARCH" || return 1
  local targets=(cst_tests kernel_bench)
  ninja -C "$BUILD" -t targets all 2>/dev/null | grep -q '^attention_bench:' && targets+=(attention_bench)
  ninja -C "$BUILD" -j "${JOBS:-2}" "${targets[@]}" || return 1
  rm -rf "$BUILD/bin" "$BUILD/lib" "$BUILD/lib-staging"
  mkdir -p "$BUILD/bin" "$BUILD/lib" "$BUILD/lib-staging"
  local program
  for program in "${targets[@]}"; do
    cp "$BUILD/$program" "$BUILD/bin/"
    # "libname.so.N => /path/libname.so.N (0x...)": keep the paths of the libraries to carry.
    ldd "$BUILD/$program" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' |
      while read -r name path; do
        [[ "$name" =~ $SYSTEM_LIBRARIES ]] || cp -L "$path" "$BUILD/lib-staging/$name"
      done
  done
  # Host debug info only (the kernels' line info for the sanitizer lives in the fatbinary), and
  # the libraries compressed: OpenBLAS alone is 36 MB, and what travels must stay small.
  strip --strip-debug "$BUILD"/bin/* "$BUILD"/lib-staging/*
  tar czf "$BUILD/lib/shared-libraries.tar.gz" -C "$BUILD/lib-staging" .
  rm -rf "$BUILD/lib-staging"
  # The tests find their fixtures under the source path compiled into them; record it.
  echo "$REPO" > "$BUILD/bin/source_dir"
  echo "prepared: $(du -sh "$BUILD/bin" | cut -f1) of programs, $(du -sh "$BUILD/lib" | cut -f1) of libraries:"
  ls "$BUILD/bin"
  tar tzf "$BUILD/lib/shared-libraries.tar.gz"
  echo "carry build-gpu/bin and build-gpu/lib to the GPU machine, then run tools/gpu_check.sh there"
}

if [[ "${1:-}" == "--prepare" ]]; then
  prepare
  exit $?
fi

# ---- the check, on the GPU machine ----

OUT="${OUT:-$REPO/gpu_report}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
STEPS=()

# run_step NAME SECONDS LOG COMMAND...: runs with a time limit, appends to LOG, records the outcome.
run_step() {
  local name="$1" seconds="$2" log="$3"
  shift 3
  local start=$SECONDS status
  echo "==== $name: $*" >>"$log"
  timeout --kill-after=10 "$seconds" "$@" >>"$log" 2>&1
  status=$?
  local verdict="pass"
  if [[ $status -eq 124 || $status -eq 137 ]]; then
    verdict="FAIL (timed out after ${seconds}s)"
  elif [[ $status -ne 0 ]]; then
    verdict="FAIL (exit $status)"
  fi
  STEPS+=("| $name | $verdict | $((SECONDS - start)) s | $(basename "$log") |")
  echo "$name: $verdict"
}

skip_step() {
  STEPS+=("| $1 | skipped: $2 | | |")
  echo "$1: skipped: $2"
}

find_cuda_libraries() {
  local nvcc_path
  nvcc_path="$(command -v nvcc 2>/dev/null)"
  for folder in ${CUDA_HOME:+"$CUDA_HOME/lib64"} ${nvcc_path:+"$(dirname "$nvcc_path")/../lib64"} \
                /usr/local/cuda/lib64; do
    [[ -e "$folder/libcublasLt.so.13" || -e "$folder/libcublasLt.so" ]] && { echo "$folder"; return; }
  done
}

# The programs: carried from the build machine, or built here when the libraries are present.
if [[ ! -x "$BUILD/bin/cst_tests" ]]; then
  echo "no build-gpu/bin/cst_tests: trying to build here (needs the Debian -dev libraries)"
  run_step "build on this machine" 900 "$OUT/tests.log" "$0" --prepare
fi
if [[ -f "$BUILD/lib/shared-libraries.tar.gz" ]]; then
  tar xzf "$BUILD/lib/shared-libraries.tar.gz" -C "$BUILD/lib" || echo "could not unpack the carried libraries"
fi
CUDA_LIBRARIES="$(find_cuda_libraries)"
export LD_LIBRARY_PATH="$BUILD/lib${CUDA_LIBRARIES:+:$CUDA_LIBRARIES}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)"
BIN="$BUILD/bin"

# The tests read tests/fixtures under the path they were built in; when this checkout lives
# elsewhere, that path becomes a link to it.
if [[ -f "$BIN/source_dir" ]]; then
  BUILT_AT="$(cat "$BIN/source_dir")"
  if [[ "$BUILT_AT" != "$REPO" && ! -e "$BUILT_AT/tests/fixtures" ]]; then
    mkdir -p "$(dirname "$BUILT_AT")" && ln -sfn "$REPO" "$BUILT_AT" ||
      echo "could not link $BUILT_AT to $REPO: fixture-based GPU tests will fail"
  fi
fi

if [[ -x "$BIN/cst_tests" ]]; then
  run_step "GPU tests ($GPU_TESTS)" 90 "$OUT/tests.log" \
    "$BIN/cst_tests" --gtest_filter="$GPU_TESTS" --gtest_output="xml:$OUT/tests.xml"
  if [[ -n "$SANITIZER" ]]; then
    # Kernel tests only (not the slow large cases of other suites); any finding fails the step.
    for tool in memcheck racecheck; do
      run_step "compute-sanitizer $tool" 120 "$OUT/sanitizer.log" \
        "$SANITIZER" --tool "$tool" --error-exitcode 1 --print-limit 20 \
        "$BIN/cst_tests" --gtest_filter="CudaKernels*:AttentionCuda*"
    done
  else
    skip_step "compute-sanitizer" "not installed"
  fi
else
  skip_step "GPU tests and sanitizers" "no cst_tests program (see tests.log)"
fi

if [[ -x "$BIN/kernel_bench" ]]; then
  run_step "kernel_bench" 90 "$OUT/bench.log" "$BIN/kernel_bench" "$OUT/kernel_bench.json"
else
  skip_step "kernel_bench" "not built"
fi
if [[ -x "$BIN/attention_bench" ]]; then
  run_step "attention_bench" 90 "$OUT/bench.log" "$BIN/attention_bench" --json "$OUT/attention_bench.json"
else
  skip_step "attention_bench" "not built"
fi

# The same attention shapes through torch's SDPA flash backend (FlashAttention-2) in this run, and
# our kernel's outputs and gradients against torch on a mixed-length packed batch.
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  run_step "torch SDPA benchmark" 90 "$OUT/bench.log" python3 "$REPO/tools/python/bench_sdpa.py"
  if [[ -x "$BIN/attention_bench" ]]; then
    DUMP="$(mktemp -d)"
    run_step "attention vs torch (causal)" 60 "$OUT/tests.log"       bash -c "'$BIN/attention_bench' --dump '$DUMP/causal' && python3 '$REPO/tools/python/check_attention_sdpa.py' '$DUMP/causal'"
    run_step "attention vs torch (window 50)" 60 "$OUT/tests.log"       bash -c "'$BIN/attention_bench' --dump '$DUMP/window' --window 50 && python3 '$REPO/tools/python/check_attention_sdpa.py' '$DUMP/window'"
  fi
else
  skip_step "torch SDPA benchmark and check" "no python3 with a CUDA torch"
fi

{
  echo "# cst GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not available')"
  echo "- CUDA libraries: ${CUDA_LIBRARIES:-not found}"
  echo
  echo "| step | result | time | log |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${STEPS[@]}"
  echo
  echo "## Tests"
  echo
  echo '```'
  # The totals and the name of every failed test.
  grep -E '^\[==========\] [0-9]|^\[  (PASSED|SKIPPED) *\] [0-9]|^\[  FAILED  \]' "$OUT/tests.log" 2>/dev/null
  echo '```'
  echo
  echo "## Sanitizers"
  echo
  echo '```'
  grep -E '^==== |ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" 2>/dev/null
  echo '```'
  echo
  echo "## Benchmarks"
  echo
  echo '```'
  grep -vE '^==== ' "$OUT/bench.log" 2>/dev/null
  echo '```'
} >"$SUMMARY"

echo "report: $SUMMARY"
grep -q 'FAIL' "$SUMMARY" && exit 1
exit 0
