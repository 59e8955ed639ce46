// model_bench: the time of one LoRA training step of a Mistral-shaped model with random weights,
// on the CPU backend (f32) or the CUDA backend (bf16), through the same code cst_train runs.
// tools/python/bench_cpu_torch.py and tools/python/bench_gpu_torch.py time the same steps in
// PyTorch + PEFT.
//
// Three steps (--step):
//   logps  forward over the batch with activations saved, every token labelled, loss = sum of
//          the tokens' log-probs, then backward producing only the LoRA gradients. The CPU
//          benchmark of docs/benchmarks.md.
//   dpo    one DPO optimizer step as the trainer makes it: reference forward (adapters off,
//          nothing saved), policy forward, sigmoid DPO loss over the pairs (sequences 2i and
//          2i+1 are pair i's chosen and rejected), backward, gradient-norm clipping at 1 and
//          AdamW on the LoRA matrices. The GPU benchmark of docs/benchmarks.md.
//   generate  greedy generation with the adapter, as cst_generate runs it: --sequence_length
//          random prompt tokens and --new_tokens new ones (no stop token), first for one prompt
//          alone, then for --sequences prompts in one batch (generate_batch): two RESULT lines,
//          whose tokens_per_s count the new tokens.
// LoRA r = 16 on all seven projections; the base weights are frozen. The model is written as an
// HF directory (config.json + model.safetensors) in a temporary folder, then loaded the way
// cst_train loads a model.
//
//   model_bench [--device cpu|cuda] [--shape v32k|v8k|1b|all] [--step logps|dpo|generate]
//               [--sequences 4] [--sequence_length 256] [--new_tokens 64] [--lora_alpha 32]
//               [--threads N] [--warmup 2] [--iterations 7] [--breakdown]
//               [--attention_backward recompute_dq|ordered_dq|atomic_dq]
//
// --shape all runs the two small shapes (v32k, v8k). Prints one "RESULT ..." line per shape
// (tools/bench/run_bench.sh and tools/gpu_check.sh collect them). --breakdown also times every op
// of the step on its own, at the model's shapes and in the backend's dtype, to show where the
// time goes: the wall clock of each call on the CPU, the time between two CUDA events on the
// backend's stream on the GPU (docs/benchmarks.md says how to read the table).
#include <omp.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#ifdef CST_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "kernels/attention.h"
#include "kernels/device.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/logprobs.h"
#include "kernels/program.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "model/generation.h"
#include "model/lora_linear.h"
#include "model/model_file.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "train/demo_assets.h"
#include "train/objective.h"
#include "train/optimizer.h"

#ifdef CST_HAVE_CUDA
namespace cst::cuda {
// The one stream every kernel of the backend runs on (kernels/device.cu). Its header,
// kernels/cuda_common.cuh, holds device code, so this host-compiled file declares it here.
cudaStream_t stream();
}  // namespace cst::cuda
#endif

namespace cst {
namespace {

// The benchmark models. At vocab 32000 the embedding and LM head hold 16.4M of v32k's 19.3M
// parameters, so its step is mostly the LM head; v8k moves the weight into the layers. 1b is
// TinyLlama-1.1B's shape, the GPU benchmark's model.
struct BenchShape {
  const char* name;
  int vocab, hidden, intermediate, layers, heads, kv_heads;
};
constexpr BenchShape kShapes[] = {
    {"v32k", 32000, 256, 688, 4, 8, 4},        // 19.3M parameters
    {"v8k", 8192, 256, 688, 22, 8, 4},         // 20.1M parameters
    {"1b", 32000, 2048, 5632, 22, 32, 4},      // 1.10B parameters
};
constexpr int kLoraRank = 16;
constexpr float kInitStd = 0.02f;
// The DPO step's settings: trl's defaults (beta 0.1, max_grad_norm 1); the learning rate does not
// change the work.
constexpr float kBeta = 0.1f;
constexpr double kMaxGradNorm = 1.0;
constexpr float kLearningRate = 1e-4f;

struct Options {
  std::string device = "cpu";
  std::string shape = "all";
  std::string step = "logps";
  int sequences = 4;
  int sequence_length = 256;
  int new_tokens = 64;  // --step generate
  float lora_alpha = 32.0f;
  int threads = 0;  // 0: all processors
  int warmup = 2;
  int iterations = 7;
  bool breakdown = false;
  AttentionBackward attention_backward = kDefaultAttentionBackward;  // kernels/attention.h
};

AdamWConfig adamw_config() {
  AdamWConfig config;
  config.learning_rate = kLearningRate;
  return config;
}

// The optimizer's part of a step, as the trainer makes it: the gradient norm, clipping at 1,
// AdamW, then the bf16 compute copies of the LoRA matrices refreshed.
void optimizer_step(AdamW& optimizer, LoraAdapter& lora) {
  optimizer.step(kLearningRate, clip_scale(optimizer.gradient_norm(), kMaxGradNorm));
  lora.sync_compute_copies();
}

// Wall and CPU (all threads of the process) time of a piece of work, in milliseconds.
struct Timing {
  double wall_ms = 0, cpu_ms = 0;
};

double process_cpu_ms() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return double(now.tv_sec) * 1e3 + double(now.tv_nsec) * 1e-6;
}

// Waits for the GPU's queued work, so that a timing covers the work and not only its launch.
void wait_for_device(Device device) {
  if (device == Device::cuda) CST_ON_CUDA(cuda::synchronize());
}

Timing time_once(const std::function<void()>& work, Device device = Device::cpu) {
  auto wall_start = std::chrono::steady_clock::now();
  double cpu_start = process_cpu_ms();
  work();
  wait_for_device(device);
  double cpu_end = process_cpu_ms();
  auto wall_end = std::chrono::steady_clock::now();
  return {std::chrono::duration<double, std::milli>(wall_end - wall_start).count(),
          cpu_end - cpu_start};
}

#ifdef CST_HAVE_CUDA
void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) fail(call, " failed: ", cudaGetErrorString(status));
}

