// A host model of the cuBLASLt functions kernels/gemm.cu calls, with the toolkit's own
// declarations (<cublasLt.h>), so gemm.cu runs unchanged on the CPU and its mapping of row-major
// tensors onto cuBLASLt's column-major operands (transposes, layouts, leading dimensions,
// alignments, workspace) is checked on every build. Nothing links libcublasLt.
//
// What is modelled, and from where: the cuBLAS Library documentation, "Using the cuBLASLt API",
// and the doc comments of cublasLt.h (CUDA 13.0), sections
//   cublasLtMatmul()  D = alpha * op(A) op(B) + beta * C, column-major. With m x n = D's rows x
//       cols: A is m x k for TRANSA = N and k x m otherwise, B is k x n for TRANSB = N and n x k
//       otherwise, C is m x n; Cdesc and Ddesc have the same type; C == D (in place) needs the
//       same layout. algo == NULL means an implicit heuristic query with default preferences.
//       The workspace must be 256-byte aligned and at least what the algorithm needs.
//       "Parameters in conflict or in an impossible configuration" give INVALID_VALUE.
//   Datatypes supported by cublasLtMatmul()  here only computeType CUBLAS_COMPUTE_32F with scale
//       type CUDA_R_32F, and A/B/C/D types bf16/bf16/bf16/bf16, bf16/bf16/f32/f32 or
//       f32/f32/f32/f32: the combinations gemm.cu needs; others are NOT_SUPPORTED.
//   cublasLtMatrixLayoutAttribute_t  CUBLASLT_ORDER_COL only, batch count 1, ld >= rows; rows
//       and cols above INT32_MAX are NOT_SUPPORTED ("usually only values that can be expressed
//       as int32_t are supported").
//   cublasLtMatmulDescAttributes_t  TRANSA, TRANSB (int32_t cublasOperation_t; OP_C is OP_T for
//       real data). Other attributes are NOT_SUPPORTED, so a caller using one learns the model
//       lacks it instead of getting a silently different product.
//   cublasLtMatmulPreferenceAttributes_t  MAX_WORKSPACE_BYTES (default 0) and
//       MIN_ALIGNMENT_{A,B,C,D}_BYTES (default 256), both taken as promises the chosen algorithm
//       relies on: cublasLtMatmul refuses operands less aligned than the preference said
//       (cublasLtMatmulAlgoCheck: an algorithm "will fail if e.g. buffers are not correctly
//       aligned").
//   cublasLtMatmulAlgoGetHeuristic()  INVALID_VALUE for requestedAlgoCount <= 0; the problem is
//       validated as cublasLtMatmul does; one algorithm is returned (returnAlgoCount = 1 whatever
//       was requested). It needs all the workspace the preference allows, the most a real
//       heuristic may choose, so a caller passing less to cublasLtMatmul than it promised is
//       caught. It is NOT_SUPPORTED (no algorithm) for unsupported types and for alignments below
//       an element's size.
//   Size and value attributes are checked as the header says: a wrong sizeInBytes or a NULL
//   buffer is INVALID_VALUE.
// Numerics: each dot product is summed in f32 in k order (products of bf16 values are exact in
// f32), then alpha * sum + beta * C in f32, rounded once to the output type (bf16: to nearest
// even). A GPU sums in another order and fuses multiply-adds, so its results differ from the
// model's in the low bits of the f32 sum. beta == 0 means C is not read: NaN in C does not reach
// D.
//
// Stricter than the documentation says, where it says nothing and gemm.cu never goes: dimensions
// of 0 are INVALID_VALUE; a D that overlaps A or B, or a C that overlaps D without being D, is
// INVALID_VALUE (the GPU would give undefined results); a descriptor that was destroyed or never
// created is INVALID_VALUE (the library would read freed memory), and so is destroying it twice.
// Destroying NULL does nothing, as free() does.
//
// Not modelled: speed, algorithm choice and its attributes, split-K and the reduction schemes,
// epilogues (bias, activations), batches, other memory orders, pointer modes other than host
// scalars, scale factors of narrow types, streams (everything runs synchronously when called;
// the stream argument is ignored).
#include <cublasLt.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <type_traits>
#include <vector>

#include "kernels/tensor.h"  // bf16_to_f32, f32_to_bf16 (round to nearest even)
#include "tests/emulation/cublaslt_model.h"

// The header declares the handle as a pointer to this struct and leaves it to the library.
struct cublasLtContext {};

