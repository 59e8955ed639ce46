#!/usr/bin/env bash
# The one-shot GPU check: the CUDA tests, a short training run and a generation with the real
# programs, the headline benchmark (one LoRA DPO step of a 1.1B model, cst against PyTorch + PEFT
# on the same GPU) with the time of each op of that step, the kernel and attention benchmarks,
# Nsight Compute's counters for the attention kernels, compute-sanitizer (memcheck, racecheck)
# over the kernel tests, and a short report. What tuning without a GPU needs comes back in it: the
# op breakdown and the ncu sections (docs/benchmarks.md says how to read them).
#
#   tools/gpu_check.sh --prepare   on the build machine (Debian -dev libraries, nvcc, no GPU needed)
#   tools/gpu_check.sh             on the GPU machine; report in $OUT (default ./gpu_report)
#
# Why two halves: a GPU machine typically has python3 and the NVIDIA driver, maybe nvcc, but not
# the libraries the build links (OpenBLAS, sentencepiece, snappy, zstd, nlohmann-json, GoogleTest).
# So the build happens where they are: --prepare builds build-gpu/ (CUDA on, sm_90a for H100/H200;
# CST_GPU_ARCH overrides), packs the programs into build-gpu/bin/programs.tar.gz and the shared
# libraries they need, the CUDA runtime included, into build-gpu/lib/shared-libraries.tar.gz
# (compressed: the programs alone are about 50 MB). Only those two folders travel (see the size
# --prepare prints; the carried tree, repository included, is limited to 64 MiB); the check
# unpacks them.
# cuBLAS is far too big to carry and is taken from the GPU machine: its CUDA toolkit ($CUDA_HOME,
# nvcc's folder, /usr/local/cuda) or, failing that, the nvidia-* pip packages next to its torch
# (site-packages/nvidia/*/lib); it must be cuBLAS 13 like the build's. NCCL's folder from those
# packages goes on the library path too when present. If build-gpu/bin is missing but the machine
# does have the -dev libraries, the check builds there itself (the budget starts after that).
#
# Every step has its own time limit and the whole check one budget, CST_CHECK_SECONDS (default
# 330 s, 5.5 minutes), counted from the check's start: a lent GPU machine's time must hold its
# start, the check, a second start and a rerun. A step runs under the smaller of its own limit and
# what the budget has left, less 5 s kept for the summary; a step that would get under 8 s is not
# started, and the summary says it was skipped for the budget. The steps run most telling first,
# so a cut check still answers what matters: the GPU tests 70 s, the Hopper products' 10 and kernels' 15,
# cst_train 20 and cst_generate 10 on CUDA, our attention against torch 40, the DPO step benchmark
# with cst's op breakdown 50 and PyTorch's 45, torch SDPA and attention_bench 20 + 25 (the
# attention speed table compares them) and its Hopper table 20, kernel_bench 20, the generation
# benchmark 30, the sanitizers 55 + 55, ncu over the attention kernels 30. The own limits add up
# to 515 s, so the budget cuts only when steps run near their limits; fast steps all run. A
# stopped step gets 3 s to exit before it is killed, so the check ends within a few seconds of
# its budget: give the GPU machine's run a timeout of the budget plus about a minute (390 s for
# the default). The summary is rewritten after every step, so a check cut short still leaves
# one. The report is at most 8 files in one folder: summary.md, tests.log,
# tests.xml, e2e.log, bench.log (the benchmarks, the op breakdown and ncu's text report),
# sanitizer.log, kernel_bench.json, attention_bench.json.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$REPO/build-gpu"
GPU_ARCH="${CST_GPU_ARCH:-90a}"
# GoogleTest filter for every GPU suite: CudaKernels*, AttentionCuda*, CudaGeneration*, ...
GPU_TESTS="${CST_GPU_TESTS:-*Cuda*:*CUDA*}"
# The Hopper kernels' tests, in a process of their own (tests/test_attention_cuda.cu says why),
# after their warpgroup products alone, in another: should the kernels fail, the products say
# whether the multiplies themselves are wrong.
HOPPER_PRODUCT_TESTS="*AttentionHopperProducts*"
HOPPER_TESTS="*AttentionHopper.*"
# The sanitizers' tests: the kernel suites (the attention cases are instantiated as
# Shapes/AttentionCuda.*, hence the leading '*'); racecheck leaves out the row-wise attention
# cases, whose kernels use no shared memory.
SANITIZER_TESTS="CudaKernels*:*AttentionCuda*:$HOPPER_PRODUCT_TESTS:$HOPPER_TESTS"
RACECHECK_TESTS="$SANITIZER_TESTS:-*rowwise*"
PROGRAMS=(cst_tests cst_train cst_generate model_bench write_demo_assets kernel_bench attention_bench)