struct CudaEvent {
  cudaEvent_t event = nullptr;
  CudaEvent() { check_cuda(cudaEventCreate(&event), "cudaEventCreate"); }
  ~CudaEvent() { cudaEventDestroy(event); }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
};

// The GPU time of `work` in milliseconds: from an event recorded on the backend's stream before
// it to one recorded after it. Unlike a host clock around a synchronisation, this leaves out the
// synchronisation's own latency, which would swamp the microsecond ops.
double cuda_event_ms(const std::function<void()>& work) {
  CudaEvent start, stop;
  check_cuda(cudaEventRecord(start.event, cuda::stream()), "cudaEventRecord");
  work();
  check_cuda(cudaEventRecord(stop.event, cuda::stream()), "cudaEventRecord");
  cuda::synchronize();  // also raises any bad index a kernel recorded
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, start.event, stop.event), "cudaEventElapsedTime");
  return ms;
}
#endif

// One call of an op: its wall time on the CPU, its event-to-event time on the GPU.
double call_ms(const std::function<void()>& op, Device device) {
  if (device == Device::cpu) return time_once(op).wall_ms;
#ifdef CST_HAVE_CUDA
  return cuda_event_ms(op);
#else
  fail("this build has no CUDA backend");
#endif
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t middle = values.size() / 2;
  return values.size() % 2 ? values[middle] : 0.5 * (values[middle - 1] + values[middle]);
}

// Device memory this process holds (cst allocates into arenas it keeps, so after the timed steps
// this includes their peak), plus the CUDA context; the same quantity bench_gpu_torch.py reports.
double device_memory_used_gib() {
#ifdef CST_HAVE_CUDA
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) return -1;
  return double(total_bytes - free_bytes) / double(size_t(1) << 30);
#else
  return -1;
#endif
}

int64_t parameter_count(const BenchShape& s) {
  int64_t head_dim = s.hidden / s.heads;
  int64_t attention = int64_t(s.hidden) * head_dim * (2 * s.heads + 2 * s.kv_heads);
  int64_t mlp = int64_t(3) * s.hidden * s.intermediate;
  int64_t per_layer = attention + mlp + 2 * s.hidden;
  return int64_t(2) * s.vocab * s.hidden + s.layers * per_layer + s.hidden;
}

std::string config_json(const BenchShape& s, DType dtype) {
  nlohmann::ordered_json config = {
      {"architectures", {"MistralForCausalLM"}},
      {"hidden_size", s.hidden},
      {"intermediate_size", s.intermediate},
      {"max_position_embeddings", 4096},
      {"model_type", "mistral"},
      {"num_attention_heads", s.heads},
      {"num_hidden_layers", s.layers},
      {"num_key_value_heads", s.kv_heads},
      {"rms_norm_eps", 1e-05},
      {"rope_theta", 10000.0},
      {"sliding_window", nullptr},
      {"tie_word_embeddings", false},
      {"torch_dtype", dtype == DType::bf16 ? "bfloat16" : "float32"},
      {"vocab_size", s.vocab},
  };
  return config.dump(2) + "\n";
}

// The random values every matrix takes its entries from: `count` N(0, 0.02^2) draws (the HF
// initialisation) stored in `dtype`, and a vector of ones for the norms.
struct ValuePool {
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  std::vector<float> ones_f32;
  std::vector<uint16_t> ones_bf16;
  DType dtype;

