// cpu_model_bench: forward + backward time of a ~20M-parameter Mistral with LoRA on the CPU
// backend, the same work that tools/python/bench_cpu_torch.py times in PyTorch.
//
// One step: forward over 4 sequences x 256 tokens with activations saved, every token labelled,
// loss = sum of the tokens' log-probs, then backward producing only the LoRA gradients (r = 16 on
// all seven projections; the base weights are frozen). The model has random f32 weights and is
// written as an HF directory (config.json + model.safetensors) in a temporary folder, then loaded
// the way cst_train loads a model.
//
//   cpu_model_bench [--shape v32k|v8k|all] [--threads N] [--warmup 2] [--iterations 7]
//                   [--breakdown]
//
// Prints one "RESULT ..." line per shape (tools/bench/run_bench.sh collects them). --breakdown
// also times every op of a step on its own, at the model's shapes, to show where the time goes.
#include <omp.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/logprobs.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "model/lora_linear.h"
#include "model/model_file.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "train/demo_assets.h"

namespace cst {
namespace {

// The benchmark models. At vocab 32000 the embedding and LM head hold 16.4M of the 19.3M
// parameters, so the step is mostly the LM head; v8k moves the weight into the layers.
struct BenchShape {
  const char* name;
  int vocab, hidden, intermediate, layers, heads, kv_heads;
};
constexpr BenchShape kShapes[] = {
    {"v32k", 32000, 256, 688, 4, 8, 4},   // 19.3M parameters
    {"v8k", 8192, 256, 688, 22, 8, 4},    // 20.1M parameters
};
constexpr int kSequences = 4;
constexpr int kSequenceLength = 256;
constexpr int kLoraRank = 16;
constexpr float kLoraAlpha = 32.0f;
constexpr float kInitStd = 0.02f;

struct Options {
  std::string shape = "all";
  int threads = 0;  // 0: all processors
  int warmup = 2;
  int iterations = 7;
  bool breakdown = false;
};

// Wall and CPU (all threads of the process) time of a piece of work, in milliseconds.
struct Timing {
  double wall_ms = 0, cpu_ms = 0;
};

double process_cpu_ms() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return double(now.tv_sec) * 1e3 + double(now.tv_nsec) * 1e-6;
}

Timing time_once(const std::function<void()>& work) {
  auto wall_start = std::chrono::steady_clock::now();
  double cpu_start = process_cpu_ms();
  work();
  double cpu_end = process_cpu_ms();
  auto wall_end = std::chrono::steady_clock::now();
  return {std::chrono::duration<double, std::milli>(wall_end - wall_start).count(),
          cpu_end - cpu_start};
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t middle = values.size() / 2;
  return values.size() % 2 ? values[middle] : 0.5 * (values[middle - 1] + values[middle]);
}

int64_t parameter_count(const BenchShape& s) {
  int64_t head_dim = s.hidden / s.heads;
  int64_t attention = int64_t(s.hidden) * head_dim * (2 * s.heads + 2 * s.kv_heads);
  int64_t mlp = int64_t(3) * s.hidden * s.intermediate;
  int64_t per_layer = attention + mlp + 2 * s.hidden;
  return int64_t(2) * s.vocab * s.hidden + s.layers * per_layer + s.hidden;
}

std::string config_json(const BenchShape& s) {
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
      {"torch_dtype", "float32"},
      {"vocab_size", s.vocab},
  };
  return config.dump(2) + "\n";
}

// Writes config.json and model.safetensors with N(0, 0.02^2) matrices and unit norms (the HF
// initialisation) into a fresh directory, and returns its path.
std::string write_random_model(const BenchShape& s) {
  namespace fs = std::filesystem;
  fs::path directory = fs::temp_directory_path() /
                       ("cst_bench_" + std::string(s.name) + "_" + std::to_string(getpid()));
  fs::create_directories(directory);
  std::string config = config_json(s);
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

  demo::DemoRandom random(0x62656e6368ull);
  std::vector<std::vector<float>> values(layout.size());
  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < layout.size(); ++i) {
    const auto& [name, shape] = layout[i];
    int64_t count = 1;
    for (int64_t size : shape) count *= size;
    bool is_norm = shape.size() == 1;
    values[i].resize(size_t(count));
    for (float& value : values[i]) value = is_norm ? 1.0f : random.normal(kInitStd);
    tensors.push_back({name, DType::f32, shape, values[i].data()});
  }
  write_safetensors((directory / "model.safetensors").string(), tensors);
  return directory.string();
}

