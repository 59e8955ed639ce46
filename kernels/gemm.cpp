// CPU reference of matmul: one OpenBLAS sgemm on row-major f32 matrices.
#include "kernels/gemm.h"

#include <cblas.h>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

void matmul(const Tensor& out, const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b,
            float alpha, float beta) {
  const char* op = "matmul";
  Device device = common_device(op, out, a, b);
  check_rank(out, 2, op, "out");
  check_rank(a, 2, op, "a");
  check_rank(b, 2, op, "b");
  // op(a) is (M, K) and op(b) is (K, N).
  int64_t rows = out.shape[0], cols = out.shape[1];
  int64_t inner = transpose_a ? a.shape[0] : a.shape[1];
  int64_t a_rows = transpose_a ? a.shape[1] : a.shape[0];
  int64_t b_inner = transpose_b ? b.shape[1] : b.shape[0];
  int64_t b_cols = transpose_b ? b.shape[0] : b.shape[1];
  if (a_rows != rows || b_cols != cols || b_inner != inner)
    fail(op, ": shapes do not chain: out ", out.describe(), " = ", transpose_a ? "a^T" : "a", " ",
         a.describe(), " @ ", transpose_b ? "b^T" : "b", " ", b.describe());
  if (device == Device::cuda)
    return CST_ON_CUDA(cuda::matmul(out, a, b, transpose_a, transpose_b, alpha, beta));

  check_f32(op, {{&out, "out"}, {&a, "a"}, {&b, "b"}});
  if (rows == 0 || cols == 0) return;
  // sgemm does not scale the output when the inner dimension is empty; the contract does.
  if (inner == 0) {
    float* out_data = out.f32();
    for (int64_t i = 0; i < rows * cols; ++i)
      out_data[i] = beta == 0.0f ? 0.0f : beta * out_data[i];
    return;
  }
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans,
              transpose_b ? CblasTrans : CblasNoTrans, int(rows), int(cols), int(inner), alpha,
              a.f32(), int(a.shape[1]), b.f32(), int(b.shape[1]), beta, out.f32(),
              int(out.shape[1]));
}

}  // namespace cst