  ValuePool(int64_t count, int64_t ones, DType dtype_) : dtype(dtype_) {
    // Chunks of draws from streams of their own, so the threads fill the pool in parallel and
    // the values do not depend on the thread count.
    constexpr int64_t kChunk = int64_t(1) << 20;
    f32.resize(size_t(count));
#pragma omp parallel for schedule(dynamic)
    for (int64_t begin = 0; begin < count; begin += kChunk) {
      demo::DemoRandom random(0x62656e6368ull + uint64_t(begin / kChunk));
      for (int64_t i = begin; i < std::min(count, begin + kChunk); ++i) f32[size_t(i)] = random.normal(kInitStd);
    }
    ones_f32.assign(size_t(ones), 1.0f);
    if (dtype == DType::bf16) {
      bf16.resize(f32.size());
#pragma omp parallel for
      for (int64_t i = 0; i < count; ++i) bf16[size_t(i)] = f32_to_bf16(f32[size_t(i)]);
      ones_bf16.assign(size_t(ones), f32_to_bf16(1.0f));
      f32.clear();
    }
  }
  const void* values_at(int64_t offset) const {
    return dtype == DType::bf16 ? static_cast<const void*>(bf16.data() + offset) : f32.data() + offset;
  }
  const void* ones() const {
    return dtype == DType::bf16 ? static_cast<const void*>(ones_bf16.data()) : ones_f32.data();
  }
};

// Where the model file goes: /dev/shm (memory) when it has room for twice the file, so that the
// 2.2 GB of the 1b shape never wait for a disk; the temporary folder otherwise.
std::filesystem::path scratch_folder(int64_t file_bytes) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::space_info memory = fs::space("/dev/shm", error);
  if (!error && memory.available > uint64_t(2 * file_bytes)) return "/dev/shm";
  return fs::temp_directory_path();
}

// Writes config.json and model.safetensors into a fresh directory and returns its path. Every
// matrix is a window, at a random offset, of one pool of draws as large as the largest matrix:
// a step's time does not depend on the values, and drawing the 1.1 billion values of the 1b
// shape one by one would take longer than its benchmark.
std::string write_random_model(const BenchShape& s, DType dtype) {
  namespace fs = std::filesystem;
  fs::path directory = scratch_folder(parameter_count(s) * int64_t(dtype_size(dtype))) /
                       ("cst_bench_" + std::string(s.name) + "_" + std::to_string(getpid()));
  fs::create_directories(directory);
  std::string config = config_json(s, dtype);
  write_file_atomically((directory / "config.json").string(), {{config.data(), config.size()}});

  ModelConfig parsed = parse_model_config(nlohmann::json::parse(config), "benchmark config");
  std::vector<std::pair<std::string, std::vector<int64_t>>> layout;
  const int64_t V = s.vocab, C = s.hidden, F = s.intermediate;
  const int64_t q_width = int64_t(parsed.num_heads) * parsed.head_dim;
  const int64_t kv_width = int64_t(parsed.num_kv_heads) * parsed.head_dim;
  layout.push_back({"model.embed_tokens.weight", {V, C}});
  for (int layer = 0; layer < s.layers; ++layer) {
    std::string prefix = "model.layers." + std::to_string(layer) + ".";
    layout.push_back({prefix + "input_layernorm.weight", {C}});
    layout.push_back({prefix + "post_attention_layernorm.weight", {C}});
    layout.push_back({prefix + "self_attn.q_proj.weight", {q_width, C}});
    layout.push_back({prefix + "self_attn.k_proj.weight", {kv_width, C}});
    layout.push_back({prefix + "self_attn.v_proj.weight", {kv_width, C}});
    layout.push_back({prefix + "self_attn.o_proj.weight", {C, q_width}});
    layout.push_back({prefix + "mlp.gate_proj.weight", {F, C}});
    layout.push_back({prefix + "mlp.up_proj.weight", {F, C}});
    layout.push_back({prefix + "mlp.down_proj.weight", {C, F}});
  }
  layout.push_back({"model.norm.weight", {C}});
  layout.push_back({"lm_head.weight", {V, C}});

  auto count_of = [](const std::vector<int64_t>& shape) {
    int64_t count = 1;
    for (int64_t size : shape) count *= size;
    return count;
  };
  int64_t largest = 0;
  for (const auto& entry : layout) largest = std::max(largest, count_of(entry.second));
  ValuePool pool(largest, C, dtype);
  demo::DemoRandom random(0x6f666673657473ull);
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, shape] : layout) {
    const int64_t count = count_of(shape);
    const bool is_norm = shape.size() == 1;
    const int64_t offset = int64_t(random.below(size_t(largest - count + 1)));
    tensors.push_back({name, dtype, shape, is_norm ? pool.ones() : pool.values_at(offset)});
  }
  write_safetensors((directory / "model.safetensors").string(), tensors);
  return directory.string();
}

// The batch: `sequences` sequences of `length` random tokens, each labelled with a random token
// (the labels' values do not change the work, only their count does).
struct Batch {
  std::vector<int32_t> tokens, positions, labels, cu_seqlens;
  TokenSpans spans() const { return {tokens, positions, labels, cu_seqlens}; }
};

