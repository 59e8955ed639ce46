// GEMM: the matrix products of every linear layer.
//
//   out(M, N) = alpha * op(a) @ op(b) + beta * out,   op(x) = x or x^T
//
// A linear layer with weight W [out_features, in_features] (the HF layout) is
//   forward   y  = x @ W^T                 matmul(y, x, W, false, true)
//   backward  dx = dy @ W                  matmul(dx, dy, W, false, false)
//             dW = dy^T @ x                matmul(dW, dy, x, true, false)   (never for frozen W)
// CPU: OpenBLAS sgemm (f32). CUDA: cuBLASLt, bf16 inputs with f32 accumulation.
#pragma once
#include <string>

#include "kernels/tensor.h"

namespace cst {

void matmul(const Tensor& out, const Tensor& a, const Tensor& b, bool transpose_a,
            bool transpose_b, float alpha = 1.0f, float beta = 0.0f);

// On a CPU with AVX-512 where OpenBLAS runs its AVX2 (Haswell) kernels, as Debian's OpenBLAS
// 0.3.21 does on AMD Zen 4 and 5, a one-line hint to set OPENBLAS_CORETYPE=SkylakeX (read by
// OpenBLAS when it loads, so cst cannot set it itself); otherwise empty.
std::string blas_kernel_hint();

namespace cuda {
void matmul(const Tensor& out, const Tensor& a, const Tensor& b, bool transpose_a,
            bool transpose_b, float alpha, float beta);
}

}  // namespace cst