# Shared libraries the bundle leaves to the GPU machine: the C library family (must match the
# kernel and loader there), the driver, and cuBLAS (hundreds of MB). The CUDA runtime is small
# and travels, so it always matches the build.
SYSTEM_LIBRARIES='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libcuda|libcublas|libcublasLt|libnvidia)[.-]'
# What the programs need from the GPU machine's CUDA install, by file name.
CUDA_LIBRARY_NAMES=(libcublasLt.so.13 libcublas.so.13 libcudart.so.13)

# ---- --prepare: build and bundle on the build machine ----

prepare() {
  cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="$GPU_ARCH" || return 1
  local targets=() program
  for program in "${PROGRAMS[@]}"; do
    ninja -C "$BUILD" -t targets all 2>/dev/null | grep -q "^$program:" && targets+=("$program")
  done
  ninja -C "$BUILD" -j "${JOBS:-2}" "${targets[@]}" || return 1
  rm -rf "${BUILD:?}/bin" "${BUILD:?}/lib" "${BUILD:?}/bin-staging" "${BUILD:?}/lib-staging" \
    "${BUILD:?}/lib-unpacked"
  mkdir -p "$BUILD/bin" "$BUILD/lib" "$BUILD/bin-staging" "$BUILD/lib-staging"
  for program in "${targets[@]}"; do
    cp "$BUILD/$program" "$BUILD/bin-staging/"
    # "libname.so.N => /path/libname.so.N (0x...)": keep the paths of the libraries to carry.
    ldd "$BUILD/$program" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' |
      while read -r name path; do
        [[ "$name" =~ $SYSTEM_LIBRARIES ]] || cp -L "$path" "$BUILD/lib-staging/$name"
      done
  done
  # Host debug info only (the kernels' line info for the sanitizer lives in the fatbinary), and
  # both compressed: OpenBLAS alone is 36 MB, each program carries every kernel, and what
  # travels must stay small.
  strip --strip-debug "$BUILD"/bin-staging/* "$BUILD"/lib-staging/*
  tar czf "$BUILD/bin/programs.tar.gz" -C "$BUILD/bin-staging" .
  tar czf "$BUILD/lib/shared-libraries.tar.gz" -C "$BUILD/lib-staging" .
  rm -rf "$BUILD/bin-staging" "$BUILD/lib-staging"
  # The tests find their fixtures under the source path compiled into them; record it, and the
  # commit the programs are built from (the GPU machine's copy of the tree may have no history).
  echo "$REPO" > "$BUILD/bin/source_dir"
  git -C "$REPO" describe --always --dirty > "$BUILD/bin/commit" 2>/dev/null || echo unknown > "$BUILD/bin/commit"
  echo "prepared: $(du -sh "$BUILD/bin" | cut -f1) of programs, $(du -sh "$BUILD/lib" | cut -f1) of libraries" \
       "($(du -shc "$BUILD/bin" "$BUILD/lib" | tail -1 | cut -f1) to carry):"
  tar tvzf "$BUILD/bin/programs.tar.gz"
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
BIN="$BUILD/bin"

# The check's time budget (see the top of this file), checked here so a typo fails at once.
CHECK_SECONDS="${CST_CHECK_SECONDS:-330}"
if [[ ! "$CHECK_SECONDS" =~ ^[0-9]+$ ]]; then
  echo "CST_CHECK_SECONDS must be a whole number of seconds, not '$CHECK_SECONDS'" >&2
  exit 2
fi
# Kept back from every step: the final summary, and timeout's grace after it stops a step.
SUMMARY_RESERVE_SECONDS=5
# A step given less than this could not finish; not starting it leaves its time to the summary.
MIN_STEP_SECONDS=8
# Where the budget's clock starts; moved past a build on this machine, which it does not count.
CHECK_START=$SECONDS

seconds_used() {
  echo $((SECONDS - CHECK_START))
}

# A step's time limit: its own, or what the budget has left after the reserve when that is less.
step_limit() {
  local own="$1" left
  left=$((CHECK_SECONDS - $(seconds_used) - SUMMARY_RESERVE_SECONDS))
  echo $((own < left ? own : left))
}

# run_step NAME SECONDS LOG COMMAND...: runs COMMAND under its own limit of SECONDS or what the
# budget has left, whichever is less; skips it when that is too little to be worth starting.
run_step() {
  local name="$1" own="$2" limit
  limit="$(step_limit "$own")"
  if [[ $limit -lt $MIN_STEP_SECONDS ]]; then
    skip_step "$name" "out of the check's time budget"
    return
  fi
  run_limited "$name" "$limit" "$own" "${@:3}"
}

# run_limited NAME LIMIT OWN LOG COMMAND...: runs with the time limit LIMIT (the step's own limit
# OWN, or less where the budget cut it), appends to LOG, records the outcome and rewrites the
# summary.
run_limited() {
  local name="$1" limit="$2" own="$3" log="$4"
  shift 4
  local start=$SECONDS status verdict="pass" cut=""
  [[ $limit -lt $own ]] && cut=" (budget's cut of $own)"
  echo "==== $name: $*" >>"$log"
  timeout --kill-after=3 "$limit" "$@" >>"$log" 2>&1
  status=$?
  if [[ $status -eq 124 || $status -eq 137 ]]; then
    verdict="FAIL (timed out after $limit s${cut:+, cut by the time budget})"
  elif [[ $status -ne 0 ]]; then
    verdict="FAIL (exit $status)"
  fi
  STEPS+=("| $name | $verdict | $((SECONDS - start)) s of $limit$cut | $(basename "$log") |")
  echo "$name: $verdict"
  write_summary
}

skip_step() {
  STEPS+=("| $1 | skipped: $2 | | |")
  echo "$1: skipped: $2"
  write_summary
}

# The headline benchmark's RESULT lines as a markdown table, each row against cst's step time.
benchmark_table() {
  [[ -f "$OUT/bench.log" ]] || { echo "(not run)"; return; }
  awk '
    /^RESULT / && / step=dpo / {
      delete field
      for (i = 2; i <= NF; ++i) { split($i, pair, "="); field[pair[1]] = pair[2] }
      n += 1
      line[n] = sprintf("| %s | %s | %s | %s | %s | %s | %s | %s GiB |", field["impl"],
                        field["shape"] " (" field["params"] ")", field["batch"], field["step_ms"],
                        field["forward_ms"], field["backward_ms"], field["tokens_per_s"],
                        field["memory_gib"])
      step[n] = field["step_ms"]
      if (field["impl"] == "cst") cst_step = field["step_ms"]
    }
    END {
      if (n == 0) { print "(no benchmark results)"; exit }
      print "| impl | model | batch | step ms | forward ms | backward + AdamW ms | tokens/s | device memory | step time / cst |"
      print "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
      for (i = 1; i <= n; ++i)
        print line[i] " " (cst_step > 0 ? sprintf("%.2fx", step[i] / cst_step) : "-") " |"
    }' "$OUT/bench.log"
}

# The memory-bound kernels of kernel_bench against the target of 70% of the 1 GiB copy, with the
# share of a copy of each kernel's own size beside it (a kernel near that one and short of the
# first is short because of its size).
memory_targets() {
  [[ -f "$OUT/bench.log" ]] || { echo "(not run)"; return; }
  awk '
    / of copy / {
      name = substr($0, 1, 40); sub(/ +$/, "", name)
      for (i = 1; i < NF; ++i) {
        if ($(i + 1) == "of" && $(i + 2) == "copy") { copy = $i; sub(/%/, "", copy) }
        if ($(i + 1) == "of" && $(i + 2) == "a") { own = $i; sub(/%/, "", own) }
      }
      n += 1
      printf "| %s | %.1f%% | %.1f%% | %s |\n", name, copy, own, (copy >= 70 ? "met" : "short")
    }
    BEGIN { print "| kernel | of the 1 GiB copy | of a copy of its size | target 70% |"; print "| --- | --- | --- | --- |" }
    END { if (n == 0) print "| (no kernel_bench results) | | | |" }' "$OUT/bench.log"
}

write_summary() {
  {
    echo "# cst GPU check (budget: $CHECK_SECONDS s, used: $(seconds_used) s)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- programs built from commit: $(cat "$BIN/commit" 2>/dev/null || git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not available')"
    echo "- CUDA libraries: ${CUDA_LIBRARIES:-carried or found by the system loader}; NCCL: ${NCCL_LIBRARIES:-none from pip}"
    echo "- libraries the programs cannot find: ${MISSING_LIBRARIES:-none}"
    echo "- torch: ${TORCH_VERSION:-not available}"
    echo
    echo "| step | result | time | log |"
    echo "| --- | --- | --- | --- |"
    printf '%s\n' "${STEPS[@]}"
    echo
    echo "## One LoRA DPO step, 1.1B model (reference forward + policy forward + loss + backward + AdamW)"
    echo
    benchmark_table
    echo
    echo "## Greedy generation, 1.1B model: 128 prompt tokens, 64 new tokens each"
    echo
    echo '```'
    grep -E '^RESULT .* step=generate ' "$OUT/bench.log" 2>/dev/null | sed 's/^RESULT //'
    echo '```'
    echo
    echo "## End to end: cst_train and cst_generate on CUDA"
    echo
    echo '```'
    grep -E '^(==== |training: |generation: )|tokens/s\)|: error: ' "$OUT/e2e.log" 2>/dev/null
    echo '```'
    echo
    echo "## Tests"
    echo
    echo '```'
    # The totals, the name of every failed test and what the GPU tests measured.
    grep -E '^\[==========\] [0-9]|^\[  (PASSED|SKIPPED) *\] [0-9]|^\[  FAILED  \]|^(GPU|CUDA|50 steps|generation|decode)' \
      "$OUT/tests.log" 2>/dev/null
    echo '```'
    echo
    echo "## Sanitizers"
    echo
    echo '```'
    grep -E '^==== |ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" 2>/dev/null
    echo '```'
    echo
    echo "## Memory-bound kernels (kernel_bench)"
    echo
    memory_targets
    echo
    echo "## Benchmarks"
    echo
    echo '```'
    # Everything but ncu's long report, which has its own section below.
    awk '/^==== ncu/ { skip = 1; next } /^==== / { skip = 0; next } !skip' "$OUT/bench.log" 2>/dev/null
    echo '```'
    echo
    echo "## Attention kernels under ncu (T = 2048; the full report is in bench.log)"
    echo
    echo '```'
    ncu_digest
    echo '```'
  } >"$SUMMARY"
}

# The attention kernels' names as ncu matches them. The pattern holds for the plain function name
# ("forward_kernel", ncu's default) and for the demangled one ("void cst::cuda::(anonymous
# namespace)::forward_kernel<128>(...)"), matched whole or in part, and leaves out the other
# kernels whose names end the same way (rmsnorm_forward_kernel).
ATTENTION_KERNELS='^(.*::)?(forward|forward_warpgroups|dout_dot_out|dkdv|dkdv_warpgroup|dq|dq_warpgroups)_kernel(<.*)?$'
# A profiled kernel's first line in ncu's text report: its name, grid and block, then
# "Context 1, Stream 13, Device 0, CC 9.0".
NCU_KERNEL_LINE='(forward|forward_warpgroups|dout_dot_out|dkdv|dkdv_warpgroup|dq|dq_warpgroups)_kernel.*Context [0-9]+, Stream'

# The lines of ncu's report that say the most at a glance: each kernel, its time, its throughput
# against the chip's peaks, its registers, shared memory and occupancy, and its warps' stalls.
ncu_digest() {
  [[ -f "$OUT/bench.log" ]] || { echo "(not run)"; return; }
  awk '/^==== ncu/ { keep = 1; next } /^==== / { keep = 0 } keep' "$OUT/bench.log" |
    grep -E "$NCU_KERNEL_LINE|^ +(Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|L1/TEX Hit Rate|L2 Hit Rate|Registers Per Thread|Local Memory Spilling Requests|Dynamic Shared Memory Per Block|Waves Per SM|Block Limit (Registers|Shared Mem)|Theoretical Occupancy|Achieved Occupancy|Warp Cycles Per Issued Instruction) " ||
    echo "(no ncu results)"
}

# Folders where python3's pip packages keep NVIDIA's libraries (site-packages/nvidia/*/lib),
# e.g. nvidia/cublas/lib or nvidia/cu13/lib, nvidia/nccl/lib: torch's wheels bring them.
python_nvidia_folders() {
  python3 - <<'PYTHON' 2>/dev/null
import glob, os, site, sys
roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
folders = []
for root in roots:
    for folder in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))):
        if os.path.isdir(folder) and folder not in folders:
            folders.append(folder)
