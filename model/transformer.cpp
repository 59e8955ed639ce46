#include "model/transformer.h"

#include <cmath>

#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/logprobs.h"
#include "kernels/nvtx.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "model/lora_linear.h"

namespace cst {

// What one layer's backward needs from its forward.
struct LayerActivations {
  Tensor x;                 // (N, C) layer input (residual stream)
  Tensor rstd1, n1;         // (N), (N, C)
  Tensor q, k, v;           // (N, H, D), (N, KVH, D) x2, after RoPE
  Tensor attention, lse;    // (N, H, D), (H, N)
  Tensor h;                 // (N, C) residual after attention
  Tensor rstd2, n2;         // (N), (N, C)
  Tensor gate, up, act;     // (N, F)
  std::array<LoraGroupSaved, kNumInputGroups> lora_groups;  // q, k, v and gate, up
  Tensor lora_u_o, lora_u_down;                             // (N, r) when adapted
};

struct Transformer::Saved {
  Saved(const ModelConfig& config, Device device)
      : arena(device), layer_scratch(device),
        rope_inverse_frequencies(
            cst::rope_inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling, device)) {}
  Arena arena;          // every activation of the current batch
  Arena layer_scratch;  // one layer's intermediates, when they are recomputed in backward
  OwnedTensor rope_inverse_frequencies;  // (D/2) f32, the config's RoPE frequencies, for every batch
  std::vector<int32_t> cu_seqlens;
  Tensor tokens, positions, labels;  // (N) i32 on the device
  std::vector<LayerActivations> layers;
  Tensor final_input, final_rstd, final_hidden, lse;  // (N, C), (N), (N, C), (N)
  ForwardOptions options;
  bool ready_for_backward = false;
};

Transformer::Transformer(const ModelConfig& config, const ModelWeights& weights, LoraAdapter* lora)
    : config_(config), weights_(weights), lora_(lora),
      saved_(std::make_unique<Saved>(config, weights.device())) {}

Transformer::~Transformer() = default;

size_t Transformer::activation_bytes() const { return saved_->arena.bytes_reserved(); }

static AttentionShape attention_shape(const ModelConfig& config) {
  return {config.num_heads, config.num_kv_heads, config.head_dim, config.sliding_window};
}

// The projection's layer with its adapter, or without when adapters are off.
static LoraLinear projection_layer(const ModelWeights& weights, LoraAdapter* lora, int layer,
                                   Projection projection, const ForwardOptions& options) {
  const Tensor& weight = weights.projection(layer, projection);
  LoraLinear linear{weight};
  if (lora && options.adapters_enabled) {
    linear.lora = lora->pair(layer, projection);
    linear.scaling = lora->config().scaling();
    linear.dropout = options.save_for_backward ? lora->config().dropout : 0.0f;  // eval: no dropout
    linear.dropout_seed = options.dropout_seed;
    linear.dropout_stream = uint64_t(layer) * kNumProjections + uint64_t(projection);
  }
  return linear;
}

// The projections of an input group with their adapters, and the group's stored A matrix.
static LoraLinearGroup input_group_layers(const ModelWeights& weights, LoraAdapter* lora, int layer,
                                          InputGroup group, const ForwardOptions& options) {
  LoraLinearGroup result;
  for (Projection member : input_group_members(group))
    result.members.push_back(projection_layer(weights, lora, layer, member, options));
  if (lora && options.adapters_enabled) result.group_a = lora->group_a(layer, group);
  return result;
}