Batch random_batch(int vocab, int sequences, int length) {
  demo::DemoRandom random(0x626174636800ull);
  Batch batch;
  batch.cu_seqlens.push_back(0);
  for (int s = 0; s < sequences; ++s) {
    for (int i = 0; i < length; ++i) {
      batch.tokens.push_back(int32_t(random.below(size_t(vocab))));
      batch.positions.push_back(i);
      batch.labels.push_back(int32_t(random.below(size_t(vocab))));
    }
    batch.cu_seqlens.push_back(int32_t(batch.tokens.size()));
  }
  return batch;
}

// The backend's dtype: f32 on the CPU reference backend, bf16 on CUDA.
DType dtype_of(Device device) { return device == Device::cuda ? DType::bf16 : DType::f32; }

struct LoadedModel {
  ModelFile file;
  ModelWeights weights;
  LoraAdapter lora;
  LoadedModel(const std::string& directory, Device device, float lora_alpha)
      : file(directory), weights(file, device, dtype_of(device)),
        lora(file.config(), lora_config(lora_alpha), device, dtype_of(device)) {
    lora.initialize(1);  // B = 0 as in PEFT; the work is the same as for trained values
  }
  static LoraConfig lora_config(float alpha) {
    LoraConfig config;
    config.r = kLoraRank;
    config.alpha = alpha;
    config.dropout = 0.0f;  // PEFT's default; with dropout both sides would add a mask pass
    return config;
  }
};

// The op breakdown's activations, in the backend's dtype (f32 on the CPU, bf16 on CUDA). The
// per-row statistics and per-token values are f32 on every backend and made directly.
OwnedTensor empty_tensor(const std::vector<int64_t>& shape, Device device) {
  return OwnedTensor(shape, dtype_of(device), device);
}

// N(0, std^2) values, drawn in f32 on the host and converted on the way to the device.
OwnedTensor random_tensor(const std::vector<int64_t>& shape, float std, demo::DemoRandom& random,
                          Device device) {
  OwnedTensor host(shape, DType::f32, Device::cpu);
  float* data = host.view.f32();
  for (int64_t i = 0; i < host.view.numel(); ++i) data[i] = random.normal(std);
  if (device == Device::cpu) return host;
  OwnedTensor on_device = empty_tensor(shape, device);
  copy_tensor(on_device, host);
  return on_device;
}

// Token ids, positions or labels as the ops read them: an i32 tensor on the op's device.
OwnedTensor int_tensor(const std::vector<int32_t>& values, Device device) {
  const int64_t count = int64_t(values.size());
  OwnedTensor tensor({count}, DType::i32, device);
  copy_tensor(tensor, make_view(const_cast<int32_t*>(values.data()), {count}, DType::i32, Device::cpu));
  return tensor;
}

// The projections that the model runs together, in its order: an input group (q, k, v; gate, up)
// reads one input and, with the adapters on, makes its A products in one GEMM (model/lora.h);
// o and down run alone.
struct ProjectionUnit {
  std::vector<Projection> members;
  std::optional<InputGroup> group;
};

std::vector<ProjectionUnit> projection_units() {
  std::vector<ProjectionUnit> units;
  for (Projection p : kAllProjections) {
    std::optional<InputGroup> group;
    for (InputGroup g : kAllInputGroups)
      for (Projection member : input_group_members(g))
        if (member == p) group = g;
    if (!group) {
      units.push_back({{p}, std::nullopt});
    } else if (input_group_members(*group).front() == p) {
      std::span<const Projection> members = input_group_members(*group);
      units.push_back({{members.begin(), members.end()}, group});
    }
  }
  return units;
}

std::string unit_name(const ProjectionUnit& unit) {
  std::string name;
  for (Projection p : unit.members) name += (name.empty() ? "" : "+") + std::string(projection_name(p));
  return name;
}

// A unit's layers in layer 0 as model/transformer.cpp builds them: each member with its adapter
// and an input group's A matrices as one; or the base weights alone (adapters off).
LoraLinearGroup layer0_layers(LoadedModel& model, const ProjectionUnit& unit, bool adapters) {
  LoraLinearGroup layers;
  for (Projection p : unit.members) {
    LoraLinear linear{model.weights.projection(0, p)};
    if (adapters) {
      linear.lora = model.lora.pair(0, p);
      linear.scaling = model.lora.config().scaling();
    }
    layers.members.push_back(linear);
  }
  if (adapters && unit.group) layers.group_a = model.lora.group_a(0, *unit.group);
  return layers;
}

// What a forward saved for the backward, copied out of the scratch arena that every timed call
// resets.
struct KeptGroupSaved {
  std::vector<OwnedTensor> memory;
  LoraGroupSaved view;
};

