// Flash attention speed: TFLOP/s of the forward and backward at head dim 128, causal, 32 query
// heads over 8 key/value heads, 16k tokens per batch split into equal sequences of 512..4096; the
// forward also with each query tile (64 rows, 16 per warp; 128 rows, 32 per warp; 128 rows in
// 32-key steps), and the backward with each way of forming dq (AttentionBackward: recomputed in
// a pass of its own, the default; added by the dK/dV blocks in key order; by atomics), so that
// one run tells which to make the default. The Hopper kernels (the rows128_warpgroups forward,
// BackwardKernels; compute capability 9.0 only) have a table of their own, --hopper, which
// tools/gpu_check.sh runs as a process of its own: a kernel that faults would take the whole
// process's CUDA context, and the main table with it.
// Causal FLOPs count only the visible half: forward 4 * N * T * H * D / 2 (two matmuls, 2 FLOPs
// per multiply-add) for N tokens in sequences of T; backward 2.5x that (five matmuls, none
// recounted for the recomputation it does). tools/python/bench_sdpa.py prints the same table for
// torch's SDPA flash backend.
//
//   attention_bench [--json FILE]          the table, and optionally the rows as JSON
//   attention_bench --dump DIR [--window W]  runs one small mixed-length case and writes its
//       inputs and outputs for tools/python/check_attention_sdpa.py
//   attention_bench --hopper               the Hopper kernels beside the default ones, per length
//   attention_bench --profile T            exactly one forward and one backward of each kind
//       over the table's batch in sequences of T, for a profiler: under `ncu` each kernel launch
//       is one profiled result (tools/gpu_check.sh, docs/benchmarks.md)
#include "kernels/program.h"
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/attention.h"
#include "kernels/cuda_common.cuh"
#include "kernels/device.h"

