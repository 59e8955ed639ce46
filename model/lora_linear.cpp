#include "model/lora_linear.h"

#include "kernels/elementwise.h"
#include "kernels/gemm.h"

namespace cst {

// dropout(x), or x itself when there is no dropout.
static Tensor dropped_input(const Tensor& x, const LoraLinear& layer, Arena& arena) {
  if (layer.dropout <= 0.0f) return x;
  Tensor dropped = arena.alloc({x.dim(0), x.dim(1)}, x.dtype);
  dropout(dropped, x, layer.dropout, layer.dropout_seed, layer.dropout_stream);
  return dropped;
}

Tensor lora_linear_forward(const Tensor& y, const Tensor& x, const LoraLinear& layer, Arena& arena) {
  matmul(y, x, layer.weight, false, true);  // (N, out) = (N, in) (out, in)^T
  if (!layer.lora) return {};
  const LoraPair& lora = *layer.lora;
  const int64_t tokens = x.dim(0), rank = lora.compute_a.dim(0);
  Tensor u = arena.alloc({tokens, rank}, x.dtype);
  matmul(u, dropped_input(x, layer, arena), lora.compute_a, false, true);  // (N, r)
  matmul(y, u, lora.compute_b, false, true, layer.scaling, 1.0f);           // y += s u B^T
  return u;
}

void lora_linear_backward(const Tensor& dx, bool accumulate, const Tensor& dy, const Tensor& x,
                          const Tensor& u, const LoraLinear& layer, Arena& arena) {
  matmul(dx, dy, layer.weight, false, false, 1.0f, accumulate ? 1.0f : 0.0f);  // dx (+)= dy W
  if (!layer.lora) return;
  const LoraPair& lora = *layer.lora;
  const int64_t tokens = x.dim(0), rank = lora.compute_a.dim(0);
  // dB += s dy^T u   (out, r)
  matmul(lora.grad_b, dy, u, true, false, layer.scaling, 1.0f);
  // du = s dy B      (N, r)
  Tensor du = arena.alloc({tokens, rank}, dy.dtype);
  matmul(du, dy, lora.compute_b, false, false, layer.scaling, 0.0f);
  // dA += du^T dropout(x)   (r, in)
  matmul(lora.grad_a, du, dropped_input(x, layer, arena), true, false, 1.0f, 1.0f);
  // dx += dropout'(du A): the same mask and 1/(1-p) scale as the forward.
  if (layer.dropout <= 0.0f) {
    matmul(dx, du, lora.compute_a, false, false, 1.0f, 1.0f);
  } else {
    Tensor dx_lora = arena.alloc({tokens, x.dim(1)}, dx.dtype);
    matmul(dx_lora, du, lora.compute_a, false, false);
    dropout(dx_lora, dx_lora, layer.dropout, layer.dropout_seed, layer.dropout_stream);
    add_inplace(dx, dx_lora);
  }
}

}  // namespace cst
