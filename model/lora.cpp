#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "kernels/elementwise.h"
#include "model/safetensors.h"

namespace cst {

namespace {

constexpr const char* kProjectionNames[kNumProjections] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

constexpr Projection kAttentionInputMembers[] = {Projection::q, Projection::k, Projection::v};
constexpr Projection kMlpInputMembers[] = {Projection::gate, Projection::up};
static_assert(std::size(kAttentionInputMembers) <= kMaxInputGroupMembers &&
              std::size(kMlpInputMembers) <= kMaxInputGroupMembers);

// An f32 master tensor and what the forward multiplies with: the tensor itself when the compute
// dtype is f32, otherwise a copy in the compute dtype.
void allocate_with_compute_copy(OwnedTensor& master, Tensor& compute, OwnedTensor& compute_storage,
                                std::initializer_list<int64_t> shape, DType compute_dtype,
                                Device device) {
  master = OwnedTensor(shape, DType::f32, device);
  if (compute_dtype == DType::f32) {
    compute = master.view;
    return;
  }
  compute_storage = OwnedTensor(shape, compute_dtype, device);
  compute = compute_storage.view;
}

}  // namespace

const char* projection_name(Projection projection) { return kProjectionNames[int(projection)]; }

const char* projection_parent(Projection projection) {
  return int(projection) <= int(Projection::o) ? "self_attn" : "mlp";
}

Projection parse_projection(const std::string& name) {
  for (Projection projection : kAllProjections) {
    std::string full = projection_name(projection);
    if (name == full || name == full.substr(0, full.size() - 5)) return projection;
  }
  fail("unknown LoRA target module '", name,
       "'; valid: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or all-linear alone");
}

std::vector<Projection> parse_target_modules(const std::vector<std::string>& names) {
  if (names.size() == 1 && names[0] == "all-linear") return {kAllProjections.begin(), kAllProjections.end()};
  std::vector<Projection> targets;
  for (const std::string& name : names) {
    const Projection projection = parse_projection(name);
    if (std::find(targets.begin(), targets.end(), projection) != targets.end())
      fail("LoRA target module '", name, "' is listed twice");
    targets.push_back(projection);
  }
  if (targets.empty()) fail("no LoRA target module given");
  return targets;
}

std::pair<int64_t, int64_t> projection_shape(const ModelConfig& config, Projection projection) {
  const int64_t C = config.hidden_size, F = config.intermediate_size;
  const int64_t q_width = int64_t(config.num_heads) * config.head_dim;
  const int64_t kv_width = int64_t(config.num_kv_heads) * config.head_dim;
  switch (projection) {
    case Projection::q: return {q_width, C};
    case Projection::k: return {kv_width, C};
    case Projection::v: return {kv_width, C};
    case Projection::o: return {C, q_width};
    case Projection::gate: return {F, C};
    case Projection::up: return {F, C};
    case Projection::down: return {C, F};
  }
  fail("bad projection");
}

float LoraConfig::scaling() const {
  return use_rslora ? alpha / std::sqrt(float(r)) : alpha / float(r);
}

bool LoraConfig::targets_projection(Projection projection) const {
  for (Projection target : targets)
    if (target == projection) return true;
  return false;
}

std::string lora_tensor_name(int layer, Projection projection, bool is_b) {
  return "base_model.model.model.layers." + std::to_string(layer) + "." +
         projection_parent(projection) + "." + projection_name(projection) +
         (is_b ? ".lora_B.weight" : ".lora_A.weight");
}

std::span<const Projection> input_group_members(InputGroup group) {
  if (group == InputGroup::attention) return kAttentionInputMembers;
  return kMlpInputMembers;
}

LoraAdapter::LoraAdapter(const ModelConfig& model, const LoraConfig& config, Device device,
                         DType compute_dtype)
    : model_(model), config_(config), device_(device), compute_dtype_(compute_dtype) {
  if (config.r <= 0) fail("LoRA rank r must be positive, got ", config.r);
  if (!(config.dropout >= 0.0f && config.dropout < 1.0f))
    fail("lora_dropout must be in [0, 1), got ", config.dropout);
  layers_.resize(size_t(model.num_layers));
  for (Layer& layer : layers_) {
    for (Projection projection : config.targets) {
      auto [out_features, in_features] = projection_shape(model, projection);
      auto pair = std::make_unique<LoraPair>();
      allocate_with_compute_copy(pair->b, pair->compute_b, pair->compute_storage_b,
                                 {out_features, config.r}, compute_dtype, device);
      pair->grad_b = OwnedTensor({out_features, config.r}, DType::f32, device);
      layer.pairs[size_t(projection)] = std::move(pair);
    }
    allocate_a_matrices(layer);
  }
}

// Each adapted projection's A: a row block of its group's matrix when the whole group is
// adapted, otherwise memory of its own.
void LoraAdapter::allocate_a_matrices(Layer& layer) {
  const int64_t rank = config_.r;
  for (InputGroup group : kAllInputGroups) {
    std::span<const Projection> members = input_group_members(group);
    bool fully_adapted = true;
    for (Projection member : members) fully_adapted = fully_adapted && layer.pairs[size_t(member)];
    if (!fully_adapted) continue;
    const int64_t in_features = projection_shape(model_, members[0]).second;
    const int64_t group_rows = int64_t(members.size()) * rank;
    auto stored = std::make_unique<LoraGroupA>();
    allocate_with_compute_copy(stored->a, stored->compute_a, stored->compute_storage_a,
                               {group_rows, in_features}, compute_dtype_, device_);
    stored->grad_a = OwnedTensor({group_rows, in_features}, DType::f32, device_);
    for (size_t index = 0; index < members.size(); ++index) {
      LoraPair& pair = *layer.pairs[size_t(members[index])];
      const int64_t begin = int64_t(index) * rank, end = begin + rank;
      pair.a.view = stored->a.view.rows(begin, end);
      pair.grad_a.view = stored->grad_a.view.rows(begin, end);
      pair.compute_a = stored->compute_a.rows(begin, end);
    }
    layer.groups[size_t(group)] = std::move(stored);
  }
  for (Projection projection : kAllProjections) {
    LoraPair* pair = layer.pairs[size_t(projection)].get();
    if (!pair || !pair->a.view.empty()) continue;
    const int64_t in_features = projection_shape(model_, projection).second;
    allocate_with_compute_copy(pair->a, pair->compute_a, pair->compute_storage_a,
                               {rank, in_features}, compute_dtype_, device_);
    pair->grad_a = OwnedTensor({rank, in_features}, DType::f32, device_);
  }
}

LoraPair* LoraAdapter::pair(int layer, Projection projection) {
  return layers_.at(size_t(layer)).pairs[size_t(projection)].get();
}

const LoraPair* LoraAdapter::pair(int layer, Projection projection) const {
  return layers_.at(size_t(layer)).pairs[size_t(projection)].get();
}

const LoraGroupA* LoraAdapter::group_a(int layer, InputGroup group) const {
  return layers_.at(size_t(layer)).groups[size_t(group)].get();
}

void LoraAdapter::initialize(uint64_t seed) {
  uint64_t stream = 0;
  for (auto& layer : layers_) {
    for (auto& pair : layer.pairs) {
      ++stream;
      if (!pair) continue;
      const int64_t count = pair->a.view.numel(), in_features = pair->a.view.dim(1);
      const float bound = 1.0f / std::sqrt(float(in_features));
      std::vector<float> values(static_cast<size_t>(count));
      for (int64_t i = 0; i < count; ++i)
        values[size_t(i)] = bound * (2.0f * counter_uniform(seed, stream, uint64_t(i)) - 1.0f);
      copy_tensor(pair->a.view, make_view(values.data(), {count}, DType::f32, Device::cpu));
      fill_zero(pair->b.view);
    }
  }
  sync_compute_copies();
}

void LoraAdapter::zero_grad() {
  for (auto& layer : layers_)
    for (auto& pair : layer.pairs)
      if (pair) {
        fill_zero(pair->grad_a.view);
        fill_zero(pair->grad_b.view);
      }
}

void LoraAdapter::sync_compute_copies() {
  if (compute_dtype_ == DType::f32) return;
  for (auto& layer : layers_)
    for (auto& pair : layer.pairs)
      if (pair) {
        copy_tensor(pair->compute_a, pair->a.view);
        copy_tensor(pair->compute_b, pair->b.view);
      }
}

std::vector<LoraAdapter::Parameter> LoraAdapter::parameters() {
  std::vector<Parameter> result;
  for (int layer = 0; layer < int(layers_.size()); ++layer)
    for (Projection projection : kAllProjections)
      if (LoraPair* p = pair(layer, projection)) {
        result.push_back({lora_tensor_name(layer, projection, false), p->a.view, p->grad_a.view});
        result.push_back({lora_tensor_name(layer, projection, true), p->b.view, p->grad_b.view});
      }
  return result;
}

int64_t LoraAdapter::num_parameters() const {
  int64_t total = 0;
  for (const auto& layer : layers_)
    for (const auto& pair : layer.pairs)
      if (pair) total += pair->a.view.numel() + pair->b.view.numel();
  return total;
}

// ---- PEFT format ----

void LoraAdapter::save_peft(const std::string& directory, const std::string& base_model_name) const {
  std::filesystem::create_directories(directory);
  nlohmann::json config = {
      {"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model_name}, {"r", config_.r},
      {"lora_alpha", config_.alpha}, {"lora_dropout", config_.dropout},
      {"bias", "none"}, {"fan_in_fan_out", false}, {"use_rslora", config_.use_rslora},
      {"init_lora_weights", true}, {"modules_to_save", nullptr}, {"use_dora", false},
      {"inference_mode", true}, {"target_modules", nlohmann::json::array()},
      {"layers_to_transform", nullptr}, {"layers_pattern", nullptr},
      {"rank_pattern", nlohmann::json::object()}, {"alpha_pattern", nlohmann::json::object()}};
  for (Projection projection : config_.targets)
    config["target_modules"].push_back(projection_name(projection));

  // Download every tensor to the host (they are f32), then write them under PEFT's names.
  std::vector<std::vector<float>> host_copies;
  std::vector<TensorToWrite> tensors;
  for (int layer = 0; layer < int(layers_.size()); ++layer)
    for (Projection projection : kAllProjections)
      if (const LoraPair* p = pair(layer, projection))
        for (bool is_b : {false, true}) {
          const Tensor& value = is_b ? p->b.view : p->a.view;
          host_copies.push_back(to_host_f32(value));
          tensors.push_back({lora_tensor_name(layer, projection, is_b), DType::f32,
                             {value.dim(0), value.dim(1)}, host_copies.back().data()});
        }
  write_safetensors((std::filesystem::path(directory) / "adapter_model.safetensors").string(), tensors);
  const std::string config_text = config.dump(2) + "\n";
  write_file_atomically((std::filesystem::path(directory) / "adapter_config.json").string(),
                        {{config_text.data(), config_text.size()}});
}

LoraConfig LoraAdapter::read_peft_config(const std::string& directory) {
  const std::filesystem::path path = std::filesystem::path(directory) / "adapter_config.json";
  std::ifstream in(path);
  if (!in) fail("cannot open ", path.string(), " (is ", directory, " a PEFT adapter directory?)");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(path.string(), ": invalid JSON: ", e.what());
  }
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) fail(path.string(), ": ", what);
  };
  require(json.value("peft_type", "") == "LORA", "peft_type must be \"LORA\"");
  require(json.value("bias", "none") == "none", "only bias \"none\" is supported");
  require(!json.value("use_dora", false), "DoRA adapters are not supported");
  require(!json.value("fan_in_fan_out", false), "fan_in_fan_out adapters are not supported");
  require(json.contains("r") && json["r"].is_number_integer(), "missing integer r");
  require(json.contains("lora_alpha") && json["lora_alpha"].is_number(), "missing lora_alpha");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    require(!json.contains(key) || json[key].is_null() || json[key].empty(),
            std::string(key) + " is not supported");
  require(!json.contains("layers_to_transform") || json["layers_to_transform"].is_null(),
          "layers_to_transform is not supported");
  LoraConfig config;
  config.r = json["r"].get<int>();
  config.alpha = json["lora_alpha"].get<float>();
  config.dropout = json.value("lora_dropout", 0.0f);
  config.use_rslora = json.value("use_rslora", false);
  config.targets.clear();
  const nlohmann::json& targets = json["target_modules"];
  require(targets.is_array(), "target_modules must be a list of module names");
  for (const auto& target : targets) config.targets.push_back(parse_projection(target.get<std::string>()));
  return config;
}

void LoraAdapter::load_peft_weights(const std::string& directory) {
  const std::string path = (std::filesystem::path(directory) / "adapter_model.safetensors").string();
  SafetensorsFile file(path);
  for (int layer = 0; layer < int(layers_.size()); ++layer)
    for (Projection projection : kAllProjections)
      if (LoraPair* p = pair(layer, projection))
        for (bool is_b : {false, true}) {
          const std::string name = lora_tensor_name(layer, projection, is_b);
          const TensorInfo* info = file.find(name);
          if (!info) fail(path, ": missing tensor ", name);
          const Tensor& destination = is_b ? p->b.view : p->a.view;
          Tensor source = make_view(const_cast<uint8_t*>(info->data), info->shape, info->dtype, Device::cpu);
          if (!same_shape(source, destination))
            fail(path, ": tensor ", name, " has shape ", source.describe(), ", expected ",
                 destination.describe(), " (does the adapter belong to this model?)");
          check_finite(*info, path);
          copy_tensor(destination, source);
        }
  sync_compute_copies();
}

}  // namespace cst
