// Host side of bf16_gemm.h: the cuBLASLt runner with cached per-shape plans (mirrors the fp8 runner in
// fp8_gemm.cpp). Row-major math through column-major cuBLAS: a row-major [r, c] matrix with row stride ld is a
// column-major [c, r] matrix with leading dimension ld, so C[m, n] = A[m, k] . op(B) is computed as
//   C^T [n, m] = op'(B) [n, k] . A^T [k, m]
// with cuBLAS's "A" operand = our b (op T when b_is_nk, N otherwise), its "B" operand = our a (op N).
#include "backend/cuda/bf16_gemm.h"

#include <compare>
#include <cstdint>
#include <map>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"

namespace k2::cuda {
namespace {

// The largest power of two (capped at 256, cuBLASLt's default assumption) dividing the address of every batch's
// matrix: the base pointer and, with more than one batch, the batch stride in bytes.
uint32_t alignment_bytes(const void* ptr, int64_t batch_stride_bytes, int batch) {
    uint64_t bits = reinterpret_cast<uintptr_t>(ptr) | 256u;
    if (batch > 1) {
        bits |= static_cast<uint64_t>(batch_stride_bytes);
    }
    return static_cast<uint32_t>(bits & (~bits + 1));  // lowest set bit
}

void check_gemm_params(const Bf16GemmParams& p) {
    K2_CHECK(p.m >= 0 && p.n >= 0 && p.k >= 0, "bf16 gemm: negative size m={} n={} k={}", p.m, p.n, p.k);
    K2_CHECK(p.batch >= 1, "bf16 gemm: batch = {} must be at least 1", p.batch);
    if (p.m == 0 || p.n == 0) {
        return;  // nothing to do: pointers and strides are not used
    }
    // NOTE: k == 0 would mean c = 0; no caller needs it and cuBLASLt's support for it is not worth relying on.
    K2_CHECK(p.k > 0, "bf16 gemm: k = 0 (m={} n={})", p.m, p.n);
    K2_CHECK(p.a != nullptr && p.b != nullptr && p.c != nullptr, "bf16 gemm: null operand (m={} n={} k={})", p.m, p.n,
             p.k);
    K2_CHECK(p.lda >= p.k, "bf16 gemm: lda {} < k {}", p.lda, p.k);
    const int64_t b_width = p.b_is_nk ? p.k : p.n;
    K2_CHECK(p.ldb >= b_width, "bf16 gemm: ldb {} < the row width {} of b ({})", p.ldb, b_width,
             p.b_is_nk ? "[n, k]" : "[k, n]");
    K2_CHECK(p.ldc >= p.n, "bf16 gemm: ldc {} < n {}", p.ldc, p.n);
    K2_CHECK(p.a_batch_stride >= 0 && p.b_batch_stride >= 0 && p.c_batch_stride >= 0,
             "bf16 gemm: negative batch stride (a {}, b {}, c {})", p.a_batch_stride, p.b_batch_stride,
             p.c_batch_stride);
    // 2-byte alignment of bf16 is the minimum cuBLASLt accepts for any algorithm.
    K2_CHECK(reinterpret_cast<uintptr_t>(p.a) % 2 == 0 && reinterpret_cast<uintptr_t>(p.b) % 2 == 0 &&
                 reinterpret_cast<uintptr_t>(p.c) % (p.c_f32 ? 4 : 2) == 0,
             "bf16 gemm: operands are not aligned to their element size");
}

// Everything a plan depends on: the shape, strides, types and the pointers' alignment (not the pointers).
struct PlanKey {
    bool b_is_nk;
    bool c_f32;
    int64_t m, n, k;
    int64_t lda, ldb, ldc;
    int batch;
    int64_t a_batch_stride, b_batch_stride, c_batch_stride;
    uint32_t a_align, b_align, c_align;

    auto operator<=>(const PlanKey&) const = default;
};

PlanKey plan_key(const Bf16GemmParams& p) {
    const int64_t c_elem = p.c_f32 ? 4 : 2;
    return PlanKey{p.b_is_nk,
                   p.c_f32,
                   p.m,
                   p.n,
                   p.k,
                   p.lda,
                   p.ldb,
                   p.ldc,
                   p.batch,
                   p.a_batch_stride,
                   p.b_batch_stride,
                   p.c_batch_stride,
                   alignment_bytes(p.a, p.a_batch_stride * 2, p.batch),
                   alignment_bytes(p.b, p.b_batch_stride * 2, p.batch),
                   alignment_bytes(p.c, p.c_batch_stride * c_elem, p.batch)};
}

struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t w = nullptr;  // cuBLAS "A" = our b: [k, n] (b_is_nk, op T) or [n, k] (op N) column-major
    cublasLtMatrixLayout_t x = nullptr;  // cuBLAS "B" = our a: [k, m] column-major
    cublasLtMatrixLayout_t d = nullptr;  // [n, m] column-major = c [m, n] row-major (also the C layout)
    cublasLtMatmulAlgo_t algo = {};