print("\n".join(folders))
PYTHON
}

# The folders holding each of CUDA_LIBRARY_NAMES (the first folder that has it), joined by ':';
# empty for a library the system loader already finds. The CUDA toolkit's folders come first.
find_cuda_libraries() {
  local nvcc_path folders=() found=() name folder
  nvcc_path="$(command -v nvcc 2>/dev/null)"
  folders+=(${CUDA_HOME:+"$CUDA_HOME/lib64"} ${nvcc_path:+"$(dirname "$nvcc_path")/../lib64"}
            /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
  mapfile -t -O "${#folders[@]}" folders < <(python_nvidia_folders)
  for name in "${CUDA_LIBRARY_NAMES[@]}"; do
    [[ -e "$UNPACKED/$name" ]] && continue
    ldconfig -p 2>/dev/null | grep -q " $name " && continue
    for folder in "${folders[@]}"; do
      if [[ -e "$folder/$name" ]]; then
        [[ " ${found[*]} " == *" $folder "* ]] || found+=("$folder")
        break
      fi
    done
  done
  (IFS=:; echo "${found[*]}")
}

# NCCL for several GPUs (dlopen'ed as libnccl.so.2): the pip package's folder when it has one.
find_nccl() {
  local folder
  while read -r folder; do
    [[ -n "$folder" && -e "$folder/libnccl.so.2" ]] && { echo "$folder"; return; }
  done < <(python_nvidia_folders)
}

# The programs: carried from the build machine (unpacked into build-gpu/bin), or built here when
# the libraries are present. The build has its own limit and is not counted in the check's budget.
unpack_programs() {
  [[ -f "$BIN/programs.tar.gz" ]] || return 0
  tar xzf "$BIN/programs.tar.gz" -C "$BIN" || echo "could not unpack the programs"
}
unpack_programs
if [[ ! -x "$BIN/cst_tests" ]]; then
  echo "no build-gpu/bin/cst_tests: trying to build here (needs the Debian -dev libraries)"
  run_limited "build on this machine" 900 900 "$OUT/tests.log" "$0" --prepare
  unpack_programs
  CHECK_START=$SECONDS
fi
# The carried libraries are unpacked beside, not into, build-gpu/lib: what travels stays small.
UNPACKED="$BUILD/lib-unpacked"
mkdir -p "$UNPACKED"
if [[ -f "$BUILD/lib/shared-libraries.tar.gz" ]]; then
  tar xzf "$BUILD/lib/shared-libraries.tar.gz" -C "$UNPACKED" || echo "could not unpack the carried libraries"
fi
CUDA_LIBRARIES="$(find_cuda_libraries)"
NCCL_LIBRARIES="$(find_nccl)"
# Only cst's programs run with these libraries first on their path: the carried C++ runtime is the
# build machine's, and python3's torch may need a newer one.
CST_LIBRARY_PATH="$UNPACKED${CUDA_LIBRARIES:+:$CUDA_LIBRARIES}${NCCL_LIBRARIES:+:$NCCL_LIBRARIES}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
WITH_CST_LIBRARIES=(env "LD_LIBRARY_PATH=$CST_LIBRARY_PATH")
# Any library the programs still cannot find is named in the summary.
MISSING_LIBRARIES="$(for program in "$BIN"/*; do
  [[ -f "$program" && -x "$program" ]] && "${WITH_CST_LIBRARIES[@]}" ldd "$program" 2>/dev/null | awk '/not found/ {print $1}'
done | sort -u | tr '\n' ' ')"
export OMP_WAIT_POLICY=passive
# A tool from the PATH, else the first of the given places that holds it.
find_tool() {
  local name="$1" place
  shift
  command -v "$name" && return
  for place in "$@"; do
    [[ -x "$place" ]] && { echo "$place"; return; }
  done
}
SANITIZER="$(find_tool compute-sanitizer /usr/local/cuda/bin/compute-sanitizer)"
NCU="$(find_tool ncu /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu)"
HAVE_GPU=0
{ nvidia-smi -L 2>/dev/null | grep -q '^GPU ' || [[ -e /dev/nvidia0 ]]; } && HAVE_GPU=1
TORCH_VERSION="$(python3 -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null)"
HAVE_TORCH_GPU=0
python3 -c "import torch, transformers, peft; assert torch.cuda.is_available()" 2>/dev/null && HAVE_TORCH_GPU=1