// The batch's token ids, positions and labels travel to the device in one copy, as the rows of
// one (3, N) i32 tensor followed by `extra`; the ops read them there for the whole forward and
// backward and never copy them back (cu_seqlens stays on the host: the attention op takes it there).
Tensor Transformer::upload_batch(const TokenSpans& batch, std::span<const int32_t> extra) {
  const size_t n = batch.tokens.size();
  CST_CHECK(batch.positions.size() == n && batch.labels.size() == n, "batch spans differ in length");
  CST_CHECK(batch.cu_seqlens.size() >= 2 && batch.cu_seqlens.front() == 0 &&
                size_t(batch.cu_seqlens.back()) == n,
            "cu_seqlens must run from 0 to the token count ", n);
  for (int32_t position : batch.positions)
    if (position < 0 || (config_.max_position_embeddings > 0 &&
                         position >= config_.max_position_embeddings))
      fail("position ", position, " is outside the model's range [0, ",
           config_.max_position_embeddings, ")");
  std::vector<int32_t> staged;
  staged.reserve(3 * n + extra.size());
  for (std::span<const int32_t> row : {batch.tokens, batch.positions, batch.labels, extra})
    staged.insert(staged.end(), row.begin(), row.end());
  Saved& saved = *saved_;
  saved.arena.reset();
  saved.cu_seqlens.assign(batch.cu_seqlens.begin(), batch.cu_seqlens.end());
  const int64_t count = int64_t(n);
  Tensor device_batch = saved.arena.alloc({int64_t(staged.size())}, DType::i32);
  copy_tensor(device_batch, make_view(staged.data(), {int64_t(staged.size())}, DType::i32, Device::cpu));
  saved.tokens = device_batch.rows(0, count);
  saved.positions = device_batch.rows(count, 2 * count);
  saved.labels = device_batch.rows(2 * count, 3 * count);
  return device_batch.rows(3 * count, int64_t(staged.size()));
}

KvCache::KvCache(const ModelConfig& config, Device device, DType dtype, int64_t sequences, int64_t capacity_tokens)
    : capacity(capacity_tokens), lengths(size_t(sequences), 0) {
  const int64_t rows = sequences * capacity;
  if (sequences <= 0 || capacity <= 0 || rows > INT32_MAX)
    fail("a KV cache of ", sequences, " sequences x ", capacity, " tokens is not possible");
  for (int layer = 0; layer < config.num_layers; ++layer) {
    keys.emplace_back(std::initializer_list<int64_t>{rows, config.num_kv_heads, config.head_dim}, dtype, device);
    values.emplace_back(std::initializer_list<int64_t>{rows, config.num_kv_heads, config.head_dim}, dtype, device);
  }
}

// What a decoding forward needs besides the batch: the cache, the cache row of each new token
// (N, i32 on the device), and whether every piece starts its sequence.
struct Transformer::CacheUpdate {
  KvCache* cache;
  Tensor rows;
  bool prefill;
};

// Attention of one layer. With a cache, the new keys and values are written into it first; a
// prefill runs the training kernel, later tokens the decoding kernel over the cache.
static void layer_attention(LayerActivations& a, const std::vector<int32_t>& cu_seqlens, const Tensor& positions,
                            const AttentionShape& shape, KvCache* cache, const Tensor& cache_rows,
                            bool prefill, int layer) {
  if (cache) {
    const Tensor& keys = cache->keys[size_t(layer)].view;
    const Tensor& values = cache->values[size_t(layer)].view;
    const int64_t n = a.k.dim(0), width = a.k.dim(1) * a.k.dim(2), rows = keys.dim(0);
    scatter_rows(keys.reshaped({rows, width}), cache_rows, a.k.reshaped({n, width}));
    scatter_rows(values.reshaped({rows, width}), cache_rows, a.v.reshaped({n, width}));
    if (!prefill) return attention_decode(a.attention, a.q, keys, values, cache_rows, positions, shape);
  }
  attention_forward(a.attention, a.lse, a.q, a.k, a.v, cu_seqlens, shape);
}