// The batch: kSequences sequences of kSequenceLength random tokens, each labelled with a random
// token (the labels' values do not change the work, only their count does).
struct Batch {
  std::vector<int32_t> tokens, positions, labels, cu_seqlens;
  TokenSpans spans() const { return {tokens, positions, labels, cu_seqlens}; }
};

Batch random_batch(int vocab) {
  demo::DemoRandom random(0x626174636800ull);
  Batch batch;
  batch.cu_seqlens.push_back(0);
  for (int s = 0; s < kSequences; ++s) {
    for (int i = 0; i < kSequenceLength; ++i) {
      batch.tokens.push_back(int32_t(random.below(size_t(vocab))));
      batch.positions.push_back(i);
      batch.labels.push_back(int32_t(random.below(size_t(vocab))));
    }
    batch.cu_seqlens.push_back(int32_t(batch.tokens.size()));
  }
  return batch;
}

struct LoadedModel {
  ModelFile file;
  ModelWeights weights;
  LoraAdapter lora;
  explicit LoadedModel(const std::string& directory)
      : file(directory), weights(file, Device::cpu, DType::f32),
        lora(file.config(), lora_config(), Device::cpu) {
    lora.initialize(1);
  }
  static LoraConfig lora_config() {
    LoraConfig config;
    config.r = kLoraRank;
    config.alpha = kLoraAlpha;
    config.dropout = 0.0f;  // PEFT's default; with dropout both sides would add a mask pass
    return config;
  }
};

// A (rows, cols) f32 tensor of N(0, std^2) values, for the op breakdown.
OwnedTensor random_tensor(std::initializer_list<int64_t> shape, float std,
                          demo::DemoRandom& random) {
  OwnedTensor t(shape, DType::f32, Device::cpu);
  float* data = t.view.f32();
  for (int64_t i = 0; i < t.view.numel(); ++i) data[i] = random.normal(std);
  return t;
}

// One line of the breakdown: an op, how often a step runs it, and its median time per call.
struct OpTime {
  std::string name;
  int calls_per_step;
  double ms_per_call;
};

OpTime time_op(const std::string& name, int calls_per_step, const std::function<void()>& op) {
  std::vector<double> walls;
  for (int rep = 0; rep < 7; ++rep) walls.push_back(time_once(op).wall_ms);
  walls.erase(walls.begin(), walls.begin() + 2);  // warm-up
  return {name, calls_per_step, median(walls)};
}

