// What the host model of cuBLASLt (tests/emulation/cublaslt.cpp) exposes beyond the cuBLASLt API
// itself: how many of its objects are alive, so a test can check that code using cuBLASLt
// destroys everything it creates, also when it fails half-way; and how many heuristic queries
// were made, so a test can tell a cached plan from a new one.
#pragma once
#include <cstdint>

namespace cst::emulation {

struct CublasLtObjectCounts {
  int handles = 0;       // cublasLtCreate - cublasLtDestroy
  int matmul_descs = 0;  // cublasLtMatmulDescCreate - cublasLtMatmulDescDestroy
  int layouts = 0;       // cublasLtMatrixLayoutCreate - cublasLtMatrixLayoutDestroy
  int preferences = 0;   // cublasLtMatmulPreferenceCreate - cublasLtMatmulPreferenceDestroy
  int total() const { return handles + matmul_descs + layouts + preferences; }
  bool operator==(const CublasLtObjectCounts&) const = default;
};

CublasLtObjectCounts live_cublaslt_objects();

// cublasLtMatmulAlgoGetHeuristic calls since the process started.
int64_t cublaslt_heuristic_queries();

}  // namespace cst::emulation