namespace {

using cst::DType;
using cst::Device;
using cst::OwnedTensor;

struct Inputs {
  OwnedTensor q, k, v, dout, out, lse, dq, dk, dv;
};

OwnedTensor random_bf16(const std::vector<int64_t>& shape, std::mt19937& rng) {
  OwnedTensor host(shape, DType::f32, Device::cpu);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  float* values = host->f32();
  for (int64_t i = 0; i < host->numel(); ++i) values[i] = normal(rng);
  OwnedTensor device(shape, DType::bf16, Device::cuda);
  cst::copy_tensor(device, host);
  return device;
}

Inputs make_inputs(int64_t tokens, const cst::AttentionShape& shape, unsigned seed) {
  std::mt19937 rng(seed);
  const std::vector<int64_t> q_shape = {tokens, shape.heads, shape.head_dim};
  const std::vector<int64_t> kv_shape = {tokens, shape.kv_heads, shape.head_dim};
  Inputs in;
  in.q = random_bf16(q_shape, rng);
  in.k = random_bf16(kv_shape, rng);
  in.v = random_bf16(kv_shape, rng);
  in.dout = random_bf16(q_shape, rng);
  in.out = OwnedTensor(q_shape, DType::bf16, Device::cuda);
  in.lse = OwnedTensor({shape.heads, tokens}, DType::f32, Device::cuda);
  in.dq = OwnedTensor(q_shape, DType::bf16, Device::cuda);
  in.dk = OwnedTensor(kv_shape, DType::bf16, Device::cuda);
  in.dv = OwnedTensor(kv_shape, DType::bf16, Device::cuda);
  return in;
}

void forward(const Inputs& in, const std::vector<int32_t>& cu_seqlens,
             const cst::AttentionShape& shape) {
  cst::attention_forward(in.out, in.lse, in.q, in.k, in.v, cu_seqlens, shape);
}

// The forward with a chosen query tile (the op above runs cst::cuda::default_forward_query_tile()).
void forward_with_tile(const Inputs& in, const std::vector<int32_t>& cu_seqlens,
                       const cst::AttentionShape& shape, cst::cuda::ForwardQueryTile tile) {
  cst::cuda::attention_forward(in.out, in.lse, in.q, in.k, in.v, cu_seqlens, shape, tile);
}

void backward(const Inputs& in, const std::vector<int32_t>& cu_seqlens,
              const cst::AttentionShape& shape,
              cst::AttentionBackward mode = cst::AttentionBackward::recompute_dq) {
  cst::attention_backward(in.dq, in.dk, in.dv, in.dout, in.q, in.k, in.v, in.out, in.lse,
                          cu_seqlens, shape, mode);
}

// The backward with dq recomputed in a pass of its own, on chosen kernels.
void backward_with_kernels(const Inputs& in, const std::vector<int32_t>& cu_seqlens,
                           const cst::AttentionShape& shape, cst::cuda::BackwardKernels kernels) {
  cst::cuda::attention_backward(in.dq, in.dk, in.dv, in.dout, in.q, in.k, in.v, in.out, in.lse,
                                cu_seqlens, shape, cst::AttentionBackward::recompute_dq, kernels);
}

// Mean milliseconds per call over `repeats` calls, after warm-up calls.
template <class Call>
double time_ms(Call call, int repeats) {
  for (int i = 0; i < 3; ++i) call();
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  CUDA_CHECK(cudaEventRecord(start, cst::cuda::stream()));
  for (int i = 0; i < repeats; ++i) call();
  CUDA_CHECK(cudaEventRecord(stop, cst::cuda::stream()));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float total = 0;
  CUDA_CHECK(cudaEventElapsedTime(&total, start, stop));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return total / repeats;
}

// The table's problem: 16384 tokens in equal sequences, 32 query heads over 8 kv heads of 128.
constexpr int64_t kTokens = 16384;
constexpr cst::AttentionShape kShape{32, 8, 128, 0};

std::vector<int32_t> equal_sequences(int seqlen) {
  std::vector<int32_t> cu_seqlens = {0};
  while (cu_seqlens.back() < kTokens) cu_seqlens.push_back(cu_seqlens.back() + seqlen);
  return cu_seqlens;
}

// One row of the table on `in` (the same inputs for every length: drawing 168M normal numbers on
// the CPU takes seconds).
nlohmann::json benchmark(Inputs& in, int seqlen) {
  const std::vector<int32_t> cu_seqlens = equal_sequences(seqlen);
  forward(in, cu_seqlens, kShape);  // backward needs a real out and lse
  using cst::cuda::ForwardQueryTile;
  // The Hopper forward is left to --hopper, unless it is what the op runs.
  const ForwardQueryTile op_tile = cst::cuda::default_forward_query_tile();
  std::map<ForwardQueryTile, double> forward_tile_ms;
  for (ForwardQueryTile tile : cst::cuda::kForwardQueryTiles)
    if (tile != ForwardQueryTile::rows128_warpgroups || tile == op_tile)
      forward_tile_ms[tile] = time_ms([&] { forward_with_tile(in, cu_seqlens, kShape, tile); }, 20);
  // The op's forward is its tile's: timed above, not again.
  double forward_ms = forward_tile_ms.at(op_tile);
  double backward_ms = time_ms([&] { backward(in, cu_seqlens, kShape); }, 20);
  double backward_ordered_ms = time_ms(
      [&] { backward(in, cu_seqlens, kShape, cst::AttentionBackward::ordered_dq); }, 20);
  double backward_atomic_ms = time_ms(
      [&] { backward(in, cu_seqlens, kShape, cst::AttentionBackward::atomic_dq); }, 20);
  double forward_flops = 4.0 * double(kTokens) * seqlen * kShape.heads * kShape.head_dim / 2;
  double backward_flops = 2.5 * forward_flops;
  return {{"seqlen", seqlen},
          {"batch", kTokens / seqlen},
          {"heads", kShape.heads},
          {"kv_heads", kShape.kv_heads},
          {"head_dim", kShape.head_dim},
          {"forward_ms", forward_ms},
          {"forward_tflops", forward_flops / forward_ms * 1e-9},
          {"forward_64_query_tile_tflops",
           forward_flops / forward_tile_ms.at(ForwardQueryTile::rows64) * 1e-9},
          {"forward_128_query_tile_tflops",
           forward_flops / forward_tile_ms.at(ForwardQueryTile::rows128) * 1e-9},
          {"forward_128_query_tile_32_key_steps_tflops",
           forward_flops / forward_tile_ms.at(ForwardQueryTile::rows128_steps32) * 1e-9},
          {"backward_ms", backward_ms},
          {"backward_tflops", backward_flops / backward_ms * 1e-9},
          {"backward_ordered_dq_ms", backward_ordered_ms},
          {"backward_ordered_dq_tflops", backward_flops / backward_ordered_ms * 1e-9},
          {"backward_atomic_dq_ms", backward_atomic_ms},
          {"backward_atomic_dq_tflops", backward_flops / backward_atomic_ms * 1e-9}};
}

// The Hopper kernels against the default ones, at every length of the table, in TFLOP/s: the
// forward with each tile, and the backward with dq recomputed on each choice of kernels.
void hopper_table() {
  using cst::cuda::BackwardKernels;
  using cst::cuda::ForwardQueryTile;
  if (!cst::cuda::warpgroup_kernels_run())
    cst::fail("attention_bench: --hopper: the warpgroup kernels need a GPU of compute "
              "capability 9.0");
  std::printf("cst flash attention on Hopper (warpgroup multiplies), TFLOP/s, head_dim 128, "
              "causal, 32 heads / 8 kv heads, 16384 tokens\n");
  std::printf("%8s %8s %14s %8s %16s %18s %14s\n", "seqlen", "fwd", "fwd warpgroups", "bwd mma",
              "bwd warpgroup_dq", "bwd warpgroup_dkdv", "bwd warpgroups");
  Inputs in = make_inputs(kTokens, kShape, 1);
  for (int seqlen : {512, 1024, 2048, 4096}) {
    const std::vector<int32_t> cu_seqlens = equal_sequences(seqlen);
    const double forward_flops =
        4.0 * double(kTokens) * seqlen * kShape.heads * kShape.head_dim / 2;
    auto forward_tflops = [&](ForwardQueryTile tile) {
      return forward_flops /
             time_ms([&] { forward_with_tile(in, cu_seqlens, kShape, tile); }, 20) * 1e-9;
    };
    auto backward_tflops = [&](BackwardKernels kernels) {
      return 2.5 * forward_flops /
             time_ms([&] { backward_with_kernels(in, cu_seqlens, kShape, kernels); }, 20) * 1e-9;
    };
    const double forward_default = forward_tflops(cst::cuda::kDefaultForwardQueryTile);
    const double forward_hopper = forward_tflops(ForwardQueryTile::rows128_warpgroups);
    forward(in, cu_seqlens, kShape);  // the backward's out and lse
    std::printf("%8d %8.1f %14.1f", seqlen, forward_default, forward_hopper);
    std::printf(" %8.1f", backward_tflops(BackwardKernels::mma));
    std::printf(" %16.1f", backward_tflops(BackwardKernels::warpgroup_dq));
    std::printf(" %18.1f", backward_tflops(BackwardKernels::warpgroup_dkdv));
    std::printf(" %14.1f\n", backward_tflops(BackwardKernels::warpgroups));
  }
}

void write_raw(const std::filesystem::path& path, const cst::Tensor& device) {
  std::vector<char> bytes(device.nbytes());
  cst::cuda::copy_bytes(bytes.data(), device.data, bytes.size());
  std::ofstream file(path, std::ios::binary);
  file.write(bytes.data(), std::streamsize(bytes.size()));
  if (!file) cst::fail("cannot write ", path.string());
}

// One forward and each backward once and nothing else, so that a profiler sees each attention
// kernel once (forward, then D, dK/dV and dQ; then D and dK/dV with dQ in key order; then D,
// dK/dV with atomic dQ and the conversion of its accumulator; then the forward in 32-key steps,
// and last, on Hopper, the warpgroup forward and D and both warpgroup passes): no warm-up, since
// a profiler replays each launch itself.
void profile_once(int seqlen) {
  const std::vector<int32_t> cu_seqlens = equal_sequences(seqlen);
  Inputs in = make_inputs(kTokens, kShape, 1);
  forward(in, cu_seqlens, kShape);
  backward(in, cu_seqlens, kShape);
  backward(in, cu_seqlens, kShape, cst::AttentionBackward::ordered_dq);
  backward(in, cu_seqlens, kShape, cst::AttentionBackward::atomic_dq);
  forward_with_tile(in, cu_seqlens, kShape, cst::cuda::ForwardQueryTile::rows128_steps32);
  const bool hopper = cst::cuda::warpgroup_kernels_run();
  if (hopper) {
    forward_with_tile(in, cu_seqlens, kShape, cst::cuda::ForwardQueryTile::rows128_warpgroups);
    backward_with_kernels(in, cu_seqlens, kShape, cst::cuda::BackwardKernels::warpgroups);
  }
  cst::cuda::synchronize();
  std::printf("attention_bench --profile: one forward and the three backwards (dq recomputed, "
              "ordered, atomic), then the forward in 32-key steps%s, ",
              hopper ? ", the warpgroup forward and the backward on warpgroups" : "");
  std::printf("%lld tokens in sequences of %d, %d heads / %d kv heads of %d\n",
              static_cast<long long>(kTokens), seqlen, kShape.heads, kShape.kv_heads,
              kShape.head_dim);
}

// A small case with lengths that are not multiples of the tile, for an outside check.
void dump_case(const std::filesystem::path& directory, int window) {
  const std::vector<int32_t> cu_seqlens = {0, 1, 78, 278, 342};
  const cst::AttentionShape shape{8, 2, 128, window};
  Inputs in = make_inputs(cu_seqlens.back(), shape, 7);
  forward(in, cu_seqlens, shape);
  backward(in, cu_seqlens, shape);
  std::filesystem::create_directories(directory);
  const std::pair<const char*, const OwnedTensor*> tensors[] = {
      {"q", &in.q},       {"k", &in.k},   {"v", &in.v},   {"dout", &in.dout}, {"out", &in.out},
      {"lse", &in.lse},   {"dq", &in.dq}, {"dk", &in.dk}, {"dv", &in.dv}};
  nlohmann::json meta = {{"cu_seqlens", cu_seqlens},
                         {"heads", shape.heads},
                         {"kv_heads", shape.kv_heads},
                         {"head_dim", shape.head_dim},
                         {"window", shape.window},
                         {"files", nlohmann::json::object()}};
  for (const auto& [name, tensor] : tensors) {
    write_raw(directory / (std::string(name) + ".bin"), **tensor);
    meta["files"][name] = {{"dtype", cst::dtype_name((*tensor)->dtype)},
                           {"shape", std::vector<int64_t>((*tensor)->shape.begin(),
                                                          (*tensor)->shape.begin() +
                                                              (*tensor)->rank)}};
  }
  std::ofstream(directory / "meta.json") << meta.dump(2) << "\n";
  std::printf("wrote %s\n", directory.string().c_str());
}

// --profile's sequence length: it must split the batch into whole sequences.
int parse_seqlen(const char* text) {
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < 1 || value > kTokens || kTokens % value != 0)
    cst::fail("attention_bench: --profile: expected a sequence length that divides ", kTokens,
              ", got '", text, "'");
  return int(value);
}

