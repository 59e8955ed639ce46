// CUDA matmul through cuBLASLt: bf16 x bf16 -> bf16 or f32, and f32 x f32 -> f32, always with f32
// accumulation.
//
// cuBLASLt is column-major; our tensors are row-major. A row-major (r, c) matrix is the same
// memory as a column-major (c, r) matrix, i.e. its transpose. So
//   out = op(a) @ op(b)   (row-major)   <=>   out^T = op(b)^T @ op(a)^T   (column-major)
// and we ask cuBLASLt for the right-hand side: its "A" is our b, its "B" is our a, and each
// operand's transpose flag stays attached to it.
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <utility>

#include "kernels/cuda_blas.cuh"
#include "kernels/cuda_utils.cuh"
#include "kernels/device.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"

namespace cst::cuda {

void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail(file, ":", line, ": ", call, " failed: ", cublasGetStatusString(status), " (status ",
         int(status), ")");
}

namespace {

// 32 MiB is what cuBLAS recommends for Hopper; the fastest kernels need split-K scratch.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

struct Library {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

// One handle and one workspace for the whole process, made on first use. Every matmul runs on
// the backend's single stream, so sharing the workspace is safe.
const Library& library() {
  static Library the_library = [] {
    Library made;
    CUBLAS_CHECK(cublasLtCreate(&made.handle));
    made.workspace = allocate(kWorkspaceBytes);
    return made;
  }();
  return the_library;
}

cudaDataType_t blas_type(DType dtype) { return dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

// Largest power of two (up to 256) dividing the address: cuBLASLt picks kernels by alignment.
uint32_t alignment_bytes(const void* pointer) {
  uint32_t alignment = 256;
  while (alignment > 1 && reinterpret_cast<uintptr_t>(pointer) % alignment != 0) alignment /= 2;
  return alignment;
}

// Everything the chosen algorithm depends on.
struct MatmulKey {
  int64_t rows, cols, inner;
  bool transpose_a, transpose_b;
  DType input_dtype, output_dtype;
  uint32_t align_a, align_b, align_out;
  auto tied() const {
    return std::tie(rows, cols, inner, transpose_a, transpose_b, input_dtype, output_dtype, align_a,
                    align_b, align_out);
  }
  bool operator<(const MatmulKey& other) const { return tied() < other.tied(); }
};

// Owners of cuBLASLt objects: each destroys its object, also when a plan's construction throws
// half-way (a constructor that throws runs the destructors of the members already made).
template <auto destroy>
struct DestroyWith {
  template <class Object>
  void operator()(Object* object) const {
    destroy(object);
  }
};
using MatmulDesc =
    std::unique_ptr<cublasLtMatmulDescOpaque_t, DestroyWith<cublasLtMatmulDescDestroy>>;
using MatrixLayout =
    std::unique_ptr<cublasLtMatrixLayoutOpaque_t, DestroyWith<cublasLtMatrixLayoutDestroy>>;
using MatmulPreference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t,
                                         DestroyWith<cublasLtMatmulPreferenceDestroy>>;

// Descriptors and the heuristic's algorithm for one key, made once and reused: creating them and
// querying the heuristic costs more than a small GEMM.
struct MatmulPlan {
  MatmulDesc operation;
  MatrixLayout layout_a, layout_b, layout_out;
  cublasLtMatmulAlgo_t algorithm{};

  explicit MatmulPlan(const MatmulKey& key);
};

// Column-major layout of a row-major (rows, cols) matrix: (cols, rows) with leading dim cols.
MatrixLayout row_major_layout(DType dtype, int64_t rows, int64_t cols) {
  cublasLtMatrixLayout_t layout = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, blas_type(dtype), uint64_t(cols), uint64_t(rows),
                                          cols));
  return MatrixLayout(layout);
}

// f32 accumulation and f32 alpha, beta; the transposes of cuBLASLt's A and B.
MatmulDesc matmul_desc(cublasOperation_t transpose_lt_a, cublasOperation_t transpose_lt_b) {
  cublasLtMatmulDesc_t made = nullptr;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&made, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  MatmulDesc operation(made);
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(made, CUBLASLT_MATMUL_DESC_TRANSA, &transpose_lt_a,
                                              sizeof(transpose_lt_a)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(made, CUBLASLT_MATMUL_DESC_TRANSB, &transpose_lt_b,
                                              sizeof(transpose_lt_b)));
  return operation;
}

// What the heuristic may assume: the workspace we pass and the operands' alignments.
MatmulPreference matmul_preference(uint32_t align_lt_a, uint32_t align_lt_b, uint32_t align_out) {
  cublasLtMatmulPreference_t made = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&made));
  MatmulPreference preference(made);
  auto set = [&](cublasLtMatmulPreferenceAttributes_t attribute, const auto& value) {
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(made, attribute, &value, sizeof(value)));
  };
  set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes));
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_lt_a);
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_lt_b);
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_out);
  set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_out);
  return preference;
}