namespace {

// ---- Which objects are alive ----

struct LiveObjects {
  std::mutex mutex;
  std::set<const void*> handles, matmul_descs, layouts, preferences;
};

// Never destroyed: callers destroy their objects from static destructors too (kernels/gemm.cu's
// plan cache at exit), which may run after this function's statics would have been destroyed.
LiveObjects& live_objects() {
  static LiveObjects* objects = new LiveObjects;
  return *objects;
}

using ObjectKind = std::set<const void*> LiveObjects::*;

void add_live(ObjectKind kind, const void* object) {
  LiveObjects& live = live_objects();
  std::lock_guard<std::mutex> lock(live.mutex);
  (live.*kind).insert(object);
}

bool is_live(ObjectKind kind, const void* object) {
  LiveObjects& live = live_objects();
  std::lock_guard<std::mutex> lock(live.mutex);
  return (live.*kind).count(object) == 1;
}

// False when the object was not alive (never created, or destroyed already).
bool remove_live(ObjectKind kind, const void* object) {
  LiveObjects& live = live_objects();
  std::lock_guard<std::mutex> lock(live.mutex);
  return (live.*kind).erase(object) == 1;
}

// Heuristic queries made: a test tells a caller's cached plan from a new one by them.
std::atomic<int64_t> heuristic_queries{0};

// ---- Descriptor state ----
// The header defines each descriptor as a fixed-size struct of uint64_t words that the library
// fills; the model keeps its state in those words, copied in and out.

struct LayoutState {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};

struct MatmulDescState {
  cublasComputeType_t compute_type;
  cudaDataType_t scale_type;
  int32_t transpose_a, transpose_b;  // cublasOperation_t, stored as the attribute's int32_t
};

enum Operand { kA, kB, kC, kD, kOperands };

struct PreferenceState {
  uint64_t max_workspace_bytes;
  uint32_t min_alignment_bytes[kOperands];
};

// What an algorithm from the heuristic promises to need. The tag, an arbitrary constant, tells
// one from a zeroed or garbage cublasLtMatmulAlgo_t.
constexpr uint64_t kAlgorithmTag = 0x4c744d6f64656c41;
struct AlgorithmState {
  uint64_t tag;
  uint64_t workspace_bytes;
  uint32_t min_alignment_bytes[kOperands];
};

template <class State, class Opaque>
State load_state(const Opaque& opaque) {
  static_assert(std::is_trivially_copyable_v<State> && sizeof(State) <= sizeof(Opaque));
  State state;
  std::memcpy(&state, &opaque, sizeof(state));
  return state;
}

template <class State, class Opaque>
void store_state(Opaque& opaque, const State& state) {
  static_assert(std::is_trivially_copyable_v<State> && sizeof(State) <= sizeof(Opaque));
  opaque = Opaque{};
  std::memcpy(&opaque, &state, sizeof(state));
}

template <class Opaque, class State>
cublasStatus_t create_object(ObjectKind kind, Opaque** made, const State& state) {
  if (made == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  Opaque* object = new Opaque{};
  store_state(*object, state);
  add_live(kind, object);
  *made = object;
  return CUBLAS_STATUS_SUCCESS;
}

template <class Opaque>
cublasStatus_t destroy_object(ObjectKind kind, Opaque* object) {
  if (object == nullptr) return CUBLAS_STATUS_SUCCESS;
  if (!remove_live(kind, object)) return CUBLAS_STATUS_INVALID_VALUE;
  delete object;
  return CUBLAS_STATUS_SUCCESS;
}

// An attribute value of exactly sizeof(Value) bytes, as the setters require.
template <class Value>
bool read_attribute(const void* buffer, size_t size_in_bytes, Value* value) {
  if (buffer == nullptr || size_in_bytes != sizeof(Value)) return false;
  std::memcpy(value, buffer, sizeof(Value));
  return true;
}

bool is_operation(int32_t operation) {
  return operation == CUBLAS_OP_N || operation == CUBLAS_OP_T || operation == CUBLAS_OP_C;
}

bool is_transposed(int32_t operation) { return operation != CUBLAS_OP_N; }

bool is_power_of_two(uint32_t value) { return value != 0 && (value & (value - 1)) == 0; }

size_t element_bytes(cudaDataType_t type) { return type == CUDA_R_16BF ? 2 : 4; }

// ---- The problem a matmul call describes ----

struct Problem {
  MatmulDescState operation;
  LayoutState layouts[kOperands];
  uint64_t m, n, k;
};

cublasStatus_t check_layout(const LayoutState& layout) {
  if (layout.rows == 0 || layout.cols == 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (layout.rows > INT32_MAX || layout.cols > INT32_MAX) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (layout.ld < int64_t(layout.rows)) return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;
}

bool types_supported(const Problem& problem) {
  const LayoutState* layouts = problem.layouts;
  if (problem.operation.compute_type != CUBLAS_COMPUTE_32F ||
      problem.operation.scale_type != CUDA_R_32F)
    return false;
  if (layouts[kA].type != layouts[kB].type || layouts[kC].type != layouts[kD].type) return false;
  cudaDataType_t input = layouts[kA].type, output = layouts[kD].type;
  if (input == CUDA_R_16BF) return output == CUDA_R_16BF || output == CUDA_R_32F;
  return input == CUDA_R_32F && output == CUDA_R_32F;
}

// m, n, k from D and A, then every layout's dimensions checked against them.
cublasStatus_t check_dimensions(Problem& problem) {
  const LayoutState* layouts = problem.layouts;
  bool transpose_a = is_transposed(problem.operation.transpose_a);
  bool transpose_b = is_transposed(problem.operation.transpose_b);
  problem.m = layouts[kD].rows;
  problem.n = layouts[kD].cols;
  problem.k = transpose_a ? layouts[kA].rows : layouts[kA].cols;
  uint64_t a_m = transpose_a ? layouts[kA].cols : layouts[kA].rows;
  uint64_t b_k = transpose_b ? layouts[kB].cols : layouts[kB].rows;
  uint64_t b_n = transpose_b ? layouts[kB].rows : layouts[kB].cols;
  bool conform = a_m == problem.m && b_k == problem.k && b_n == problem.n &&
                 layouts[kC].rows == problem.m && layouts[kC].cols == problem.n;
  return conform ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t describe_problem(cublasLtHandle_t handle, cublasLtMatmulDesc_t operation,
                                const cublasLtMatrixLayout_t (&layouts)[kOperands],
                                Problem* problem) {
  if (!is_live(&LiveObjects::handles, handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!is_live(&LiveObjects::matmul_descs, operation)) return CUBLAS_STATUS_INVALID_VALUE;
  problem->operation = load_state<MatmulDescState>(*operation);
  for (int operand = 0; operand < kOperands; ++operand) {
    if (!is_live(&LiveObjects::layouts, layouts[operand])) return CUBLAS_STATUS_INVALID_VALUE;
    problem->layouts[operand] = load_state<LayoutState>(*layouts[operand]);
    cublasStatus_t status = check_layout(problem->layouts[operand]);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
  }
  if (!types_supported(*problem)) return CUBLAS_STATUS_NOT_SUPPORTED;
  return check_dimensions(*problem);
}

// The heuristic's one algorithm for a valid problem, or NOT_SUPPORTED.
cublasStatus_t choose_algorithm(const Problem& problem, const PreferenceState& preference,
                                AlgorithmState* algorithm) {
  for (int operand = 0; operand < kOperands; ++operand)
    if (preference.min_alignment_bytes[operand] < element_bytes(problem.layouts[operand].type))
      return CUBLAS_STATUS_NOT_SUPPORTED;
  algorithm->tag = kAlgorithmTag;
  algorithm->workspace_bytes = preference.max_workspace_bytes;
  std::memcpy(algorithm->min_alignment_bytes, preference.min_alignment_bytes,
              sizeof(algorithm->min_alignment_bytes));
  return CUBLAS_STATUS_SUCCESS;
}

PreferenceState default_preference() {
  PreferenceState preference{};
  preference.max_workspace_bytes = 0;
  for (uint32_t& alignment : preference.min_alignment_bytes) alignment = 256;
  return preference;
}

// ---- Operand memory ----

struct ByteRange {
  uintptr_t begin, end;
  bool overlaps(const ByteRange& other) const { return begin < other.end && other.begin < end; }
};

// The bytes a column-major matrix touches: columns ld elements apart, the last one rows long.
ByteRange byte_range(const void* data, const LayoutState& layout) {
  uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  uint64_t elements = (layout.cols - 1) * uint64_t(layout.ld) + layout.rows;
  return {begin, begin + elements * element_bytes(layout.type)};
}

cublasStatus_t check_workspace(const void* workspace, size_t workspace_bytes,
                               const AlgorithmState& algorithm) {
  if (workspace_bytes < algorithm.workspace_bytes) return CUBLAS_STATUS_INVALID_VALUE;
  if (workspace_bytes > 0 && workspace == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;
}

// Pointers present and aligned as the algorithm was promised, and no output overlapping what is
// read (C and D may be the same matrix with the same layout).
cublasStatus_t check_operands(const Problem& problem, const AlgorithmState& algorithm,
                              const void* const (&pointers)[kOperands], bool reads_c) {
  for (int operand = 0; operand < kOperands; ++operand) {
    if (pointers[operand] == nullptr) {
      if (operand == kC && !reads_c) continue;
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (reinterpret_cast<uintptr_t>(pointers[operand]) % algorithm.min_alignment_bytes[operand])
      return CUBLAS_STATUS_INVALID_VALUE;
  }
  const LayoutState* layouts = problem.layouts;
  ByteRange d = byte_range(pointers[kD], layouts[kD]);
  if (d.overlaps(byte_range(pointers[kA], layouts[kA])) ||
      d.overlaps(byte_range(pointers[kB], layouts[kB])))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (pointers[kC] == pointers[kD]) {
    if (layouts[kC].ld != layouts[kD].ld) return CUBLAS_STATUS_INVALID_VALUE;
  } else if (pointers[kC] != nullptr && d.overlaps(byte_range(pointers[kC], layouts[kC]))) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// ---- Arithmetic ----

float load_element(const void* data, cudaDataType_t type, uint64_t index) {
  if (type == CUDA_R_16BF) return cst::bf16_to_f32(static_cast<const uint16_t*>(data)[index]);
  return static_cast<const float*>(data)[index];
}

void store_element(void* data, cudaDataType_t type, uint64_t index, float value) {
  if (type == CUDA_R_16BF) static_cast<uint16_t*>(data)[index] = cst::f32_to_bf16(value);
  else static_cast<float*>(data)[index] = value;
}

// outer x inner values of a stored matrix as f32, each outer line contiguous: the rows of op(A)
// and the columns of op(B), so every dot product runs over two contiguous arrays.
std::vector<float> gather(const void* data, cudaDataType_t type, uint64_t outer, uint64_t inner,
                          uint64_t outer_stride, uint64_t inner_stride) {
  std::vector<float> values(outer * inner);
  for (uint64_t o = 0; o < outer; ++o)
    for (uint64_t i = 0; i < inner; ++i)
      values[o * inner + i] = load_element(data, type, o * outer_stride + i * inner_stride);
  return values;
}

float dot_in_order(const float* x, const float* y, uint64_t count) {
  float sum = 0.0f;
  for (uint64_t i = 0; i < count; ++i) sum += x[i] * y[i];
  return sum;
}

void multiply(const Problem& problem, float alpha, const void* a, const void* b, float beta,
              const void* c, void* d) {
  const LayoutState* layouts = problem.layouts;
  uint64_t lda = layouts[kA].ld, ldb = layouts[kB].ld;
  // op(A)(i, p) is A[i + p*lda], or A[p + i*lda] transposed; op(B)(p, j) likewise.
  bool transpose_a = is_transposed(problem.operation.transpose_a);
  bool transpose_b = is_transposed(problem.operation.transpose_b);
  std::vector<float> a_rows = gather(a, layouts[kA].type, problem.m, problem.k,
                                     transpose_a ? lda : 1, transpose_a ? 1 : lda);
  std::vector<float> b_columns = gather(b, layouts[kB].type, problem.n, problem.k,
                                        transpose_b ? 1 : ldb, transpose_b ? ldb : 1);
  for (uint64_t j = 0; j < problem.n; ++j)
    for (uint64_t i = 0; i < problem.m; ++i) {
      float value = alpha * dot_in_order(&a_rows[i * problem.k], &b_columns[j * problem.k],
                                         problem.k);
      if (beta != 0.0f) value += beta * load_element(c, layouts[kC].type, i + j * layouts[kC].ld);
      store_element(d, layouts[kD].type, i + j * layouts[kD].ld, value);
    }
}

}  // namespace

// ---- The API ----

extern "C" {

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* lightHandle) {
  if (lightHandle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *lightHandle = new cublasLtContext{};
  add_live(&LiveObjects::handles, *lightHandle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t lightHandle) {
  if (!remove_live(&LiveObjects::handles, lightHandle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete lightHandle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout,
                                                       cudaDataType type, uint64_t rows,
                                                       uint64_t cols, int64_t ld) {
  return create_object(&LiveObjects::layouts, matLayout, LayoutState{type, rows, cols, ld});
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
  return destroy_object(&LiveObjects::layouts, matLayout);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc,
                                                     cublasComputeType_t computeType,
                                                     cudaDataType_t scaleType) {
  MatmulDescState state{computeType, scaleType, CUBLAS_OP_N, CUBLAS_OP_N};
  return create_object(&LiveObjects::matmul_descs, matmulDesc, state);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
  return destroy_object(&LiveObjects::matmul_descs, matmulDesc);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                           cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t sizeInBytes) {
  if (!is_live(&LiveObjects::matmul_descs, matmulDesc)) return CUBLAS_STATUS_INVALID_VALUE;
  if (attr != CUBLASLT_MATMUL_DESC_TRANSA && attr != CUBLASLT_MATMUL_DESC_TRANSB)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  int32_t operation = 0;
  if (!read_attribute(buf, sizeInBytes, &operation) || !is_operation(operation))
    return CUBLAS_STATUS_INVALID_VALUE;
  MatmulDescState state = load_state<MatmulDescState>(*matmulDesc);
  (attr == CUBLASLT_MATMUL_DESC_TRANSA ? state.transpose_a : state.transpose_b) = operation;
  store_state(*matmulDesc, state);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  return create_object(&LiveObjects::preferences, pref, default_preference());
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  return destroy_object(&LiveObjects::preferences, pref);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(
    cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
    size_t sizeInBytes) {
  if (!is_live(&LiveObjects::preferences, pref)) return CUBLAS_STATUS_INVALID_VALUE;
  PreferenceState state = load_state<PreferenceState>(*pref);
  if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
    if (!read_attribute(buf, sizeInBytes, &state.max_workspace_bytes))
      return CUBLAS_STATUS_INVALID_VALUE;
  } else if (attr >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES &&
             attr <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
    uint32_t alignment = 0;
    if (!read_attribute(buf, sizeInBytes, &alignment) || !is_power_of_two(alignment))
      return CUBLAS_STATUS_INVALID_VALUE;
    state.min_alignment_bytes[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] = alignment;
  } else {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  store_state(*pref, state);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc, cublasLtMatrixLayout_t Adesc,
    cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
    cublasLtMatmulPreference_t preference, int requestedAlgoCount,
    cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int* returnAlgoCount) {
  ++heuristic_queries;
  Problem problem;
  cublasStatus_t status =
      describe_problem(lightHandle, operationDesc, {Adesc, Bdesc, Cdesc, Ddesc}, &problem);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  if (requestedAlgoCount <= 0 || heuristicResultsArray == nullptr || returnAlgoCount == nullptr ||
      !is_live(&LiveObjects::preferences, preference))
    return CUBLAS_STATUS_INVALID_VALUE;
  AlgorithmState algorithm{};
  status = choose_algorithm(problem, load_state<PreferenceState>(*preference), &algorithm);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  cublasLtMatmulHeuristicResult_t& result = heuristicResultsArray[0];
  result = cublasLtMatmulHeuristicResult_t{};
  store_state(result.algo, algorithm);
  result.workspaceSize = algorithm.workspace_bytes;
  result.state = CUBLAS_STATUS_SUCCESS;
  result.wavesCount = 1.0f;
  *returnAlgoCount = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmul(
    cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void* alpha,
    const void* A, cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
    const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
    cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo, void* workspace,
    size_t workspaceSizeInBytes, cudaStream_t /*stream: the model runs when called*/) {
  Problem problem;
  cublasStatus_t status =
      describe_problem(lightHandle, computeDesc, {Adesc, Bdesc, Cdesc, Ddesc}, &problem);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  if (alpha == nullptr || beta == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  // Scale type CUDA_R_32F: alpha and beta are host floats.
  float alpha_value = *static_cast<const float*>(alpha);
  float beta_value = *static_cast<const float*>(beta);

  AlgorithmState algorithm{};
  if (algo != nullptr) {
    algorithm = load_state<AlgorithmState>(*algo);
    if (algorithm.tag != kAlgorithmTag) return CUBLAS_STATUS_INVALID_VALUE;
  } else {
    status = choose_algorithm(problem, default_preference(), &algorithm);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
  }
  status = check_workspace(workspace, workspaceSizeInBytes, algorithm);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  status = check_operands(problem, algorithm, {A, B, C, D}, beta_value != 0.0f);
  if (status != CUBLAS_STATUS_SUCCESS) return status;

  multiply(problem, alpha_value, A, B, beta_value, C, D);
  return CUBLAS_STATUS_SUCCESS;
}

const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "license error";
  }
  return "unknown status";
}

}  // extern "C"

namespace cst::emulation {

CublasLtObjectCounts live_cublaslt_objects() {
  LiveObjects& live = live_objects();
  std::lock_guard<std::mutex> lock(live.mutex);
  return {int(live.handles.size()), int(live.matmul_descs.size()), int(live.layouts.size()),
          int(live.preferences.size())};
}

int64_t cublaslt_heuristic_queries() { return heuristic_queries; }

}  // namespace cst::emulation