int run(int argc, char** argv) {
  std::string json_path, dump_directory;
  int window = 0, profile_seqlen = 0;
  bool hopper = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--hopper") {
      hopper = true;
      continue;
    }
    if (i + 1 >= argc) cst::fail("attention_bench: ", flag, " needs a value");
    if (flag == "--json") json_path = argv[++i];
    else if (flag == "--dump") dump_directory = argv[++i];
    else if (flag == "--window") window = std::stoi(argv[++i]);
    else if (flag == "--profile") profile_seqlen = parse_seqlen(argv[++i]);
    else cst::fail("attention_bench: unknown flag ", flag,
                   " (--json FILE, --dump DIR, --window W, --profile T, --hopper)");
  }
  if (!cst::cuda_available()) cst::fail("attention_bench: no CUDA GPU visible");
  if (!dump_directory.empty()) {
    dump_case(dump_directory, window);
    return 0;
  }
  if (profile_seqlen > 0) {
    profile_once(profile_seqlen);
    return 0;
  }
  if (hopper) {
    hopper_table();
    return 0;
  }
  std::printf("cst flash attention, head_dim 128, causal, 32 heads / 8 kv heads, 16384 tokens\n");
  std::printf("%8s %6s %10s %10s %10s %10s %12s %12s %14s %16s %15s\n", "seqlen", "batch",
              "fwd ms", "fwd TF/s", "bwd ms", "bwd TF/s", "fwd64 TF/s", "fwd128 TF/s",
              "fwd128/32 TF/s", "bwd ordered TF/s", "bwd atomic TF/s");
  nlohmann::json rows = nlohmann::json::array();
  Inputs in = make_inputs(kTokens, kShape, 1);
  for (int seqlen : {512, 1024, 2048, 4096}) {
    nlohmann::json row = benchmark(in, seqlen);
    std::printf("%8d %6d %10.3f %10.1f %10.3f %10.1f %12.1f %12.1f %14.1f %16.1f %15.1f\n", seqlen,
                row["batch"].get<int>(), row["forward_ms"].get<double>(),
                row["forward_tflops"].get<double>(), row["backward_ms"].get<double>(),
                row["backward_tflops"].get<double>(),
                row["forward_64_query_tile_tflops"].get<double>(),
                row["forward_128_query_tile_tflops"].get<double>(),
                row["forward_128_query_tile_32_key_steps_tflops"].get<double>(),
                row["backward_ordered_dq_tflops"].get<double>(),
                row["backward_atomic_dq_tflops"].get<double>());
    rows.push_back(row);
  }
  if (!json_path.empty()) {
    std::ofstream file(json_path);
    file << nlohmann::json{{"benchmark", "attention"}, {"implementation", "cst"}, {"rows", rows}}
                .dump(2)
         << "\n";
    if (!file) cst::fail("attention_bench: cannot write ", json_path);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cst::run_program("attention_bench", [&] { return run(argc, argv); });
}
