// Checked cuBLAS(Lt) calls: a failing call reports itself, its status and where it was made.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>

namespace cst::cuda {

void check_cublas(cublasStatus_t status, const char* call, const char* file, int line);  // gemm.cu

}  // namespace cst::cuda

#define CUBLAS_CHECK(call) ::cst::cuda::check_cublas((call), #call, __FILE__, __LINE__)
