// RMSNorm over the last dimension (C), as in Llama/Mistral.
//
// forward:   r = 1 / sqrt(mean_c(x_c^2) + eps)        (saved per row for backward)
//            y_c = w_c * (x_c * r)
// backward:  with n_c = x_c * r and g_c = dy_c * w_c,
//            dx_c = r * (g_c - n_c * mean_c(g_c * n_c))
//            dw_c = sum over rows of dy_c * n_c            (only when the weight trains)
// The mean(g*n) term is the derivative through r: d r / d x_c = -r^3 x_c / C.
#pragma once
#include "kernels/tensor.h"

namespace cst {

// out, x (N, C); weight (C); rstd (N) f32.
void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps);
// dx (N, C) is overwritten; dweight (C) is accumulated into, or skipped when empty.
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd);

namespace cuda {
void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd);
}

}  // namespace cst
