// CPU reference of matmul: OpenBLAS sgemm on row-major f32 matrices, split over OpenMP threads.
//
// The CPU backend runs every op on one pool of threads, OpenMP's. The OpenBLAS that Debian ships
// starts a pthread pool of its own, and the two pools' spinning threads fight over the cores: an
// elementwise op right after a GEMM could wait a scheduler tick (milliseconds) for its second
// core. So OpenBLAS is kept on one thread, and matmul hands each OpenMP thread one block of the
// output, computed by one single-threaded sgemm. Ops that run small GEMMs inside their own
// parallel loops (attention) call sgemm on the calling thread the same way.
#include "kernels/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <mutex>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

namespace {

// Below this many multiply-adds a second thread costs more to wake than it saves.
constexpr int64_t kMinParallelMultiplyAdds = int64_t(1) << 18;
// A one-row product (sgemv) reads each weight once: its time is the matrix's memory traffic, and
// one core's share of the memory bandwidth is the limit. From a 128 KiB matrix (about 10 us on one
// core) up, splitting it over the threads pays.
constexpr int64_t kMinParallelMatrixVectorMultiplyAdds = int64_t(1) << 15;
// Blocks start at multiples of this, so each thread's sgemm runs whole register tiles.
constexpr int64_t kBlockAlignment = 16;

// out (rows, cols) = alpha * op(a) op(b) + beta * out, row-major with leading dimensions.
struct Sgemm {
  bool transpose_a = false, transpose_b = false;
  int64_t rows = 0, cols = 0, inner = 0;
  float alpha = 1.0f, beta = 0.0f;
  const float* a = nullptr;
  const float* b = nullptr;
  float* out = nullptr;
  int64_t a_stride = 0, b_stride = 0, out_stride = 0;
};

// One output row (a decoding step's one token) is a matrix-vector product. sgemm would pack the
// whole of op(b) into its tile layout first, which for one row costs more than the product.
void run_on_this_thread(const Sgemm& g) {
  if (g.rows == 1) {
    // out row = alpha * (row of op(a)) op(b) + beta * out row, i.e. op(b)^T times that row.
    const int a_increment = g.transpose_a ? int(g.a_stride) : 1;  // op(a)'s row: a column of a^T
    if (g.transpose_b)  // op(b) = B^T with B (cols, inner): out = B x
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(g.cols), int(g.inner), g.alpha, g.b, int(g.b_stride), g.a,
                  a_increment, g.beta, g.out, 1);
    else  // op(b) = B (inner, cols): out = B^T x
      cblas_sgemv(CblasRowMajor, CblasTrans, int(g.inner), int(g.cols), g.alpha, g.b, int(g.b_stride), g.a,
                  a_increment, g.beta, g.out, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, g.transpose_a ? CblasTrans : CblasNoTrans,
              g.transpose_b ? CblasTrans : CblasNoTrans, int(g.rows), int(g.cols), int(g.inner),
              g.alpha, g.a, int(g.a_stride), g.b, int(g.b_stride), g.beta, g.out,
              int(g.out_stride));
}

// The part of g that writes out[row_begin:row_end, col_begin:col_end]: the same product on
// rows of op(a) and columns of op(b) (a transposed matrix's rows are its stored columns).
Sgemm output_block(const Sgemm& g, int64_t row_begin, int64_t row_end, int64_t col_begin,
                   int64_t col_end) {
  Sgemm block = g;
  block.rows = row_end - row_begin;
  block.cols = col_end - col_begin;
  block.a = g.a + (g.transpose_a ? row_begin : row_begin * g.a_stride);
  block.b = g.b + (g.transpose_b ? col_begin * g.b_stride : col_begin);
  block.out = g.out + row_begin * g.out_stride + col_begin;
  return block;
}

// Splits the longer side of the output into one aligned block per thread.
void run_parallel(const Sgemm& g) {
  int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  bool split_rows = g.rows >= g.cols;
  int64_t extent = split_rows ? g.rows : g.cols;
  int64_t blocks = std::min<int64_t>(threads, (extent + kBlockAlignment - 1) / kBlockAlignment);
  const int64_t min_multiply_adds = g.rows == 1 ? kMinParallelMatrixVectorMultiplyAdds : kMinParallelMultiplyAdds;
  if (blocks <= 1 || g.rows * g.cols * g.inner < min_multiply_adds)
    return run_on_this_thread(g);
  auto boundary = [&](int64_t block) {
    if (block == blocks) return extent;
    return extent * block / blocks / kBlockAlignment * kBlockAlignment;
  };
#pragma omp parallel for num_threads(int(blocks))
  for (int64_t block = 0; block < blocks; ++block) {
    int64_t begin = boundary(block), end = boundary(block + 1);
    run_on_this_thread(split_rows ? output_block(g, begin, end, 0, g.cols)
                                  : output_block(g, 0, g.rows, begin, end));
  }
}

void keep_openblas_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

}  // namespace

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
  keep_openblas_single_threaded();
  Sgemm g;
  g.transpose_a = transpose_a;
  g.transpose_b = transpose_b;
  g.rows = rows;
  g.cols = cols;
  g.inner = inner;
  g.alpha = alpha;
  g.beta = beta;
  g.a = a.f32();
  g.b = b.f32();
  g.out = out.f32();
  g.a_stride = a.shape[1];
  g.b_stride = b.shape[1];
  g.out_stride = out.shape[1];
  run_parallel(g);
}

std::string blas_kernel_hint() {
  const std::string core = openblas_get_corename();
  if (core != "Haswell" || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("avx512vl"))
    return "";
  return "note: OpenBLAS runs its AVX2 (Haswell) kernels on this AVX-512 CPU; OPENBLAS_CORETYPE=SkylakeX "
         "makes its GEMMs up to 2x faster (docs/benchmarks.md)";
}

}  // namespace cst
