#!/usr/bin/env bash
# make bench: forward + backward time of the ~20M-parameter benchmark models on the CPU backend
# (tools/bench/model_bench.cpp) beside PyTorch on the same number of threads
# (tools/python/bench_cpu_torch.py; skipped, saying so, when python3 lacks torch, transformers or
# peft). The definitions of the models and the step are in those two files and docs/benchmarks.md.
#
#   tools/bench/run_bench.sh
#   CST_BENCH_THREADS=2 CST_BENCH_SHAPE=v32k BUILD=build-cpu tools/bench/run_bench.sh
#
#   BUILD              build directory holding model_bench (default: build, as the Makefile)
#   CST_BENCH_THREADS  threads for both (default: all processors)
#   CST_BENCH_SHAPE    v32k, v8k or all (default)
set -euo pipefail
cd "$(dirname "$0")/../.."

build=${BUILD:-build}
threads=${CST_BENCH_THREADS:-$(nproc)}
shape=${CST_BENCH_SHAPE:-all}
bench="$build/model_bench"
if [ ! -x "$bench" ]; then
  echo "run_bench.sh: $bench not found; build it first (make, or BUILD=<dir>)" >&2
  exit 1
fi

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "machine: ${cpu:-unknown CPU}, $(nproc) processors; load average before: $load"
# Other work on the machine steals cores from the timed threads: say so next to the numbers.
if awk -v load="$(cut -d' ' -f1 /proc/loadavg)" -v threads="$threads" \
    'BEGIN { exit !(load > threads + 0.5) }'; then
  echo "warning: the machine is busy (1-minute load above $threads threads): wall times are" \
       "noisy; compare the CPU times too, or rerun when it is idle"
fi

results=$(mktemp)
trap 'rm -f "$results"' EXIT
"$bench" --device cpu --threads "$threads" --shape "$shape" | tee -a "$results"

if python3 -c "import torch, transformers, peft" 2>/dev/null; then
  # OMP_NUM_THREADS as well as torch.set_num_threads: torch's OpenMP pool reads it at start-up.
  OMP_NUM_THREADS=$threads python3 tools/python/bench_cpu_torch.py --threads "$threads" \
    --shape "$shape" | tee -a "$results"
else
  echo "PyTorch reference skipped: python3 with torch, transformers and peft was not found"
fi

# One table from the RESULT lines: each row's step time against cst's on the same shape.
echo
awk '
  /^RESULT / {
    delete field
    for (i = 2; i <= NF; ++i) { split($i, pair, "="); field[pair[1]] = pair[2] }
    n += 1
    shape[n] = field["shape"]; impl[n] = field["impl"]; params[n] = field["params"]
    step[n] = field["step_ms"]; cpu[n] = field["cpu_ms"]
    forward[n] = field["forward_ms"]; backward[n] = field["backward_ms"]
    if (field["impl"] == "cst") cst_step[field["shape"]] = field["step_ms"]
  }
  END {
    printf "%-6s %-7s %-12s %10s %10s %10s %10s %12s\n", "shape", "params", "impl",
           "step ms", "cpu ms", "fwd ms", "bwd ms", "vs cst"
    for (i = 1; i <= n; ++i) {
      ratio = cst_step[shape[i]] > 0 ? sprintf("%.2fx", step[i] / cst_step[shape[i]]) : "-"
      printf "%-6s %-7s %-12s %10s %10s %10s %10s %12s\n", shape[i], params[i], impl[i], step[i],
             cpu[i], forward[i], backward[i], ratio
    }
    print "(median wall time of a forward + backward step; vs cst = step time / cst step time)"
  }' "$results"