// One decoder layer: every intermediate the backward needs is allocated in `arena` and returned;
// the layer's output is written into `out` (N, C).
LayerActivations Transformer::layer_forward(int layer, const Tensor& x, const Tensor& out,
                                            const ForwardOptions& options, const CacheUpdate* update,
                                            Arena& arena) {
  NvtxRange range("layer " + std::to_string(layer) + " forward");
  const Saved& saved = *saved_;
  const LayerWeights& w = weights_.layers[layer];
  const DType dtype = weights_.dtype();
  const int64_t n = x.dim(0);
  const int64_t C = config_.hidden_size, F = config_.intermediate_size, D = config_.head_dim;
  const int64_t H = config_.num_heads, KVH = config_.num_kv_heads;
  auto linear = [&](Projection p) { return projection_layer(weights_, lora_, layer, p, options); };
  auto group = [&](InputGroup g) { return input_group_layers(weights_, lora_, layer, g, options); };
  LayerActivations a;
  a.x = x;
  // Attention block.
  a.rstd1 = arena.alloc({n}, DType::f32);
  a.n1 = arena.alloc({n, C}, dtype);
  rmsnorm_forward(a.n1, a.rstd1, x, w.input_norm, config_.rms_norm_eps);
  a.q = arena.alloc({n, H, D}, dtype);
  a.k = arena.alloc({n, KVH, D}, dtype);
  a.v = arena.alloc({n, KVH, D}, dtype);
  const Tensor qkv[] = {a.q.reshaped({n, H * D}), a.k.reshaped({n, KVH * D}), a.v.reshaped({n, KVH * D})};
  a.lora_groups[int(InputGroup::attention)] = lora_group_forward(qkv, a.n1, group(InputGroup::attention), arena);
  rope_forward(a.q, saved.positions, saved.rope_inverse_frequencies);
  rope_forward(a.k, saved.positions, saved.rope_inverse_frequencies);
  a.attention = arena.alloc({n, H, D}, dtype);
  a.lse = arena.alloc({H, n}, DType::f32);
  layer_attention(a, saved.cu_seqlens, saved.positions, attention_shape(config_), update ? update->cache : nullptr,
                  update ? update->rows : Tensor{}, update && update->prefill, layer);
  a.h = arena.alloc({n, C}, dtype);
  a.lora_u_o = lora_linear_forward(a.h, a.attention.reshaped({n, H * D}), linear(Projection::o), arena);
  add_inplace(a.h, x);
  // MLP block.
  a.rstd2 = arena.alloc({n}, DType::f32);
  a.n2 = arena.alloc({n, C}, dtype);
  rmsnorm_forward(a.n2, a.rstd2, a.h, w.post_attention_norm, config_.rms_norm_eps);
  a.gate = arena.alloc({n, F}, dtype);
  a.up = arena.alloc({n, F}, dtype);
  const Tensor gate_up[] = {a.gate, a.up};
  a.lora_groups[int(InputGroup::mlp)] = lora_group_forward(gate_up, a.n2, group(InputGroup::mlp), arena);
  a.act = arena.alloc({n, F}, dtype);
  swiglu_forward(a.act, a.gate, a.up);
  a.lora_u_down = lora_linear_forward(out, a.act, linear(Projection::down), arena);
  add_inplace(out, a.h);
  return a;
}

// Runs the embedding and every layer; returns the final hidden state (after the final norm).
// With recompute_activations only each layer's input is kept; its intermediates live in the
// layer scratch arena, which the next layer reuses, and backward recomputes them.
Tensor Transformer::run_layers(const ForwardOptions& options, const CacheUpdate* update) {
  Saved& saved = *saved_;
  saved.options = options;
  saved.ready_for_backward = false;
  saved.layers.assign(options.save_for_backward ? config_.num_layers : 0, {});
  Arena& arena = saved.arena;
  const DType dtype = weights_.dtype();
  const int64_t n = saved.tokens.dim(0), C = config_.hidden_size;
  const bool keep_all = options.save_for_backward && !options.recompute_activations;

  Tensor x = arena.alloc({n, C}, dtype);
  embedding_forward(x, saved.tokens, weights_.embed_tokens);
  // Without a backward to come, only a layer's input and output are live: two buffers take turns.
  Tensor spare = options.save_for_backward ? Tensor{} : arena.alloc({n, C}, dtype);
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    Tensor out = options.save_for_backward ? arena.alloc({n, C}, dtype) : spare;
    if (!keep_all) saved.layer_scratch.reset();
    LayerActivations a = layer_forward(layer, x, out, options, update, keep_all ? arena : saved.layer_scratch);
    if (keep_all) saved.layers[layer] = a;
    else if (options.save_for_backward) saved.layers[layer].x = x;
    else spare = x;
    x = out;
  }
  saved.final_input = x;
  saved.final_rstd = arena.alloc({n}, DType::f32);
  saved.final_hidden = arena.alloc({n, C}, dtype);
  rmsnorm_forward(saved.final_hidden, saved.final_rstd, x, weights_.final_norm, config_.rms_norm_eps);
  return saved.final_hidden;
}