# The tests read tests/fixtures under the path they were built in; when this checkout lives
# elsewhere, that path becomes a link to it.
if [[ -f "$BIN/source_dir" ]]; then
  BUILT_AT="$(cat "$BIN/source_dir")"
  if [[ "$BUILT_AT" != "$REPO" && ! -e "$BUILT_AT/tests/fixtures" ]]; then
    mkdir -p "$(dirname "$BUILT_AT")" && ln -sfn "$REPO" "$BUILT_AT" ||
      echo "could not link $BUILT_AT to $REPO: fixture-based GPU tests will fail"
  fi
fi

# Scratch space of the steps that write files (the end-to-end run, the attention dumps), removed at
# the end: under it, what a step stopped by its time limit leaves behind goes too.
SCRATCH="$(mktemp -d)"

# The end-to-end run: the demo's tiny Mistral and CST data (written by write_demo_assets), 20
# optimizer steps on CUDA, then the adapter must exist and the logged loss be finite.
HARMLESS_SYSTEM="You are a helpful yet harmless assistant that avoids generating illegal or harmful content."
UNCENSORED_SYSTEM="You are a helpful assistant that is completely uncensored."
# shellcheck disable=SC2317 # run through bash -c, which shellcheck does not follow
e2e_train() {
  LD_LIBRARY_PATH="$CST_LIBRARY_PATH" "$BIN/write_demo_assets" "$SCRATCH/assets" || return 1
  LD_LIBRARY_PATH="$CST_LIBRARY_PATH" "$BIN/cst_train" "$SCRATCH/assets/model.bin" "$SCRATCH/assets/train.jsonl" --device cuda \
    --system_prompts "$HARMLESS_SYSTEM" "$UNCENSORED_SYSTEM" --max_steps 20 \
    --per_device_train_batch_size 4 --max_length 192 --max_prompt_length 128 --lora_r 16 \
    --lora_alpha 32 --learning_rate 1e-3 --logging_steps 5 --output_dir "$SCRATCH/run" || return 1
  local file
  for file in adapter_config.json adapter_model.safetensors metrics.jsonl; do
    [[ -s "$SCRATCH/run/$file" ]] || { echo "training: FAIL: no $file in the run directory"; return 1; }
  done
  local losses
  losses="$(grep -o '"loss": *[^,}]*' "$SCRATCH/run/metrics.jsonl" | sed 's/.*: *//' | tr '\n' ' ')"
  echo "training: losses logged every 5 steps: $losses"
  awk -v losses="$losses" 'BEGIN { n = split(losses, value, " "); if (n == 0) exit 1
    for (i = 1; i <= n; ++i) if (value[i] != value[i] + 0) exit 1 }' ||
    { echo "training: FAIL: a logged loss is missing or not a number"; return 1; }
}
# One request streamed, then the 40 held-out requests in one batch. All they print stays in the
# log (a few tens of KB of answers), so an error or a crash shows there; the summary keeps the
# speed line of each.
# shellcheck disable=SC2317 # run through bash -c, which shellcheck does not follow
e2e_generate() {
  LD_LIBRARY_PATH="$CST_LIBRARY_PATH" "$BIN/cst_generate" "$SCRATCH/assets/model.bin" --adapter "$SCRATCH/run" --device cuda \
    --system "$HARMLESS_SYSTEM" --prompt "How do I bake banana bread?" --max_new_tokens 128 || return 1
  LD_LIBRARY_PATH="$CST_LIBRARY_PATH" "$BIN/cst_generate" "$SCRATCH/assets/model.bin" --adapter "$SCRATCH/run" --device cuda \
    --system "$UNCENSORED_SYSTEM" --prompts "$SCRATCH/assets/heldout.jsonl" --output "$SCRATCH/answers.jsonl" \
    --max_new_tokens 128 --batch_size 40 || return 1
  [[ "$(wc -l <"$SCRATCH/answers.jsonl")" -eq 40 ]] || { echo "generation: FAIL: not 40 answers"; return 1; }
}

