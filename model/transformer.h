// The Llama/Mistral decoder, forward and backward, written once against the op interface
// (kernels/*.h): the same code runs on the CPU reference backend and on CUDA.
//
// Per layer (x is the residual stream, (N, C) for N tokens):
//   n1 = rmsnorm(x) * w1
//   q, k, v = n1 Wq^T, n1 Wk^T, n1 Wv^T   (+ LoRA), rope on q and k
//   a = attention(q, k, v)                  causal, GQA, sliding window, packed sequences
//   h = x + a Wo^T                          (+ LoRA)
//   n2 = rmsnorm(h) * w2
//   x' = h + (silu(n2 Wg^T) * (n2 Wu^T)) Wd^T      (each + LoRA)
// then the final norm and the fused LM head + log-softmax at the labels (kernels/logprobs.h).
//
// Backward walks the layers in reverse and produces LoRA gradients and input gradients only:
// the base model is frozen, so no gradient of a base matrix is ever computed.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kernels/attention.h"
#include "kernels/tensor.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/weights.h"

namespace cst {

// A batch of token sequences laid end to end (packed; padding is just more tokens).
struct TokenSpans {
  std::span<const int32_t> tokens;      // N
  std::span<const int32_t> positions;   // N, position within its sequence (RoPE)
  std::span<const int32_t> labels;      // N, the token to score at each position, or -1
  std::span<const int32_t> cu_seqlens;  // S + 1 sequence offsets into tokens
};

struct ForwardOptions {
  bool adapters_enabled = true;   // false: the base model (DPO's reference) from the same weights
  bool save_for_backward = false;
  uint64_t dropout_seed = 0;      // LoRA dropout masks are a function of (seed, layer, projection)
  // Activation checkpointing: keep only each layer's input and recompute the rest in backward
  // (one extra forward of the layers, in exchange for one layer's activations instead of all).
  bool recompute_activations = false;
  // How the CUDA attention backward forms dq (kernels/attention.h).
  AttentionBackward attention_backward = kDefaultAttentionBackward;
};

struct TokenLogps {
  std::vector<float> logps;       // N: log p(label | prefix), 0 where label < 0
  std::vector<float> logit_sums;  // N: sum of raw logits over the vocabulary, 0 where label < 0
};

// Keys and values of every layer for sequences decoded together (incremental decoding). Sequence
// s owns rows [s * capacity, (s + 1) * capacity) of each layer's (sequences * capacity, KVH, D)
// tensors: its key for position p is row s * capacity + p.
struct KvCache {
  KvCache(const ModelConfig& config, Device device, DType dtype, int64_t sequences, int64_t capacity);
  int64_t capacity = 0;                   // tokens per sequence
  std::vector<int64_t> lengths;           // tokens cached, per sequence
  std::vector<OwnedTensor> keys, values;  // per layer, after RoPE
};

// New tokens of one sequence of a KvCache, to run after the tokens it has cached.
struct DecodePiece {
  int64_t sequence = 0;
  std::span<const int32_t> tokens;
};

struct LayerActivations;

class Transformer {
 public:
  // lora may be null (no adapter). The weights and adapter must outlive the transformer.
  Transformer(const ModelConfig& config, const ModelWeights& weights, LoraAdapter* lora);
  ~Transformer();

  TokenLogps forward(const TokenSpans& batch, const ForwardOptions& options);
  // After forward(save_for_backward = true): accumulates LoRA gradients for the loss whose
  // derivative with respect to each token's log-prob is dlogps (N).
  void backward(const std::vector<float>& dlogps);

  // Full logits (N, V) in f32 on the host, for tests.
  std::vector<float> logits(const TokenSpans& batch, bool adapters_enabled);

  // Incremental decoding: runs each piece's tokens after the tokens its sequence has cached,
  // appends their keys and values to the cache and returns the logits (pieces, V), row-major, of
  // each piece's last token. A sequence appears in one piece at most. When every piece starts its
  // sequence (a prefill), attention runs the training kernel over the pieces as packed sequences;
  // otherwise the decoding kernel reads the cache.
  std::vector<float> decode(std::span<const DecodePiece> pieces, KvCache& cache, bool adapters_enabled);
  // One sequence, sequence 0 of the cache: the logits (V) of its last new token.
  std::vector<float> decode(std::span<const int32_t> tokens, KvCache& cache, bool adapters_enabled);

  const ModelConfig& config() const { return config_; }
  Device device() const { return weights_.device(); }
  DType weights_dtype() const { return weights_.dtype(); }
  size_t activation_bytes() const;

 private:
  struct Saved;
  struct CacheUpdate;
  LayerActivations layer_forward(int layer, const Tensor& x, const Tensor& out, const ForwardOptions& options,
                                 const CacheUpdate* update, Arena& arena);
  // Over the batch upload_batch put on the device.
  Tensor run_layers(const ForwardOptions& options, const CacheUpdate* update = nullptr);
  // Resets the arena and uploads the batch, and `extra` values (returned as a device tensor), in
  // one copy.
  Tensor upload_batch(const TokenSpans& batch, std::span<const int32_t> extra = {});

  ModelConfig config_;
  const ModelWeights& weights_;
  LoraAdapter* lora_;
  std::unique_ptr<Saved> saved_;
};

}  // namespace cst