// Times each op of a step by itself on random inputs of layer 0's shapes, and prints the table.
void print_breakdown(const BenchShape& s, LoadedModel& model, const Batch& batch, double step_ms) {
  const ModelConfig& config = model.file.config();
  const int64_t n = int64_t(batch.tokens.size()), C = config.hidden_size,
                F = config.intermediate_size, H = config.num_heads, KVH = config.num_kv_heads,
                D = config.head_dim;
  const int layers = config.num_layers;
  demo::DemoRandom random(7);
  Arena scratch(Device::cpu);
  auto ints = [](std::vector<int32_t>& values) {
    return make_view(values.data(), {int64_t(values.size())}, DType::i32, Device::cpu);
  };
  std::vector<int32_t> tokens = batch.tokens, positions = batch.positions, labels = batch.labels;
  OwnedTensor x = random_tensor({n, C}, 1.0f, random), y = random_tensor({n, C}, 1.0f, random);
  OwnedTensor norm_weight = random_tensor({C}, 1.0f, random), rstd({n}, DType::f32, Device::cpu);
  OwnedTensor q = random_tensor({n, H, D}, 1.0f, random);
  OwnedTensor out = random_tensor({n, H, D}, 1.0f, random);
  OwnedTensor k = random_tensor({n, KVH, D}, 1.0f, random);
  OwnedTensor v = random_tensor({n, KVH, D}, 1.0f, random);
  OwnedTensor dq({n, H, D}, DType::f32, Device::cpu), dk({n, KVH, D}, DType::f32, Device::cpu);
  OwnedTensor dv({n, KVH, D}, DType::f32, Device::cpu), lse({H, n}, DType::f32, Device::cpu);
  OwnedTensor gate = random_tensor({n, F}, 1.0f, random), up = random_tensor({n, F}, 1.0f, random);
  OwnedTensor act({n, F}, DType::f32, Device::cpu), dgate({n, F}, DType::f32, Device::cpu);
  OwnedTensor token_values({n}, DType::f32, Device::cpu), token_lse({n}, DType::f32, Device::cpu);
  OwnedTensor logit_sums({n}, DType::f32, Device::cpu);
  for (int64_t i = 0; i < n; ++i) rstd.view.f32()[i] = 1.0f;
  AttentionShape attention{int(H), int(KVH), int(D), 0};
  std::vector<OpTime> ops;

  // The seven projections as the model runs them: base sgemm plus the two rank-r products.
  for (Projection p : kAllProjections) {
    auto [out_features, in_features] = projection_shape(config, p);
    OwnedTensor input = random_tensor({n, in_features}, 1.0f, random);
    OwnedTensor output = random_tensor({n, out_features}, 1.0f, random);
    OwnedTensor dinput({n, in_features}, DType::f32, Device::cpu);
    LoraLinear linear{model.weights.projection(0, p)};
    linear.lora = model.lora.pair(0, p);
    linear.scaling = model.lora.config().scaling();
    Tensor u = lora_linear_forward(output, input, linear, scratch);
    OwnedTensor saved_u({n, kLoraRank}, DType::f32, Device::cpu);
    copy_tensor(saved_u, u);
    std::string name = projection_name(p);
    ops.push_back(time_op(name + " forward", layers, [&] {
      scratch.reset();
      lora_linear_forward(output, input, linear, scratch);
    }));
    ops.push_back(time_op(name + " backward", layers, [&] {
      scratch.reset();
      lora_linear_backward(dinput, false, output, input, saved_u, linear, scratch);
    }));
  }
  ops.push_back(time_op("attention forward", layers, [&] {
    attention_forward(out, lse, q, k, v, batch.cu_seqlens, attention);
  }));
  ops.push_back(time_op("attention backward", layers, [&] {
    attention_backward(dq, dk, dv, out, q, k, v, out, lse, batch.cu_seqlens, attention);
  }));
  ops.push_back(time_op("rmsnorm forward", 2 * layers + 1,
                        [&] { rmsnorm_forward(y, rstd, x, norm_weight, 1e-5f); }));
  ops.push_back(time_op("rmsnorm backward", 2 * layers + 1,
                        [&] { rmsnorm_backward(y, Tensor{}, x, x, norm_weight, rstd); }));
  ops.push_back(time_op("rope q+k (forward and backward)", 2 * layers, [&] {
    rope_forward(q, ints(positions), config.rope_theta);
    rope_forward(k, ints(positions), config.rope_theta);
  }));
  ops.push_back(time_op("swiglu forward", layers, [&] { swiglu_forward(act, gate, up); }));
  ops.push_back(time_op("swiglu backward", layers, [&] {
    swiglu_backward(dgate, act, act, gate, up);
  }));
  ops.push_back(time_op("residual add", 4 * layers, [&] { add_inplace(y, x); }));
  ops.push_back(time_op("embedding", 1, [&] {
    embedding_forward(y, ints(tokens), model.weights.embed_tokens);
  }));
  ops.push_back(time_op("logprobs forward (LM head)", 1, [&] {
    scratch.reset();
    logprobs_forward(token_values, token_lse, logit_sums, x, model.weights.lm_head, ints(labels),
                     scratch);
  }));
  ops.push_back(time_op("logprobs backward (LM head)", 1, [&] {
    scratch.reset();
    logprobs_backward(y, token_values, x, model.weights.lm_head, ints(labels), token_lse, scratch);
  }));

  double total = 0;
  for (const OpTime& op : ops) total += op.calls_per_step * op.ms_per_call;
  std::printf("\nbreakdown of one %s step (each op timed alone, median of 5):\n", s.name);
  std::printf("  %-34s %6s %10s %10s %6s\n", "op", "calls", "ms/call", "ms/step", "share");
  for (const OpTime& op : ops) {
    double per_step = op.calls_per_step * op.ms_per_call;
    std::printf("  %-34s %6d %10.3f %10.2f %5.1f%%\n", op.name.c_str(), op.calls_per_step,
                op.ms_per_call, per_step, 100.0 * per_step / total);
  }
  std::printf("  %-34s %6s %10s %10.2f  (measured step: %.2f ms)\n", "sum", "", "", total, step_ms);
}

