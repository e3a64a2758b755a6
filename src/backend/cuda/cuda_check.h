// CUDA_CHECK / CUBLAS_CHECK: every CUDA runtime and cuBLASLt call goes through one of these, so a failure
// becomes a k2::Error carrying the file:line of the call (never an abort, never a silently ignored code).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(expr)                                                                            \
    do {                                                                                            \
        const cudaError_t k2_cuda_status_ = (expr);                                                 \
        if (k2_cuda_status_ != cudaSuccess) [[unlikely]] {                                          \
            ::k2::throw_error(fmt::format("CUDA error {} ({}) in {}", cudaGetErrorName(k2_cuda_status_), \
                                          cudaGetErrorString(k2_cuda_status_), #expr),              \
                              std::source_location::current());                                     \
        }                                                                                           \
    } while (0)

// After a kernel launch: reports bad launch configurations at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(expr)                                                                          \
    do {                                                                                            \
        const cublasStatus_t k2_cublas_status_ = (expr);                                            \
        if (k2_cublas_status_ != CUBLAS_STATUS_SUCCESS) [[unlikely]] {                              \
            ::k2::throw_error(fmt::format("cuBLAS error {} ({}) in {}",                             \
                                          cublasLtGetStatusName(k2_cublas_status_),                 \
                                          cublasLtGetStatusString(k2_cublas_status_), #expr),       \
                              std::source_location::current());                                     \
        }                                                                                           \
    } while (0)