TokenLogps Transformer::forward(const TokenSpans& batch, const ForwardOptions& options) {
  upload_batch(batch);
  Tensor hidden = run_layers(options);
  Saved& saved = *saved_;
  const int64_t n = hidden.dim(0);
  NvtxRange range("logprobs forward");
  Tensor logps = saved.arena.alloc({n}, DType::f32);
  Tensor logit_sums = saved.arena.alloc({n}, DType::f32);
  saved.lse = saved.arena.alloc({n}, DType::f32);
  logprobs_forward(logps, saved.lse, logit_sums, hidden, weights_.lm_head, saved.labels, saved.arena);
  saved.ready_for_backward = options.save_for_backward;
  return {to_host_f32(logps), to_host_f32(logit_sums)};
}

std::vector<float> Transformer::logits(const TokenSpans& batch, bool adapters_enabled) {
  ForwardOptions options;
  options.adapters_enabled = adapters_enabled;
  upload_batch(batch);
  Tensor hidden = run_layers(options);
  Tensor logits = saved_->arena.alloc({hidden.dim(0), config_.vocab_size}, DType::f32);
  matmul(logits, hidden, weights_.lm_head, false, true);
  return to_host_f32(logits);
}

std::vector<float> Transformer::decode(std::span<const DecodePiece> pieces, KvCache& cache, bool adapters_enabled) {
  CST_CHECK(!pieces.empty(), "decode needs at least one piece");
  std::vector<int32_t> tokens, positions, cu_seqlens = {0};
  std::vector<int32_t> rows_then_last;  // each token's cache row, then each piece's last token
  std::vector<int64_t> lengths = cache.lengths;
  std::vector<bool> decoded(cache.lengths.size(), false);
  bool prefill = true;
  for (const DecodePiece& piece : pieces) {
    CST_CHECK(piece.sequence >= 0 && size_t(piece.sequence) < cache.lengths.size() && !decoded[size_t(piece.sequence)],
              "decode: sequence ", piece.sequence, " is not in the cache or appears twice");
    CST_CHECK(!piece.tokens.empty(), "decode: the piece of sequence ", piece.sequence, " has no tokens");
    decoded[size_t(piece.sequence)] = true;
    int64_t& length = lengths[size_t(piece.sequence)];
    if (length + int64_t(piece.tokens.size()) > cache.capacity)
      fail("generation exceeds the KV cache of ", cache.capacity, " tokens per sequence");
    prefill = prefill && length == 0;
    for (int32_t token : piece.tokens) {
      tokens.push_back(token);
      positions.push_back(int32_t(length));
      rows_then_last.push_back(int32_t(piece.sequence * cache.capacity + length));
      ++length;
    }
    cu_seqlens.push_back(int32_t(tokens.size()));
  }
  for (size_t piece = 0; piece < pieces.size(); ++piece) rows_then_last.push_back(cu_seqlens[piece + 1] - 1);
  const std::vector<int32_t> labels(tokens.size(), -1);
  const int64_t n = int64_t(tokens.size()), count = int64_t(pieces.size());
  Tensor uploaded = upload_batch({tokens, positions, labels, cu_seqlens}, rows_then_last);
  ForwardOptions options;
  options.adapters_enabled = adapters_enabled;
  const CacheUpdate update{&cache, uploaded.rows(0, n), prefill};
  Tensor hidden = run_layers(options, &update);
  cache.lengths = lengths;
  Tensor last_hidden = saved_->arena.alloc({count, config_.hidden_size}, hidden.dtype);
  embedding_forward(last_hidden, uploaded.rows(n, n + count), hidden);  // gathers the pieces' last rows
  Tensor logits = saved_->arena.alloc({count, config_.vocab_size}, DType::f32);
  matmul(logits, last_hidden, weights_.lm_head, false, true);
  return to_host_f32(logits);
}

std::vector<float> Transformer::decode(std::span<const int32_t> tokens, KvCache& cache, bool adapters_enabled) {
  const DecodePiece piece{0, tokens};
  return decode(std::span<const DecodePiece>(&piece, 1), cache, adapters_enabled);
}