void run_shape(const BenchShape& s, const Options& options) {
  std::string directory = write_random_model(s);
  LoadedModel model(directory);
  std::filesystem::remove_all(directory);  // the weights now live in memory
  Batch batch = random_batch(s.vocab);
  Transformer transformer(model.file.config(), model.weights, &model.lora);
  ForwardOptions forward_options;
  forward_options.save_for_backward = true;
  std::vector<float> dlogps(batch.tokens.size(), 1.0f);  // loss = sum of log-probs

  std::vector<double> forward_ms, backward_ms, step_ms, step_cpu_ms;
  for (int i = 0; i < options.warmup + options.iterations; ++i) {
    model.lora.zero_grad();
    Timing forward = time_once([&] { transformer.forward(batch.spans(), forward_options); });
    Timing backward = time_once([&] { transformer.backward(dlogps); });
    if (i < options.warmup) continue;
    forward_ms.push_back(forward.wall_ms);
    backward_ms.push_back(backward.wall_ms);
    step_ms.push_back(forward.wall_ms + backward.wall_ms);
    step_cpu_ms.push_back(forward.cpu_ms + backward.cpu_ms);
  }
  std::printf(
      "RESULT impl=cst shape=%s params=%.1fM threads=%d step_ms=%.1f min_ms=%.1f cpu_ms=%.1f "
      "forward_ms=%.1f backward_ms=%.1f\n",
      s.name, double(parameter_count(s)) / 1e6, options.threads, median(step_ms),
      *std::min_element(step_ms.begin(), step_ms.end()), median(step_cpu_ms), median(forward_ms),
      median(backward_ms));
  std::fflush(stdout);
  if (options.breakdown) print_breakdown(s, model, batch, median(step_ms));
}

int parse_count(const char* flag, const char* text, int minimum) {
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < minimum || value > 100000)
    fail(flag, ": expected an integer >= ", minimum, ", got '", text, "'");
  return int(value);
}

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) fail(flag, " needs a value");
      return argv[++i];
    };
    if (flag == "--shape") options.shape = value();
    else if (flag == "--threads") options.threads = parse_count("--threads", value(), 1);
    else if (flag == "--warmup") options.warmup = parse_count("--warmup", value(), 0);
    else if (flag == "--iterations") options.iterations = parse_count("--iterations", value(), 1);
    else if (flag == "--breakdown") options.breakdown = true;
    else fail("unknown flag ", flag, " (flags: --shape v32k|v8k|all, --threads N, --warmup N, ",
              "--iterations N, --breakdown)");
  }
  return options;
}

int run(int argc, char** argv) {
  Options options = parse_options(argc, argv);
  if (options.threads == 0) options.threads = omp_get_num_procs();
  // Every op of the CPU backend runs on OpenMP's threads (GEMMs too: kernels/gemm.cpp).
  omp_set_num_threads(options.threads);
  std::printf("cpu_model_bench: %d sequences x %d tokens, LoRA r=%d on all projections, f32, "
              "%d threads, warm-up %d, median of %d\n",
              kSequences, kSequenceLength, kLoraRank, options.threads, options.warmup,
              options.iterations);
  bool found = false;
  for (const BenchShape& s : kShapes) {
    if (options.shape != "all" && options.shape != s.name) continue;
    found = true;
    run_shape(s, options);
  }
  if (!found) fail("--shape: unknown shape '", options.shape, "' (v32k, v8k or all)");
  return 0;
}

}  // namespace
}  // namespace cst

int main(int argc, char** argv) {
  try {
    return cst::run(argc, argv);
  } catch (const cst::Error& error) {
    std::fprintf(stderr, "cpu_model_bench: %s\n", error.what());
    return 1;
  }
}