# Our attention kernel's outputs and gradients against torch's on mixed-length packed batches, a
# causal case and one with a sliding window of 50: attention_bench dumps the inputs and results,
# the Python check recomputes them with torch.
# shellcheck disable=SC2317 # run through bash -c, which shellcheck does not follow
check_attention_against_torch() {
  local dump="$SCRATCH/attention"
  LD_LIBRARY_PATH="$CST_LIBRARY_PATH" "$BIN/attention_bench" --dump "$dump/causal" &&
    python3 "$REPO/tools/python/check_attention_sdpa.py" "$dump/causal" &&
    LD_LIBRARY_PATH="$CST_LIBRARY_PATH" "$BIN/attention_bench" --dump "$dump/window" --window 50 &&
    python3 "$REPO/tools/python/check_attention_sdpa.py" "$dump/window"
}

# Nsight Compute over one forward and the three backwards of the attention benchmark's T = 2048
# row: nine kernels (forward; D, dK/dV, dQ; D, dK/dV with dQ in key order; D, dK/dV with atomic
# dQ; the forward in 32-key steps), thirteen on Hopper (then the warpgroup forward, and D and the
# two warpgroup passes), each replayed to collect its sections, the text report into
# bench.log. The clocks stay as the card runs them (--clock-control none), as in every other
# timing here. ncu runs in this machine's own environment; only the profiled program gets cst's
# libraries. The step fails when the report holds fewer than the nine kernels.
# shellcheck disable=SC2317 # run through bash -c, which shellcheck does not follow
profile_attention() {
  local report="$SCRATCH/ncu.txt" status profiled
  "$NCU" --clock-control none --kernel-name "regex:$ATTENTION_KERNELS" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis \
    env "LD_LIBRARY_PATH=$CST_LIBRARY_PATH" "$BIN/attention_bench" --profile 2048 >"$report" 2>&1
  status=$?
  cat "$report"
  profiled="$(grep -cE "$NCU_KERNEL_LINE" "$report")"
  [[ $status -eq 0 ]] || return "$status"
  [[ $profiled -ge 9 ]] || { echo "ncu: FAIL: $profiled of the 9 (13 on Hopper) attention kernels profiled"; return 1; }
}