    Plan() = default;
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    ~Plan() {
        if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
        if (x != nullptr) cublasLtMatrixLayoutDestroy(x);
        if (w != nullptr) cublasLtMatrixLayoutDestroy(w);
        if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
    }
};

// Owns a cublasLtMatmulPreference_t for the duration of one heuristic query (freed on every path).
struct Preference {
    cublasLtMatmulPreference_t handle = nullptr;

    Preference() { CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&handle)); }
    ~Preference() { cublasLtMatmulPreferenceDestroy(handle); }
    Preference(const Preference&) = delete;
    Preference& operator=(const Preference&) = delete;

    template <typename T>
    void set(cublasLtMatmulPreferenceAttributes_t attr, const T& value) {
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(handle, attr, &value, sizeof(value)));
    }
};

void make_layout(cublasLtMatrixLayout_t* layout, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                 int batch, int64_t batch_stride) {
    CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(layout, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
    if (batch > 1) {
        const int32_t count = batch;
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                      sizeof(count)));
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                      &batch_stride, sizeof(batch_stride)));
    }
}

}  // namespace

struct Bf16GemmRunner::State {
    static constexpr size_t kWorkspaceBytes = 32ull << 20;
    cublasLtHandle_t handle = nullptr;
    DeviceBuffer workspace{kWorkspaceBytes};
    std::map<PlanKey, std::unique_ptr<Plan>> plans;

    Plan& plan_for(const PlanKey& key);
};

Bf16GemmRunner::Bf16GemmRunner() : m_state(std::make_unique<State>()) {
    CUBLAS_CHECK(cublasLtCreate(&m_state->handle));
}

Bf16GemmRunner::~Bf16GemmRunner() {
    m_state->plans.clear();
    if (m_state->handle != nullptr) {
        cublasLtDestroy(m_state->handle);
    }
}

void Bf16GemmRunner::run(const Bf16GemmParams& p, cudaStream_t stream) {
    check_gemm_params(p);
    if (p.m == 0 || p.n == 0) {
        return;
    }
    const Plan& plan = m_state->plan_for(plan_key(p));
    const float alpha = 1.0f;
    const float beta = 0.0f;  // c is write-only: cuBLASLt does not read C when beta == 0 (NaN poison stays out)
    CUBLAS_CHECK(cublasLtMatmul(m_state->handle, plan.desc, &alpha, p.b, plan.w, p.a, plan.x, &beta, p.c, plan.d, p.c,
                                plan.d, &plan.algo, m_state->workspace.data(), State::kWorkspaceBytes, stream));
}

Plan& Bf16GemmRunner::State::plan_for(const PlanKey& key) {
    if (const auto it = plans.find(key); it != plans.end()) {
        return *it->second;
    }
    auto plan = std::make_unique<Plan>();
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans_w = key.b_is_nk ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t trans_x = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_w, sizeof(trans_w)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_x, sizeof(trans_x)));
    if (key.b_is_nk) {
        make_layout(&plan->w, CUDA_R_16BF, key.k, key.n, key.ldb, key.batch, key.b_batch_stride);
    } else {
        make_layout(&plan->w, CUDA_R_16BF, key.n, key.k, key.ldb, key.batch, key.b_batch_stride);
    }
    make_layout(&plan->x, CUDA_R_16BF, key.k, key.m, key.lda, key.batch, key.a_batch_stride);
    make_layout(&plan->d, key.c_f32 ? CUDA_R_32F : CUDA_R_16BF, key.n, key.m, key.ldc, key.batch, key.c_batch_stride);

    Preference preference;
    preference.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t{kWorkspaceBytes});
    // The heuristic otherwise assumes 256-byte aligned matrices; a head's columns inside a row (W_UK / W_UV) are
    // only 16-byte aligned, so it is told the real alignment (cuBLAS's "A" is our b, its "B" our a).
    preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.b_align);
    preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.a_align);
    preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.c_align);
    preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.c_align);
    cublasLtMatmulHeuristicResult_t result = {};
    int num_results = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->w, plan->x, plan->d,
                                                                 plan->d, preference.handle, 1, &result, &num_results);
    K2_CHECK(status != CUBLAS_STATUS_NOT_SUPPORTED && !(status == CUBLAS_STATUS_SUCCESS && num_results == 0),
             "bf16 gemm: cuBLASLt has no algorithm for m={} n={} k={} lda={} ldb={} ldc={} batch={} b_is_nk={} "
             "c_f32={} (alignment a {} b {} c {} bytes)",
             key.m, key.n, key.k, key.lda, key.ldb, key.ldc, key.batch, key.b_is_nk, key.c_f32, key.a_align,
             key.b_align, key.c_align);
    CUBLAS_CHECK(status);
    plan->algo = result.algo;
    return *plans.emplace(key, std::move(plan)).first->second;
}

}  // namespace k2::cuda
