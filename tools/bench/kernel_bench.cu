// Microbenchmarks of the CUDA kernels at Mistral-7B shapes (4096 tokens, C = 4096, F = 14336,
// 32 heads of 128). Memory-bound kernels report achieved GB/s next to a device-to-device copy
// of 1 GiB and one of the kernel's own size, both measured in the same run; GEMMs report
// TFLOP/s next to a large 8192^3 GEMM.
// Usage: kernel_bench [out.json]. Each time is the median of 20 runs after 3 warm-up runs.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/adamw.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_random.cuh"
#include "kernels/device.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace cst {
namespace {

constexpr int64_t kTokens = 4096, kChannels = 4096, kFeatures = 14336, kHeads = 32, kHeadDim = 128;
constexpr int64_t kLoraParameters = 40'000'000;  // about r = 16 on every projection of 32 layers

// Random values in [-1, 1) so no kernel profits from zeros.
template <class T>
__global__ void fill_random_kernel(T* data, int64_t count, uint64_t key) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    data[i] = cuda::from_float<T>(2.0f * cuda::uniform_from_key(key, uint64_t(i)) - 1.0f);
}

OwnedTensor random_tensor(std::initializer_list<int64_t> shape, DType dtype, uint64_t seed) {
  OwnedTensor t(shape, dtype, Device::cuda);
  int64_t count = t->numel();
  uint64_t key = cuda::dropout_stream_key(seed, 0);
  if (dtype == DType::bf16)
    fill_random_kernel<<<1024, 256, 0, cuda::stream()>>>(static_cast<__nv_bfloat16*>(t->data), count, key);
  else
    fill_random_kernel<<<1024, 256, 0, cuda::stream()>>>(t->f32(), count, key);
  CUDA_CHECK_LAUNCH();
  return t;
}