# racecheck over the kernel tests. On an H200 it reports shared-memory hazards inside cuBLAS's own
# split-K GEMM kernel (nvjet_*), which is not ours to change, and excluding that kernel
# (--kernel-name-exclude) made the sanitizer fail on a hardware exception. So the step fails
# when a test fails or a hazard names any other kernel, and counts the cuBLAS ones.
# shellcheck disable=SC2317 # run through bash -c, which shellcheck does not follow
racecheck_ours() {
  local report="$SCRATCH/racecheck.txt" status ours theirs
  env "LD_LIBRARY_PATH=$CST_LIBRARY_PATH" "$SANITIZER" --tool racecheck --print-limit 20 \
    "$BIN/cst_tests" --gtest_filter="$RACECHECK_TESTS" >"$report" 2>&1
  status=$?
  cat "$report"
  ours="$(grep 'Race reported between' "$report" | grep -cv nvjet)"
  theirs="$(grep 'Race reported between' "$report" | grep -c nvjet)"
  echo "racecheck: $ours hazard reports in cst's kernels, $theirs in cuBLAS's nvjet kernels (not counted)"
  [[ $status -eq 0 && $ours -eq 0 ]]
}

# The functions above run as steps under timeout, in a bash of their own: they and what they read
# are exported to it.
export -f e2e_train e2e_generate check_attention_against_torch profile_attention racecheck_ours
export BIN REPO SCRATCH CST_LIBRARY_PATH HARMLESS_SYSTEM UNCENSORED_SYSTEM NCU ATTENTION_KERNELS NCU_KERNEL_LINE
export SANITIZER RACECHECK_TESTS