KeptGroupSaved keep(const LoraGroupSaved& saved) {
  KeptGroupSaved kept;
  auto keep_one = [&](const Tensor& t) {
    if (t.empty()) return Tensor{};
    kept.memory.emplace_back(std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.rank), t.dtype,
                             t.device);
    copy_tensor(kept.memory.back(), t);
    return kept.memory.back().view;  // views the copy's memory, which stays put when moved
  };
  kept.view.u_transposed = keep_one(saved.u_transposed);
  for (size_t p = 0; p < saved.u.size(); ++p) kept.view.u[p] = keep_one(saved.u[p]);
  return kept;
}

// One line of the breakdown: an op, how often a step runs it, and its median time per call.
struct OpTime {
  std::string name;
  int calls_per_step;
  double ms_per_call;
};

// Seven calls, the first two a warm-up (arena blocks, cuBLAS heuristics), then the median of 5.
OpTime time_op(const std::string& name, int calls_per_step, Device device,
               const std::function<void()>& op) {
  std::vector<double> times;
  for (int rep = 0; rep < 7; ++rep) times.push_back(call_ms(op, device));
  times.erase(times.begin(), times.begin() + 2);
  return {name, calls_per_step, median(times)};
}

// Times each op of a step by itself on random inputs of layer 0's shapes. A dpo step runs every
// forward op twice (the reference forward, with the adapters off, and the policy forward) and
// ends with the optimizer; a logps step runs one forward and no optimizer.
std::vector<OpTime> time_step_ops(LoadedModel& model, const Batch& batch, Device device,
                                  const Options& options) {
  const ModelConfig& config = model.file.config();
  const int64_t n = int64_t(batch.tokens.size()), C = config.hidden_size,
                F = config.intermediate_size, H = config.num_heads, KVH = config.num_kv_heads,
                D = config.head_dim;
  const int layers = config.num_layers;
  const bool dpo = options.step == "dpo";
  const int forwards = dpo ? 2 : 1;
  demo::DemoRandom random(7);
  Arena scratch(device);
  OwnedTensor tokens = int_tensor(batch.tokens, device), positions = int_tensor(batch.positions, device);
  OwnedTensor labels = int_tensor(batch.labels, device);
  OwnedTensor x = random_tensor({n, C}, 1.0f, random, device), y = random_tensor({n, C}, 1.0f, random, device);
  OwnedTensor norm_weight = random_tensor({C}, 1.0f, random, device);
  OwnedTensor rstd({n}, DType::f32, device);  // written by the rmsnorm forward timed before its backward
  OwnedTensor q = random_tensor({n, H, D}, 1.0f, random, device);
  OwnedTensor out = random_tensor({n, H, D}, 1.0f, random, device);
  OwnedTensor k = random_tensor({n, KVH, D}, 1.0f, random, device);
  OwnedTensor v = random_tensor({n, KVH, D}, 1.0f, random, device);
  OwnedTensor dq = empty_tensor({n, H, D}, device), dk = empty_tensor({n, KVH, D}, device);
  OwnedTensor dv = empty_tensor({n, KVH, D}, device), lse({H, n}, DType::f32, device);
  OwnedTensor gate = random_tensor({n, F}, 1.0f, random, device), up = random_tensor({n, F}, 1.0f, random, device);
  OwnedTensor act = empty_tensor({n, F}, device), dgate = empty_tensor({n, F}, device);
  OwnedTensor dup = empty_tensor({n, F}, device);
  OwnedTensor token_values({n}, DType::f32, device), token_lse({n}, DType::f32, device);
  OwnedTensor logit_sums({n}, DType::f32, device);
  AttentionShape attention{int(H), int(KVH), int(D), 0};
  std::vector<OpTime> ops;

  // The projections as the model runs them: the base GEMMs plus the rank-r products, an input
  // group's together (the reference forward: the base GEMMs alone).
  for (const ProjectionUnit& unit : projection_units()) {
    const int64_t in_features = projection_shape(config, unit.members.front()).second;
    OwnedTensor input = random_tensor({n, in_features}, 1.0f, random, device);
    OwnedTensor dinput = empty_tensor({n, in_features}, device);
    std::vector<OwnedTensor> outputs;  // also the output gradients of the backward
    std::vector<Tensor> output_views;
    for (Projection p : unit.members) {
      outputs.push_back(random_tensor({n, projection_shape(config, p).first}, 1.0f, random, device));
      output_views.push_back(outputs.back().view);
    }
    const LoraLinearGroup adapted = layer0_layers(model, unit, true);
    const LoraLinearGroup base_only = layer0_layers(model, unit, false);
    const KeptGroupSaved saved = keep(lora_group_forward(output_views, input, adapted, scratch));
    const std::string name = unit_name(unit);
    ops.push_back(time_op(name + " forward", layers, device, [&] {
      scratch.reset();
      lora_group_forward(output_views, input, adapted, scratch);
    }));
    if (dpo) {
      ops.push_back(time_op(name + " forward, adapters off", layers, device, [&] {
        scratch.reset();
        lora_group_forward(output_views, input, base_only, scratch);
      }));
    }
    ops.push_back(time_op(name + " backward", layers, device, [&] {
      scratch.reset();
      lora_group_backward(dinput, output_views, input, saved.view, adapted, scratch);
    }));
  }
  // The backward needs the forward's out and lse, so the forward is timed first.
  ops.push_back(time_op("attention forward", forwards * layers, device, [&] {
    attention_forward(out, lse, q, k, v, batch.cu_seqlens, attention);
  }));
  ops.push_back(time_op("attention backward", layers, device, [&] {
    attention_backward(dq, dk, dv, out, q, k, v, out, lse, batch.cu_seqlens, attention,
                       options.attention_backward);
  }));
  ops.push_back(time_op("rmsnorm forward", forwards * (2 * layers + 1), device,
                        [&] { rmsnorm_forward(y, rstd, x, norm_weight, 1e-5f); }));
  ops.push_back(time_op("rmsnorm backward", 2 * layers + 1, device,
                        [&] { rmsnorm_backward(y, Tensor{}, x, x, norm_weight, rstd); }));
  const OwnedTensor inverse_frequencies =
      rope_inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling, device);
  ops.push_back(time_op("rope q+k (forward and backward)", (forwards + 1) * layers, device, [&] {
    rope_forward(q, positions, inverse_frequencies);
    rope_forward(k, positions, inverse_frequencies);
  }));
  ops.push_back(time_op("swiglu forward", forwards * layers, device, [&] { swiglu_forward(act, gate, up); }));
  ops.push_back(time_op("swiglu backward", layers, device, [&] {
    swiglu_backward(dgate, dup, act, gate, up);
  }));
  // Two residual adds per layer in each forward and two in the backward.
  ops.push_back(time_op("residual add", 2 * (forwards + 1) * layers, device, [&] { add_inplace(y, x); }));
  ops.push_back(time_op("embedding", forwards, device, [&] {
    embedding_forward(y, tokens, model.weights.embed_tokens);
  }));
  ops.push_back(time_op("logprobs forward (LM head)", forwards, device, [&] {
    scratch.reset();
    logprobs_forward(token_values, token_lse, logit_sums, x, model.weights.lm_head, labels, scratch);
  }));
  ops.push_back(time_op("logprobs backward (LM head)", 1, device, [&] {
    scratch.reset();
    logprobs_backward(y, token_values, x, model.weights.lm_head, labels, token_lse, scratch);
  }));
  if (dpo) {
    AdamW optimizer(model.lora.parameters(), adamw_config());
    ops.push_back(time_op("gradient norm, clipping, AdamW", 1, device,
                          [&] { optimizer_step(optimizer, model.lora); }));
  }
  return ops;
}