MatmulPlan::MatmulPlan(const MatmulKey& key) {
  // cuBLASLt's A is our b and its B is our a (see the top of the file).
  operation = matmul_desc(key.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                          key.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  // Stored shapes (row-major) of b (K, N) or (N, K), of a (M, K) or (K, M), and of out (M, N).
  int64_t b_rows = key.transpose_b ? key.cols : key.inner;
  int64_t b_cols = key.transpose_b ? key.inner : key.cols;
  int64_t a_rows = key.transpose_a ? key.inner : key.rows;
  int64_t a_cols = key.transpose_a ? key.rows : key.inner;
  layout_a = row_major_layout(key.input_dtype, b_rows, b_cols);
  layout_b = row_major_layout(key.input_dtype, a_rows, a_cols);
  layout_out = row_major_layout(key.output_dtype, key.rows, key.cols);

  MatmulPreference preference = matmul_preference(key.align_b, key.align_a, key.align_out);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      library().handle, operation.get(), layout_a.get(), layout_b.get(), layout_out.get(),
      layout_out.get(), preference.get(), 1, &result, &found);
  // No algorithm fitting the shapes, types and alignments is answered with "not supported".
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) found = 0;
  else check_cublas(status, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  if (found == 0)
    fail("matmul: cuBLASLt has no algorithm for out (", key.rows, ", ", key.cols, ") ",
         dtype_name(key.output_dtype), " = ", key.transpose_a ? "a^T" : "a", " @ ",
         key.transpose_b ? "b^T" : "b", " with inner dimension ", key.inner, " in ",
         dtype_name(key.input_dtype));
  algorithm = result.algo;
}

// The plans of the most recently used keys. Each token count gets its own plans, a few dozen
// (every projection's base and LoRA products, forward and backward, and the LM head's chunks),
// and packed training batches and shrinking generation batches bring many token counts, so an
// unbounded cache would grow for the whole run. 1024 plans hold a step's working set many times
// over, for some twenty token counts, in about a megabyte of host memory (a plan is four small
// descriptors); a miss costs one heuristic query, far less than the step that needed it.
class PlanCache {
 public:
  static constexpr size_t kCapacity = 1024;

  // Shared, so that a plan evicted by another thread's call stays alive while it is used.
  std::shared_ptr<const MatmulPlan> plan_for(const MatmulKey& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = index_.find(key);
    if (found != index_.end()) {
      recent_.splice(recent_.begin(), recent_, found->second);
      return found->second->second;
    }
    // A plan that throws (no algorithm) leaves the cache as it was.
    auto plan = std::make_shared<const MatmulPlan>(key);
    recent_.emplace_front(key, plan);
    index_.emplace(key, recent_.begin());
    if (recent_.size() > kCapacity) {
      index_.erase(recent_.back().first);
      recent_.pop_back();
    }
    return plan;
  }

 private:
  using Entry = std::pair<MatmulKey, std::shared_ptr<const MatmulPlan>>;
  std::mutex mutex_;
  std::list<Entry> recent_;  // most recently used first
  std::map<MatmulKey, std::list<Entry>::iterator> index_;
};

std::shared_ptr<const MatmulPlan> plan_for(const MatmulKey& key) {
  static PlanCache cache;
  return cache.plan_for(key);
}

void check_matmul_dtypes(const Tensor& out, const Tensor& a, const Tensor& b) {
  const char* op = "matmul";
  if (a.dtype != b.dtype)
    fail(op, ": a and b must have the same dtype (bf16 x bf16 or f32 x f32), got a ", a.describe(),
         " and b ", b.describe());
  if (a.dtype != DType::bf16 && a.dtype != DType::f32)
    fail(op, ": inputs must be bf16 or f32, got a ", a.describe());
  if (out.dtype != DType::f32 && !(out.dtype == DType::bf16 && a.dtype == DType::bf16))
    fail(op, ": out must be f32, or bf16 for bf16 inputs; got out ", out.describe(), " for a ",
         a.describe());
}

}  // namespace

void matmul(const Tensor& out, const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b,
            float alpha, float beta) {
  const char* op = "matmul";
  check_rank(out, 2, op, "out");
  check_rank(a, 2, op, "a");
  check_rank(b, 2, op, "b");
  check_matmul_dtypes(out, a, b);
  for (const Tensor* t : {&out, &a, &b}) check_on_gpu(*t, op, "every argument");
  int64_t rows = out.shape[0], cols = out.shape[1];
  int64_t inner = transpose_a ? a.shape[0] : a.shape[1];
  CST_CHECK((transpose_a ? a.shape[1] : a.shape[0]) == rows &&
                (transpose_b ? b.shape[1] : b.shape[0]) == inner &&
                (transpose_b ? b.shape[0] : b.shape[1]) == cols,
            "matmul shapes: out ", out.describe(), " a ", a.describe(), " b ", b.describe());
  if (rows == 0 || cols == 0) return;
  // An empty sum: out = beta * out (cuBLASLt rejects k = 0).
  if (inner == 0) {
    if (beta == 0.0f) fill_zero(out);
    else cuda::scale_inplace(out, beta);
    return;
  }

  MatmulKey key{rows,    cols,      inner,    transpose_a,          transpose_b,
                a.dtype, out.dtype, alignment_bytes(a.data), alignment_bytes(b.data),
                alignment_bytes(out.data)};
  std::shared_ptr<const MatmulPlan> plan = plan_for(key);
  const Library& blas = library();
  CUBLAS_CHECK(cublasLtMatmul(blas.handle, plan->operation.get(), &alpha, b.data,
                              plan->layout_a.get(), a.data, plan->layout_b.get(), &beta, out.data,
                              plan->layout_out.get(), out.data, plan->layout_out.get(),
                              &plan->algorithm, blas.workspace, kWorkspaceBytes, stream()));
}

}  // namespace cst::cuda