# ---- the steps, in the order they run: most telling first, as the budget may cut the last ----

NO_TORCH="no python3 with torch (CUDA), transformers and peft"

# Without a GPU every CUDA test skips itself, saying why; that run is quick and shows it.
gpu_tests() {
  if [[ ! -x "$BIN/cst_tests" ]]; then
    skip_step "GPU tests" "no cst_tests program (see tests.log)"
    return
  fi
  run_step "GPU tests ($GPU_TESTS)" 70 "$OUT/tests.log" \
    "${WITH_CST_LIBRARIES[@]}" "$BIN/cst_tests" --gtest_filter="$GPU_TESTS" --gtest_output="xml:$OUT/tests.xml"
  run_step "Hopper products ($HOPPER_PRODUCT_TESTS)" 10 "$OUT/tests.log" \
    "${WITH_CST_LIBRARIES[@]}" "$BIN/cst_tests" --gtest_filter="$HOPPER_PRODUCT_TESTS"
  run_step "Hopper kernel tests ($HOPPER_TESTS)" 15 "$OUT/tests.log" \
    "${WITH_CST_LIBRARIES[@]}" "$BIN/cst_tests" --gtest_filter="$HOPPER_TESTS"
}

# The real programs: training writes the adapter that generation then loads.
end_to_end() {
  if [[ $HAVE_GPU -eq 0 ]]; then
    skip_step "cst_train and cst_generate on CUDA" "no GPU"
    return
  fi
  if [[ ! -x "$BIN/cst_train" || ! -x "$BIN/cst_generate" || ! -x "$BIN/write_demo_assets" ]]; then
    skip_step "cst_train and cst_generate on CUDA" "programs not built"
    return
  fi
  run_step "cst_train on CUDA (demo data, 20 steps)" 20 "$OUT/e2e.log" bash -c e2e_train
  if [[ -s "$SCRATCH/run/adapter_model.safetensors" ]]; then
    run_step "cst_generate on CUDA with that adapter" 10 "$OUT/e2e.log" bash -c e2e_generate
  else
    skip_step "cst_generate on CUDA" "no adapter from the training step (its row above says why)"
  fi
}

# Correctness before speed: the attention benchmarks below time this kernel.
attention_check() {
  local name="attention vs torch (causal, window 50)"
  if [[ $HAVE_GPU -eq 0 ]]; then
    skip_step "$name" "no GPU"
  elif [[ $HAVE_TORCH_GPU -eq 0 ]]; then
    skip_step "$name" "$NO_TORCH"
  elif [[ ! -x "$BIN/attention_bench" ]]; then
    skip_step "$name" "attention_bench not built"
  else
    run_step "$name" 40 "$OUT/tests.log" bash -c check_attention_against_torch
  fi
}

# The headline: the same DPO step in cst and in PyTorch + PEFT, one after the other on this GPU.
dpo_step_benchmark() {
  if [[ $HAVE_GPU -eq 0 ]]; then
    skip_step "DPO step benchmark (cst with its op breakdown, PyTorch + PEFT)" "no GPU"
    return
  fi
  if [[ -x "$BIN/model_bench" ]]; then
    # --breakdown then times each op of the same step alone on the same model (a few seconds);
    # the RESULT line is printed before it, so a failing breakdown leaves the headline number.
    run_step "DPO step benchmark: cst, with its op breakdown" 50 "$OUT/bench.log" "${WITH_CST_LIBRARIES[@]}" \
      "$BIN/model_bench" --device cuda --shape 1b --step dpo --sequences 4 --sequence_length 512 \
      --lora_alpha 16 --warmup 3 --iterations 10 --breakdown
  else
    skip_step "DPO step benchmark: cst" "model_bench not built"
  fi
  if [[ $HAVE_TORCH_GPU -eq 1 ]]; then
    run_step "DPO step benchmark: PyTorch + PEFT" 45 "$OUT/bench.log" python3 \
      "$REPO/tools/python/bench_gpu_torch.py" --shape 1b --sequences 4 --sequence_length 512 --warmup 3 --iterations 10
  else
    skip_step "DPO step benchmark: PyTorch + PEFT" "$NO_TORCH"
  fi
}