void print_breakdown(const BenchShape& s, const Options& options, const std::vector<OpTime>& ops,
                     double step_ms) {
  double total = 0;
  for (const OpTime& op : ops) total += op.calls_per_step * op.ms_per_call;
  std::printf("\nbreakdown of one %s %s step on %s (each op timed alone, median of 5%s):\n", s.name,
              options.step.c_str(), options.device.c_str(),
              options.device == "cuda" ? ", CUDA events on the backend's stream" : "");
  std::printf("  %-42s %6s %10s %10s %6s\n", "op", "calls", "ms/call", "ms/step", "share");
  for (const OpTime& op : ops) {
    double per_step = op.calls_per_step * op.ms_per_call;
    std::printf("  %-42s %6d %10.3f %10.2f %5.1f%%\n", op.name.c_str(), op.calls_per_step,
                op.ms_per_call, per_step, 100.0 * per_step / total);
  }
  std::printf("  %-42s %6s %10s %10.2f  (measured step: %.2f ms)\n", "sum", "", "", total, step_ms);
  std::fflush(stdout);
}

// The medians of a step's timed iterations.
struct StepTimes {
  std::vector<double> forward_ms, backward_ms, step_ms, step_cpu_ms;
  void add(const Timing& forward, const Timing& backward) {
    forward_ms.push_back(forward.wall_ms);
    backward_ms.push_back(backward.wall_ms);
    step_ms.push_back(forward.wall_ms + backward.wall_ms);
    step_cpu_ms.push_back(forward.cpu_ms + backward.cpu_ms);
  }
};

// --step logps: forward with activations saved, loss = sum of log-probs, backward.
StepTimes time_logps_steps(Transformer& transformer, LoadedModel& model, const Batch& batch,
                           Device device, const Options& options) {
  ForwardOptions forward_options;
  forward_options.save_for_backward = true;
  forward_options.attention_backward = options.attention_backward;
  std::vector<float> dlogps(batch.tokens.size(), 1.0f);  // loss = sum of log-probs
  StepTimes times;
  for (int i = 0; i < options.warmup + options.iterations; ++i) {
    model.lora.zero_grad();
    Timing forward = time_once([&] { transformer.forward(batch.spans(), forward_options); }, device);
    Timing backward = time_once([&] { transformer.backward(dlogps); }, device);
    if (i >= options.warmup) times.add(forward, backward);
  }
  return times;
}

