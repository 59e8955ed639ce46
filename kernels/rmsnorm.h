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
// How the kernels spread rows of the model widths (2048 to 8192 channels, in 16-byte chunks)
// over the GPU; other rows always run one warp per row. kernel_bench times each, so the default
// is the one measured fastest:
//   resident_blocks  256-thread blocks, as many as the GPU holds at once, each walking rows
//                    blockIdx.x, + gridDim.x, ... with the loads of a row started two rows ahead
//   block_per_row    the same kernels, one block per row
//   warp_per_row     one warp per row; the forward holds a row of up to 4096 bf16 (2048 f32)
//                    channels in registers, wider rows and the backward read it twice
enum class RmsNormRows { resident_blocks, block_per_row, warp_per_row };
constexpr RmsNormRows kRmsNormRowChoices[] = {RmsNormRows::resident_blocks,
                                              RmsNormRows::block_per_row,
                                              RmsNormRows::warp_per_row};
constexpr RmsNormRows kDefaultRmsNormRows = RmsNormRows::resident_blocks;
const char* rmsnorm_rows_name(RmsNormRows spread);

void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps, RmsNormRows spread = kDefaultRmsNormRows);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd,
                      RmsNormRows spread = kDefaultRmsNormRows);
}

}  // namespace cst