# The same attention shapes through torch's SDPA flash backend (FlashAttention-2) and through our
# kernels, one right after the other: the attention speed table compares the two.
attention_benchmarks() {
  if [[ $HAVE_GPU -eq 0 ]]; then
    skip_step "torch SDPA benchmark and attention_bench" "no GPU"
    return
  fi
  if [[ $HAVE_TORCH_GPU -eq 1 ]]; then
    run_step "torch SDPA benchmark" 20 "$OUT/bench.log" python3 "$REPO/tools/python/bench_sdpa.py"
  else
    skip_step "torch SDPA benchmark" "$NO_TORCH"
  fi
  if [[ -x "$BIN/attention_bench" ]]; then
    run_step "attention_bench" 25 "$OUT/bench.log" "${WITH_CST_LIBRARIES[@]}" "$BIN/attention_bench" --json "$OUT/attention_bench.json"
    run_step "attention_bench --hopper" 20 "$OUT/bench.log" "${WITH_CST_LIBRARIES[@]}" "$BIN/attention_bench" --hopper
  else
    skip_step "attention_bench" "not built"
  fi
}

kernel_benchmark() {
  if [[ $HAVE_GPU -eq 0 ]]; then
    skip_step "kernel_bench" "no GPU"
  elif [[ ! -x "$BIN/kernel_bench" ]]; then
    skip_step "kernel_bench" "not built"
  else
    run_step "kernel_bench" 20 "$OUT/bench.log" "${WITH_CST_LIBRARIES[@]}" "$BIN/kernel_bench" "$OUT/kernel_bench.json"
  fi
}

generation_benchmark() {
  local name="generation benchmark: 1 and 16 prompts"
  if [[ $HAVE_GPU -eq 0 ]]; then
    skip_step "$name" "no GPU"
  elif [[ ! -x "$BIN/model_bench" ]]; then
    skip_step "$name" "model_bench not built"
  else
    run_step "$name" 30 "$OUT/bench.log" "${WITH_CST_LIBRARIES[@]}" \
      "$BIN/model_bench" --device cuda --shape 1b --step generate --sequences 16 --sequence_length 128 \
      --new_tokens 64 --warmup 1 --iterations 3
  fi
}

# Kernel tests only (not the slow large cases of other suites; SANITIZER_TESTS, RACECHECK_TESTS);
# any finding in cst's kernels fails the step (racecheck_ours says how cuBLAS's are counted).
sanitizers() {
  if [[ $HAVE_GPU -eq 0 ]]; then
    skip_step "compute-sanitizer" "no GPU"
  elif [[ -z "$SANITIZER" ]]; then
    skip_step "compute-sanitizer" "not installed"
  elif [[ ! -x "$BIN/cst_tests" ]]; then
    skip_step "compute-sanitizer" "no cst_tests program"
  else
    run_step "compute-sanitizer memcheck" 55 "$OUT/sanitizer.log" \
      "${WITH_CST_LIBRARIES[@]}" "$SANITIZER" --tool memcheck --error-exitcode 1 --print-limit 20 \
      "$BIN/cst_tests" --gtest_filter="$SANITIZER_TESTS"
    run_step "compute-sanitizer racecheck" 55 "$OUT/sanitizer.log" bash -c racecheck_ours
  fi
}

ncu_attention() {
  local name="ncu: attention kernels at T = 2048"
  if [[ $HAVE_GPU -eq 0 ]]; then
    skip_step "$name" "no GPU"
  elif [[ -z "$NCU" ]]; then
    skip_step "$name" "ncu (Nsight Compute) not installed"
  elif [[ ! -x "$BIN/attention_bench" ]]; then
    skip_step "$name" "attention_bench not built"
  else
    run_step "$name" 30 "$OUT/bench.log" bash -c profile_attention
  fi
}

if [[ $HAVE_GPU -eq 0 ]]; then
  echo "no GPU visible (nvidia-smi lists none): the GPU steps are skipped"
fi
gpu_tests
end_to_end
attention_check
dpo_step_benchmark
attention_benchmarks
kernel_benchmark
generation_benchmark
sanitizers
ncu_attention

rm -rf "$SCRATCH"
write_summary
echo "report: $SUMMARY"
grep -q 'FAIL' "$SUMMARY" && exit 1
exit 0