// --step dpo: the trainer's micro-batch and optimizer step (train/trainer.cpp) on one batch.
// "forward" is the reference and the policy forward with the loss; "backward" is the backward,
// the gradient norm, clipping and AdamW.
StepTimes time_dpo_steps(Transformer& transformer, LoadedModel& model, const Batch& batch,
                         Device device, const Options& options) {
  ObjectiveConfig objective = objective_config_from_names("sigmoid", kBeta, 0.0, 0.0, false);
  AdamW optimizer(model.lora.parameters(), adamw_config());
  const int vocab = model.file.config().vocab_size;
  StepTimes times;
  for (int i = 0; i < options.warmup + options.iterations; ++i) {
    model.lora.zero_grad();
    ObjectiveResult result;
    Timing forward = time_once([&] {
      ForwardOptions reference_options;
      reference_options.adapters_enabled = false;
      TokenLogps reference = transformer.forward(batch.spans(), reference_options);
      ForwardOptions policy_options;
      policy_options.save_for_backward = true;
      policy_options.attention_backward = options.attention_backward;
      TokenLogps policy = transformer.forward(batch.spans(), policy_options);
      SequenceSums reference_sums =
          sum_per_sequence(reference.logps, reference.logit_sums, batch.labels, batch.cu_seqlens);
      SequenceSums policy_sums =
          sum_per_sequence(policy.logps, policy.logit_sums, batch.labels, batch.cu_seqlens);
      result = compute_objective(objective, policy_sums, reference_sums.logps, batch.labels,
                                 batch.cu_seqlens, vocab, 1.0);
    }, device);
    Timing backward = time_once([&] {
      transformer.backward(result.dlogps);
      optimizer_step(optimizer, model.lora);
    }, device);
    if (!std::isfinite(result.loss)) fail("the DPO loss is not finite at iteration ", i + 1);
    if (i >= options.warmup) times.add(forward, backward);
  }
  return times;
}

// --step generate: one generate_batch over the first `prompts` sequences of the batch; the whole
// generation is "forward", and there is no backward.
StepTimes time_generate_steps(Transformer& transformer, const Batch& batch, size_t prompt_count, Device device,
                              const Options& options) {
  std::vector<std::vector<int32_t>> prompts;
  for (size_t s = 0; s < prompt_count; ++s)
    prompts.emplace_back(batch.tokens.begin() + batch.cu_seqlens[s], batch.tokens.begin() + batch.cu_seqlens[s + 1]);
  GenerationOptions greedy;
  greedy.max_new_tokens = options.new_tokens;
  StepTimes times;
  for (int i = 0; i < options.warmup + options.iterations; ++i) {
    Timing generation = time_once([&] { generate_batch(transformer, prompts, greedy); }, device);
    if (i >= options.warmup) times.add(generation, Timing{});
  }
  return times;
}

// The RESULT line of a timed step: `tokens` is what tokens_per_s counts per step.
void print_result(const BenchShape& s, const Options& options, const StepTimes& times, int sequences,
                  size_t tokens, Device device) {
  const double step_ms = median(times.step_ms);
  std::printf(
      "RESULT impl=cst shape=%s params=%.1fM device=%s step=%s batch=%dx%d threads=%d "
      "step_ms=%.1f min_ms=%.1f cpu_ms=%.1f forward_ms=%.1f backward_ms=%.1f tokens_per_s=%.0f",
      s.name, double(parameter_count(s)) / 1e6, options.device.c_str(), options.step.c_str(), sequences,
      options.sequence_length, options.threads, step_ms,
      *std::min_element(times.step_ms.begin(), times.step_ms.end()), median(times.step_cpu_ms),
      median(times.forward_ms), median(times.backward_ms), double(tokens) / (step_ms * 1e-3));
  if (options.step == "generate") std::printf(" new_tokens=%d", options.new_tokens);
  if (device == Device::cuda) std::printf(" memory_gib=%.2f", device_memory_used_gib());
  std::printf("\n");
  std::fflush(stdout);
}