// Median milliseconds of `body` on the backend's stream.
double median_ms(const std::function<void()>& body, int warmup = 3, int iterations = 20) {
  for (int i = 0; i < warmup; ++i) body();
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < iterations; ++i) {
    CUDA_CHECK(cudaEventRecord(start, cuda::stream()));
    body();
    CUDA_CHECK(cudaEventRecord(stop, cuda::stream()));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Device-to-device copies of `bytes` (at most 1 GiB) between two buffers allocated once.
class Copier {
 public:
  static constexpr size_t kMaxBytes = size_t(1) << 30;
  double median_ms(size_t bytes) {
    return cst::median_ms([&] {
      CUDA_CHECK(cudaMemcpyAsync(destination_.data(), source_.data(), bytes,
                                 cudaMemcpyDeviceToDevice, cuda::stream()));
    });
  }

 private:
  Buffer source_{Device::cuda, kMaxBytes}, destination_{Device::cuda, kMaxBytes};
};

// A memory-bound kernel's GB/s is reported against two copies: the 1 GiB copy, the GPU's
// bandwidth, and a copy that moves as many bytes as the kernel (half read, half written), whose
// fixed costs (launch, the first and last wave) weigh as much as the kernel's. A kernel near the
// second and short of the first is short because of its size, not its access pattern.
struct Report {
  nlohmann::json results = nlohmann::json::array();
  Copier copier;
  double copy_gb_per_s = 0;

  void copy() {
    double ms = copier.median_ms(Copier::kMaxBytes);
    copy_gb_per_s = 2.0 * double(Copier::kMaxBytes) / (ms * 1e6);  // reads and writes every byte
    std::printf("%-40s %9.3f ms %9.1f GB/s (read + write)\n", "cudaMemcpy device to device", ms,
                copy_gb_per_s);
    results.push_back({{"name", "cudaMemcpy d2d 1 GiB"}, {"kind", "copy"}, {"ms", ms},
                       {"gb_per_s", copy_gb_per_s}});
  }

  void memory(const std::string& name, double ms, double bytes) {
    double gb_per_s = bytes / (ms * 1e6);
    double percent = 100.0 * gb_per_s / copy_gb_per_s;
    size_t copied = std::min(size_t(bytes / 2), Copier::kMaxBytes);
    double same_size_gb_per_s = 2.0 * double(copied) / (copier.median_ms(copied) * 1e6);
    double percent_of_same_size = 100.0 * gb_per_s / same_size_gb_per_s;
    std::printf("%-40s %9.3f ms %9.1f GB/s %7.1f%% of copy %7.1f%% of a copy of its size\n",
                name.c_str(), ms, gb_per_s, percent, percent_of_same_size);
    results.push_back({{"name", name}, {"kind", "memory"}, {"ms", ms}, {"gb_per_s", gb_per_s},
                       {"percent_of_copy", percent},
                       {"percent_of_same_size_copy", percent_of_same_size}});
  }

  void compute(const std::string& name, double ms, double flops) {
    double tflops = flops / (ms * 1e9);
    std::printf("%-40s %9.3f ms %9.1f TFLOP/s\n", name.c_str(), ms, tflops);
    results.push_back({{"name", name}, {"kind", "gemm"}, {"ms", ms}, {"tflop_per_s", tflops}});
  }
};

// The optimizer's real call: one multi-tensor step over the A (r, in) and B (out, r) matrices of
// r = 16 LoRA on every projection of Mistral-7B's 32 layers (448 tensors, 42M parameters).
void bench_adamw_lora(Report& report) {
  constexpr int64_t kRank = 16, kLayers = 32, kKeyValue = 1024;
  const int64_t projections[][2] = {{kChannels, kChannels}, {kChannels, kKeyValue}, {kChannels, kKeyValue},
                                    {kChannels, kChannels}, {kChannels, kFeatures}, {kChannels, kFeatures},
                                    {kFeatures, kChannels}};  // (in, out) of q, k, v, o, gate, up, down
  std::vector<OwnedTensor> memory;
  std::vector<AdamWTensor> tensors;
  int64_t parameters = 0;
  uint64_t seed = 100;
  for (int64_t layer = 0; layer < kLayers; ++layer)
    for (auto [in, out] : projections)
      for (auto [rows, cols] : {std::pair{kRank, in}, std::pair{out, kRank}}) {
        AdamWTensor t;
        for (Tensor* x : {&t.param, &t.grad, &t.m, &t.v}) {
          memory.push_back(random_tensor({rows, cols}, DType::f32, seed++));
          *x = memory.back();
        }
        tensors.push_back(t);
        parameters += rows * cols;
      }
  int64_t step = 0;
  double ms = median_ms([&] { adamw_update_all(tensors, AdamWConfig{}, 1e-4f, ++step, 1.0f); });
  report.memory("adamw_update_all 448 LoRA tensors", ms, 7.0 * 4 * double(parameters));
}

void bench_memory_bound(Report& report) {
  const double activation = double(kTokens * kChannels) * 2, hidden = double(kTokens * kFeatures) * 2;
  {
    OwnedTensor x = random_tensor({kTokens, kChannels}, DType::bf16, 1);
    OwnedTensor weight = random_tensor({kChannels}, DType::bf16, 2);
    OwnedTensor dout = random_tensor({kTokens, kChannels}, DType::bf16, 3);
    OwnedTensor out({kTokens, kChannels}, DType::bf16, Device::cuda);
    OwnedTensor dx({kTokens, kChannels}, DType::bf16, Device::cuda);
    OwnedTensor rstd({kTokens}, DType::f32, Device::cuda);
    // Each way of spreading the rows (kernels/rmsnorm.h), the default first.
    for (cuda::RmsNormRows spread : cuda::kRmsNormRowChoices) {
      const std::string name = cuda::rmsnorm_rows_name(spread);
      double ms = median_ms([&] { cuda::rmsnorm_forward(out, rstd, x, weight, 1e-5f, spread); });
      report.memory("rmsnorm forward, " + name, ms, 2 * activation + kTokens * 4.0);
      ms = median_ms([&] { cuda::rmsnorm_backward(dx, Tensor{}, dout, x, weight, rstd, spread); });
      report.memory("rmsnorm backward dx, " + name, ms, 3 * activation + kTokens * 4.0);
    }
  }
  {
    OwnedTensor q = random_tensor({kTokens, kHeads, kHeadDim}, DType::bf16, 4);
    OwnedTensor positions({kTokens}, DType::i32, Device::cuda);
    std::vector<int32_t> host_positions(kTokens);
    for (int64_t n = 0; n < kTokens; ++n) host_positions[size_t(n)] = int32_t(n % 1024);
    cuda::copy_bytes(positions->data, host_positions.data(), sizeof(int32_t) * kTokens);
    OwnedTensor inverse_frequencies = rope_inverse_frequencies(kHeadDim, 10000.0f, RopeScaling{}, Device::cuda);
    double ms = median_ms([&] { rope_forward(q, positions, inverse_frequencies); });
    report.memory("rope forward q 4096x32x128 bf16", ms, 2 * double(q->nbytes()));
  }
  {
    OwnedTensor gate = random_tensor({kTokens, kFeatures}, DType::bf16, 5);
    OwnedTensor up = random_tensor({kTokens, kFeatures}, DType::bf16, 6);
    OwnedTensor dout = random_tensor({kTokens, kFeatures}, DType::bf16, 7);
    OwnedTensor out({kTokens, kFeatures}, DType::bf16, Device::cuda);
    OwnedTensor dgate({kTokens, kFeatures}, DType::bf16, Device::cuda);
    OwnedTensor dup({kTokens, kFeatures}, DType::bf16, Device::cuda);
    double ms = median_ms([&] { swiglu_forward(out, gate, up); });
    report.memory("swiglu forward 4096x14336 bf16", ms, 3 * hidden);
    ms = median_ms([&] { swiglu_backward(dgate, dup, dout, gate, up); });
    report.memory("swiglu backward bf16", ms, 5 * hidden);
  }
  {
    OwnedTensor param = random_tensor({kLoraParameters}, DType::f32, 8);
    OwnedTensor grad = random_tensor({kLoraParameters}, DType::f32, 9);
    OwnedTensor m({kLoraParameters}, DType::f32, Device::cuda), v({kLoraParameters}, DType::f32, Device::cuda);
    int64_t step = 0;
    double ms = median_ms([&] { adamw_update(param, grad, m, v, AdamWConfig{}, 1e-4f, ++step, 1.0f); });
    // reads p, g, m, v; writes p, m, v
    report.memory("adamw 40M f32 parameters", ms, 7.0 * 4 * kLoraParameters);
  }
  bench_adamw_lora(report);
}

// out (m, n) = a (m, k) @ op(b), bf16 in and out, f32 accumulation.
void bench_gemm(Report& report, const std::string& name, int64_t m, int64_t n, int64_t k,
                bool transpose_b) {
  OwnedTensor a = random_tensor({m, k}, DType::bf16, 10);
  OwnedTensor b = transpose_b ? random_tensor({n, k}, DType::bf16, 11) : random_tensor({k, n}, DType::bf16, 11);
  OwnedTensor out({m, n}, DType::bf16, Device::cuda);
  double ms = median_ms([&] { matmul(out, a, b, false, transpose_b); });
  report.compute(name, ms, 2.0 * double(m) * double(n) * double(k));
}

void bench_gemms(Report& report) {
  bench_gemm(report, "gemm 8192^3 (reference)", 8192, 8192, 8192, true);
  bench_gemm(report, "gemm q_proj fwd 4096x4096x4096", kTokens, kChannels, kChannels, true);
  bench_gemm(report, "gemm up_proj fwd 4096x14336x4096", kTokens, kFeatures, kChannels, true);
  bench_gemm(report, "gemm down_proj fwd 4096x4096x14336", kTokens, kChannels, kFeatures, true);
  bench_gemm(report, "gemm up_proj dx 4096x4096x14336", kTokens, kChannels, kFeatures, false);
}

}  // namespace
}  // namespace cst

int main(int argc, char** argv) {
  using namespace cst;
  std::string json_path = argc > 1 ? argv[1] : "kernel_bench.json";
  if (!cuda_available()) {
    std::fprintf(stderr, "kernel_bench: no CUDA GPU visible\n");
    return 2;
  }
  try {
    cudaDeviceProp properties{};
    CUDA_CHECK(cudaGetDeviceProperties(&properties, 0));
    std::printf("device: %s, %d SMs\n", properties.name, properties.multiProcessorCount);
    Report report;
    report.copy();
    bench_memory_bound(report);
    bench_gemms(report);
    nlohmann::json document = {{"device", properties.name}, {"results", report.results}};
    std::ofstream(json_path) << document.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  } catch (const Error& error) {
    std::fprintf(stderr, "kernel_bench: %s\n", error.what());
    return 1;
  }
  return 0;
}