void Transformer::backward(const std::vector<float>& dlogps) {
  Saved& saved = *saved_;
  CST_CHECK(saved.ready_for_backward, "backward() needs a forward() with save_for_backward");
  saved.ready_for_backward = false;
  Arena& arena = saved.arena;
  const ForwardOptions& options = saved.options;
  const DType dtype = weights_.dtype();
  const int64_t n = saved.final_hidden.dim(0);
  CST_CHECK(int64_t(dlogps.size()) == n, "dlogps has ", dlogps.size(), " entries for ", n, " tokens");
  const int64_t C = config_.hidden_size, F = config_.intermediate_size, D = config_.head_dim;
  const int64_t H = config_.num_heads, KVH = config_.num_kv_heads;
  const AttentionShape shape = attention_shape(config_);

  // LM head and final norm: d(final hidden) -> d(residual stream).
  Tensor dlogps_device = arena.alloc({n}, DType::f32);
  copy_tensor(dlogps_device, make_view(const_cast<float*>(dlogps.data()), {n}, DType::f32, Device::cpu));
  Tensor dhidden = arena.alloc({n, C}, dtype);
  logprobs_backward(dhidden, dlogps_device, saved.final_hidden, weights_.lm_head, saved.labels,
                    saved.lse, arena);
  Tensor dresidual = arena.alloc({n, C}, dtype);
  rmsnorm_backward(dresidual, Tensor{}, dhidden, saved.final_input, weights_.final_norm, saved.final_rstd);

  // Scratch reused by every layer.
  Tensor dnorm = arena.alloc({n, C}, dtype), dnorm_input = arena.alloc({n, C}, dtype);
  Tensor dact = arena.alloc({n, F}, dtype), dgate = arena.alloc({n, F}, dtype), dup = arena.alloc({n, F}, dtype);
  Tensor dattention = arena.alloc({n, H, D}, dtype), dq = arena.alloc({n, H, D}, dtype);
  Tensor dk = arena.alloc({n, KVH, D}, dtype), dv = arena.alloc({n, KVH, D}, dtype);

  for (int layer = config_.num_layers - 1; layer >= 0; --layer) {
    NvtxRange range("layer " + std::to_string(layer) + " backward");
    const LayerWeights& w = weights_.layers[layer];
    Arena& scratch = options.recompute_activations ? saved.layer_scratch : arena;
    LayerActivations a = saved.layers[layer];
    if (options.recompute_activations) {  // rerun the layer's forward from its saved input
      scratch.reset();
      a = layer_forward(layer, a.x, scratch.alloc({n, C}, dtype), options, nullptr, scratch);
    }
    auto linear = [&](Projection p) { return projection_layer(weights_, lora_, layer, p, options); };
    auto group = [&](InputGroup g) { return input_group_layers(weights_, lora_, layer, g, options); };
    // MLP block: out = h + down(swiglu(gate(n2), up(n2))).
    lora_linear_backward(dact, false, dresidual, a.act, a.lora_u_down, linear(Projection::down), scratch);
    swiglu_backward(dgate, dup, dact, a.gate, a.up);
    const Tensor dgate_up[] = {dgate, dup};
    lora_group_backward(dnorm, dgate_up, a.n2, a.lora_groups[int(InputGroup::mlp)], group(InputGroup::mlp), scratch);
    rmsnorm_backward(dnorm_input, Tensor{}, dnorm, a.h, w.post_attention_norm, a.rstd2);
    add_inplace(dresidual, dnorm_input);  // now d(h)
    // Attention block: h = x + o(attention(rope(q(n1)), rope(k(n1)), v(n1))).
    lora_linear_backward(dattention.reshaped({n, H * D}), false, dresidual,
                         a.attention.reshaped({n, H * D}), a.lora_u_o, linear(Projection::o), scratch);
    attention_backward(dq, dk, dv, dattention, a.q, a.k, a.v, a.attention, a.lse, saved.cu_seqlens, shape,
                       options.attention_backward);
    rope_backward(dq, saved.positions, saved.rope_inverse_frequencies);
    rope_backward(dk, saved.positions, saved.rope_inverse_frequencies);
    const Tensor dqkv[] = {dq.reshaped({n, H * D}), dk.reshaped({n, KVH * D}), dv.reshaped({n, KVH * D})};
    lora_group_backward(dnorm, dqkv, a.n1, a.lora_groups[int(InputGroup::attention)], group(InputGroup::attention), scratch);
    rmsnorm_backward(dnorm_input, Tensor{}, dnorm, a.x, w.input_norm, a.rstd1);
    add_inplace(dresidual, dnorm_input);  // now d(x), the previous layer's output gradient
  }
  // The embedding is frozen: the gradient stops here.
}

}  // namespace cst