void run_shape(const BenchShape& s, const Options& options) {
  const Device device = options.device == "cuda" ? Device::cuda : Device::cpu;
  std::string directory;
  const Timing written = time_once([&] { directory = write_random_model(s, dtype_of(device)); });
  std::unique_ptr<LoadedModel> loaded;
  const Timing load = time_once([&] {
    loaded = std::make_unique<LoadedModel>(directory, device, options.lora_alpha);
  }, device);
  LoadedModel& model = *loaded;
  std::filesystem::remove_all(directory);  // the weights now live in memory
  std::printf("%s: random model written in %.1f s, loaded in %.1f s\n", s.name, written.wall_ms * 1e-3,
              load.wall_ms * 1e-3);
  Batch batch = random_batch(s.vocab, options.sequences, options.sequence_length);
  Transformer transformer(model.file.config(), model.weights, &model.lora);
  if (options.step == "generate") {
    for (int prompts : {1, options.sequences}) {
      const StepTimes times = time_generate_steps(transformer, batch, size_t(prompts), device, options);
      print_result(s, options, times, prompts, size_t(prompts) * size_t(options.new_tokens), device);
    }
    return;
  }
  const StepTimes times = options.step == "dpo" ? time_dpo_steps(transformer, model, batch, device, options)
                                                : time_logps_steps(transformer, model, batch, device, options);
  print_result(s, options, times, options.sequences, batch.tokens.size(), device);
  if (options.breakdown)
    print_breakdown(s, options, time_step_ops(model, batch, device, options), median(times.step_ms));
}

int parse_count(const char* flag, const char* text, int minimum) {
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < minimum || value > 100000)
    fail(flag, ": expected an integer >= ", minimum, ", got '", text, "'");
  return int(value);
}

float parse_positive(const char* flag, const char* text) {
  char* end = nullptr;
  float value = std::strtof(text, &end);
  if (end == text || *end != '\0' || !(value > 0) || !std::isfinite(value))
    fail(flag, ": expected a positive number, got '", text, "'");
  return value;
}

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) fail(flag, " needs a value");
      return argv[++i];
    };
    if (flag == "--device") options.device = value();
    else if (flag == "--shape") options.shape = value();
    else if (flag == "--step") options.step = value();
    else if (flag == "--sequences") options.sequences = parse_count("--sequences", value(), 1);
    else if (flag == "--sequence_length") options.sequence_length = parse_count("--sequence_length", value(), 2);
    else if (flag == "--new_tokens") options.new_tokens = parse_count("--new_tokens", value(), 1);
    else if (flag == "--lora_alpha") options.lora_alpha = parse_positive("--lora_alpha", value());
    else if (flag == "--threads") options.threads = parse_count("--threads", value(), 1);
    else if (flag == "--warmup") options.warmup = parse_count("--warmup", value(), 0);
    else if (flag == "--iterations") options.iterations = parse_count("--iterations", value(), 1);
    else if (flag == "--breakdown") options.breakdown = true;
    else if (flag == "--attention_backward") options.attention_backward = attention_backward_by_name(value(), "--attention_backward");
    else fail("unknown flag ", flag, " (flags: --device cpu|cuda, --shape v32k|v8k|1b|all, ",
              "--step logps|dpo|generate, --sequences N, --sequence_length N, --new_tokens N, --lora_alpha A, ",
              "--threads N, ",
              "--warmup N, --iterations N, --breakdown, --attention_backward recompute_dq|ordered_dq|atomic_dq)");
  }
  const bool known_shape = options.shape == "all" || std::any_of(std::begin(kShapes), std::end(kShapes),
                                                                 [&](const BenchShape& s) { return options.shape == s.name; });
  if (!known_shape) fail("--shape: unknown shape '", options.shape, "' (v32k, v8k, 1b or all)");
  if (options.device != "cpu" && options.device != "cuda")
    fail("--device: expected cpu or cuda, got '", options.device, "'");
  if (options.step != "logps" && options.step != "dpo" && options.step != "generate")
    fail("--step: expected logps, dpo or generate, got '", options.step, "'");
  if (options.step == "generate" && options.breakdown) fail("--breakdown times training steps, not --step generate");
  if (options.step == "dpo" && options.sequences % 2 != 0)
    fail("--step dpo: --sequences must be even (a chosen and a rejected sequence per pair), got ",
         options.sequences);
  if (options.device == "cuda" && !cuda_available())
    fail("--device cuda: no CUDA GPU is visible (or this build has no CUDA backend)");
  return options;
}

int run(int argc, char** argv) {
  Options options = parse_options(argc, argv);
  if (options.threads == 0) options.threads = omp_get_num_procs();
  // Every op of the CPU backend runs on OpenMP's threads (GEMMs too: kernels/gemm.cpp).
  omp_set_num_threads(options.threads);
  std::printf("model_bench: %s step on %s (%s), %d sequences x %d tokens, LoRA r=%d alpha=%g on all "
              "projections, %d threads, warm-up %d, median of %d\n",
              options.step.c_str(), options.device.c_str(), options.device == "cuda" ? "bf16" : "f32",
              options.sequences, options.sequence_length, kLoraRank, double(options.lora_alpha),
              options.threads, options.warmup, options.iterations);
  for (const BenchShape& s : kShapes) {
    const bool small = std::string(s.name) != "1b";
    if (options.shape == s.name || (options.shape == "all" && small)) run_shape(s, options);
  }
  return 0;
}

}  // namespace
}  // namespace cst

int main(int argc, char** argv) {
  return cst::run_program("model_bench", [&] { return cst::run(argc, argv); });
}
