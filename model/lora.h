// LoRA adapters (Hu et al. 2021) on the seven projections of a Llama/Mistral layer, PEFT-compatible.
//
//   y = W x + scaling * B (A dropout(x)),   A [r, in], B [out, r],  W frozen
//   scaling = alpha / r   (rslora: alpha / sqrt(r))
//   init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform with a = sqrt(5), as PEFT), B = 0,
//         so a fresh adapter leaves the model unchanged.
// Parameters, gradients and optimizer state are f32 on every backend (the master copy).
//
// Projections that read the same input form an input group: q, k and v read the attention norm's
// output, gate and up the MLP norm's. When every member of a group is adapted, the members' A
// matrices (with their gradients and compute copies) are stored as consecutive row blocks of one
// (members * r, in) matrix, so one GEMM computes the rank-r products of the whole group
// (model/lora_linear.h). Each member still sees its own (r, in) view: names, import, export and
// checkpoints do not change.
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/tensor.h"
#include "model/config.h"

namespace cst {

enum class Projection { q, k, v, o, gate, up, down };
constexpr int kNumProjections = 7;
constexpr std::array<Projection, kNumProjections> kAllProjections = {
    Projection::q, Projection::k, Projection::v, Projection::o,
    Projection::gate, Projection::up, Projection::down};

// "q_proj", ...; the HF module name, also used in PEFT's target_modules.
const char* projection_name(Projection projection);
// Accepts "q_proj" or "q"; errors list the valid names.
Projection parse_projection(const std::string& name);
// Target modules as PEFT names them: a list of projections (each once), or "all-linear" alone,
// PEFT's every linear layer but the output head, which for these models is all seven projections.
std::vector<Projection> parse_target_modules(const std::vector<std::string>& names);
// "self_attn" or "mlp": the HF parent module of a projection.
const char* projection_parent(Projection projection);
// (out_features, in_features) of a projection's weight.
std::pair<int64_t, int64_t> projection_shape(const ModelConfig& config, Projection projection);

enum class InputGroup { attention, mlp };
constexpr int kNumInputGroups = 2;
constexpr int kMaxInputGroupMembers = 3;
constexpr std::array<InputGroup, kNumInputGroups> kAllInputGroups = {InputGroup::attention,
                                                                     InputGroup::mlp};
// The projections of a group, in the order of their A blocks: q, k, v or gate, up.
std::span<const Projection> input_group_members(InputGroup group);

struct LoraConfig {
  int r = 24;
  float alpha = 48.0f;
  float dropout = 0.05f;
  bool use_rslora = false;
  std::vector<Projection> targets = {kAllProjections.begin(), kAllProjections.end()};
  float scaling() const;
  bool targets_projection(Projection projection) const;
};

// The A and B matrices of one adapted projection, with their gradients.
struct LoraPair {
  OwnedTensor a, b;            // (r, in), (out, r), f32 master copies
  OwnedTensor grad_a, grad_b;  // same shapes, f32, accumulated by backward
  // What the forward multiplies with: a and b themselves on the f32 CPU backend, bf16 copies on
  // CUDA (refreshed by LoraAdapter::sync_compute_copies after every change of a or b).
  Tensor compute_a, compute_b;
  OwnedTensor compute_storage_a, compute_storage_b;
  // In a stored input group (LoraGroupA), a, grad_a and compute_a view the group's matrices and
  // the OwnedTensors' own memory is empty.
};

// The A matrices of a fully adapted input group as one: member p's A is rows [p r, (p+1) r).
struct LoraGroupA {
  OwnedTensor a, grad_a;  // (members * r, in), f32
  Tensor compute_a;       // a itself in f32, else the bf16 copy below
  OwnedTensor compute_storage_a;
};

class LoraAdapter {
 public:
  // compute_dtype: the dtype of the base weights the adapter is applied with.
  LoraAdapter(const ModelConfig& model, const LoraConfig& config, Device device,
              DType compute_dtype = DType::f32);

  const LoraConfig& config() const { return config_; }
  // nullptr when the projection is not adapted.
  LoraPair* pair(int layer, Projection projection);
  const LoraPair* pair(int layer, Projection projection) const;
  // nullptr unless every member of the group is adapted.
  const LoraGroupA* group_a(int layer, InputGroup group) const;

  // PEFT's initialisation, deterministic in the seed.
  void initialize(uint64_t seed);
  void zero_grad();
  // Call after a or b changed (optimizer step, load): updates the compute copies.
  void sync_compute_copies();
  // The dtype the forward multiplies in (the base weights' dtype).
  DType compute_dtype() const { return compute_dtype_; }

  // Every trainable tensor with its PEFT name (for the optimizer, checkpoints and export).
  struct Parameter {
    std::string name;  // base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight
    Tensor value, grad;
  };
  std::vector<Parameter> parameters();
  int64_t num_parameters() const;

  // PEFT format: adapter_config.json + adapter_model.safetensors.
  void save_peft(const std::string& directory, const std::string& base_model_name) const;
  static LoraConfig read_peft_config(const std::string& directory);
  void load_peft_weights(const std::string& directory);

 private:
  struct Layer {
    std::array<std::unique_ptr<LoraPair>, kNumProjections> pairs;
    std::array<std::unique_ptr<LoraGroupA>, kNumInputGroups> groups;
  };
  void allocate_a_matrices(Layer& layer);

  ModelConfig model_;
  LoraConfig config_;
  Device device_;
  DType compute_dtype_;
  std::vector<Layer> layers_;
};

std::string lora_tensor_name(int layer, Projection projection, bool is_b);

}  // namespace cst
