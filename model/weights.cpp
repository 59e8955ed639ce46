#include "model/weights.h"

#include <string>


namespace cst {

Tensor ModelWeights::load(const ModelFile& model, const std::string& name,
                          std::initializer_list<int64_t> shape) {
  const TensorInfo& info = model.weights().get(name);
  Tensor source = make_view(const_cast<uint8_t*>(info.data), info.shape, info.dtype, Device::cpu);
  Tensor expected = make_view(nullptr, shape, dtype_, device_);
  if (!same_shape(source, expected))
    fail("weight ", name, " has shape ", source.describe(), " but the config implies ",
         expected.describe());
  if (info.dtype != DType::f32 && info.dtype != DType::bf16 && info.dtype != DType::f16)
    fail("weight ", name, " has dtype ", dtype_name(info.dtype), "; expected a float dtype");
  check_finite(info, "the model");
  storage_.emplace_back(std::vector<int64_t>(shape), dtype_, device_);
  copy_tensor(storage_.back().view, source);
  return storage_.back().view;
}

ModelWeights::ModelWeights(const ModelFile& model, Device device, DType dtype)
    : device_(device), dtype_(dtype) {
  const ModelConfig& config = model.config();
  const int64_t V = config.vocab_size, C = config.hidden_size, F = config.intermediate_size;
  const int64_t q_width = int64_t(config.num_heads) * config.head_dim;
  const int64_t kv_width = int64_t(config.num_kv_heads) * config.head_dim;
  storage_.reserve(size_t(config.num_layers) * 9 + 3);
  embed_tokens = load(model, "model.embed_tokens.weight", {V, C});
  for (int i = 0; i < config.num_layers; ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    LayerWeights layer;
    layer.input_norm = load(model, prefix + "input_layernorm.weight", {C});
    layer.q = load(model, prefix + "self_attn.q_proj.weight", {q_width, C});
    layer.k = load(model, prefix + "self_attn.k_proj.weight", {kv_width, C});
    layer.v = load(model, prefix + "self_attn.v_proj.weight", {kv_width, C});
    layer.o = load(model, prefix + "self_attn.o_proj.weight", {C, q_width});
    layer.post_attention_norm = load(model, prefix + "post_attention_layernorm.weight", {C});
    layer.gate = load(model, prefix + "mlp.gate_proj.weight", {F, C});
    layer.up = load(model, prefix + "mlp.up_proj.weight", {F, C});
    layer.down = load(model, prefix + "mlp.down_proj.weight", {C, F});
    layers.push_back(layer);
  }
  final_norm = load(model, "model.norm.weight", {C});
  if (config.tie_word_embeddings) {
    lm_head = embed_tokens;
  } else {
    lm_head = load(model, "lm_head.weight", {V, C});
  }
}

const Tensor& ModelWeights::projection(int layer, Projection projection) const {
  const LayerWeights& w = layers.at(size_t(layer));
  switch (projection) {
    case Projection::q: return w.q;
    case Projection::k: return w.k;
    case Projection::v: return w.v;
    case Projection::o: return w.o;
    case Projection::gate: return w.gate;
    case Projection::up: return w.up;
    case Projection::down: return w.down;
  }
  fail("bad projection ", int(projection));
}

}  // namespace cst
