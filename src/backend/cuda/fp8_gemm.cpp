// Host side of fp8_gemm.h: the decode kernel's launcher (split-K choice, 64-token passes; the raw cluster launch
// is in fp8_gemm.cu) and the cuBLASLt runner with cached per-shape plans.
#include "backend/cuda/fp8_gemm.h"

#include <algorithm>
#include <cstdlib>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/fp8_gemm_config.h"
#include "backend/cuda/fp8_gemm_wgmma.h"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda {
namespace {

void check_gemm_params(const Fp8GemmParams& p) {
    K2_CHECK(p.k > 0 && p.k % 128 == 0, "fp8 gemm: k = {} is not a positive multiple of 128", p.k);
    K2_CHECK(p.n > 0, "fp8 gemm: n = {} must be positive", p.n);
    K2_CHECK(p.x_stride >= p.k && p.x_stride % 16 == 0, "fp8 gemm: x_stride {} (k {})", p.x_stride, p.k);
    K2_CHECK(p.y_stride >= p.n, "fp8 gemm: y_stride {} < n {}", p.y_stride, p.n);
    K2_CHECK(p.x_scale_stride >= p.num_tokens, "fp8 gemm: x_scale_stride {} < num_tokens {}", p.x_scale_stride,
             p.num_tokens);
    K2_CHECK(p.x != nullptr && p.w != nullptr && p.x_scale != nullptr && p.w_scale != nullptr && p.y != nullptr,
             "fp8 gemm: null operand");
    K2_CHECK(reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.w) % 16 == 0,
             "fp8 gemm: x and w must be 16-byte aligned");
}

}  // namespace

void launch_fp8_gemm_decode(const Fp8GemmParams& params, cudaStream_t stream) {
    if (params.num_tokens == 0) {
        return;
    }
    check_gemm_params(params);
    K2_CHECK(params.n % 16 == 0, "fp8 decode gemm: n = {} is not a multiple of 16", params.n);
    for (int64_t begin = 0; begin < params.num_tokens; begin += kDecodeTokensPerPass) {
        Fp8GemmParams pass = params;
        pass.num_tokens = std::min(kDecodeTokensPerPass, params.num_tokens - begin);
        pass.x = params.x + begin * params.x_stride;
        pass.x_scale = params.x_scale + begin;
        pass.y = params.y + begin * params.y_stride;
        const int num_kb = static_cast<int>(pass.k / 128);
        const int num_row_blocks = static_cast<int>((pass.n + detail::kDecodeRowsPerBlock - 1) / detail::kDecodeRowsPerBlock);
        // NOTE: K2_DECODE_SPLITS overrides the split-K heuristic (a tuning knob for bench/gpu_kernels.sh).
        static const int forced_splits = [] {
            const char* env = std::getenv("K2_DECODE_SPLITS");
            return env != nullptr ? std::atoi(env) : 0;
        }();
        int splits = forced_splits > 0 ? forced_splits : (kDecodeTargetBlocks + num_row_blocks - 1) / num_row_blocks;
        splits = std::clamp(splits, 1, std::min(kDecodeMaxSplits, num_kb));
        const int kb_per_split = (num_kb + splits - 1) / splits;
        splits = (num_kb + kb_per_split - 1) / kb_per_split;  // no empty split
        CUDA_CHECK(detail::launch_fp8_gemm_decode_kernel(pass, splits, kb_per_split, stream));
    }
}

// ---- cuBLASLt ----

struct Fp8GemmRunner::Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr;  // weights, [k, n] column-major = w [n, k] row-major, op T
    cublasLtMatrixLayout_t b = nullptr;  // activations, [k, num_tokens] column-major = x row-major
    cublasLtMatrixLayout_t d = nullptr;  // [n, num_tokens] column-major = y [num_tokens, n] row-major
    cublasLtMatmulAlgo_t algo = {};
    bool supported = true;  // false: cuBLASLt has no block-scaled algorithm for this shape (e.g. m = 1)
    bool borrowed = false;  // algo came from another m of the bucket (re-queried if cuBLASLt refuses it)

    ~Plan() {
        if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
        if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
        if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
        if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
    }
};

using ShapeKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;  // m, n, k, x_stride, y_stride

namespace {

// The heuristic's answer is shared by every m of a power-of-two bucket: a MoE prefill calls this once per expert
// with a different row count each time, and a heuristic query costs far more than the GEMM of a small expert.
int64_t m_bucket(int64_t m) {
    int64_t bucket = 16;
    while (bucket < m) bucket *= 2;
    return bucket;
}

}  // namespace

struct Fp8GemmRunner::State {
    static constexpr size_t kWorkspaceBytes = 64ull << 20;
    cublasLtHandle_t handle = nullptr;
    DeviceBuffer workspace{kWorkspaceBytes};
    std::map<ShapeKey, std::unique_ptr<Plan>> plans;
    std::map<ShapeKey, cublasLtMatmulAlgo_t> bucket_algos;  // keyed with m_bucket(m)
};

Fp8GemmRunner::Fp8GemmRunner() : m_state(std::make_unique<State>()) { CUBLAS_CHECK(cublasLtCreate(&m_state->handle)); }

Fp8GemmRunner::~Fp8GemmRunner() {
    m_state->plans.clear();
    if (m_state->handle != nullptr) {
        cublasLtDestroy(m_state->handle);
    }
}

Fp8GemmImpl Fp8GemmRunner::choose(int64_t num_tokens, int64_t n, int64_t k) {
    // K2_DISABLE_WGMMA_GEMM=1: the pre-v5 choice (A/B runs, and a way out should the kernel misbehave somewhere).
    static const bool wgmma_off = std::getenv("K2_DISABLE_WGMMA_GEMM") != nullptr;
    if (!wgmma_off && prefer_wgmma(num_tokens, n, k)) {
        return Fp8GemmImpl::Wgmma;
    }
    if (n % 16 != 0) {
        return Fp8GemmImpl::CublasLt;  // our kernel needs whole 16-row warp tiles
    }
    // cuBLASLt reads BLK128x128 weight scales with the k-block dimension padded to a multiple of 4 (cuBLAS docs,
    // "scaling factors layouts"; PyTorch #166752: silently wrong otherwise). Our scales are unpadded, so such k
    // (every Kimi-K2 projection has k / 128 % 4 == 0; the test fixtures do not) stay on our kernel.
    if ((k / 128) % 4 != 0) {
        return Fp8GemmImpl::Decode;
    }
    return num_tokens < kCublasLtMinTokens ? Fp8GemmImpl::Decode : Fp8GemmImpl::CublasLt;
}

void Fp8GemmRunner::run(const Fp8GemmParams& params, cudaStream_t stream, Fp8GemmImpl impl) {
    if (params.num_tokens == 0) {
        return;
    }
    if (impl == Fp8GemmImpl::Auto && params.padded_rows && params.num_tokens % 16 != 0 &&
        params.x_scale_stride == round_up_16(params.num_tokens) &&
        choose(params.num_tokens, params.n, params.k) == Fp8GemmImpl::CublasLt) {
        Fp8GemmParams padded = params;  // cuBLASLt's FP8 path wants m % 16 == 0: compute the caller's slack rows too
        padded.num_tokens = round_up_16(params.num_tokens);
        padded.padded_rows = false;
        run(padded, stream, Fp8GemmImpl::Auto);
        return;
    }
    const bool automatic = impl == Fp8GemmImpl::Auto;
    if (automatic) {
        impl = choose(params.num_tokens, params.n, params.k);
        // cuBLASLt rejects some shapes (m = 1 always, on the H200 here): our kernel takes any m.
        if (impl == Fp8GemmImpl::CublasLt && params.n % 16 == 0 &&
            (params.x_scale_stride != params.num_tokens || params.y_stride % 8 != 0 || !plan_for(params).supported)) {
            impl = Fp8GemmImpl::Decode;
        }
    }
    if (impl == Fp8GemmImpl::Wgmma) {
        launch_fp8_gemm_wgmma(params, stream);
    } else if (impl == Fp8GemmImpl::CublasLt && !automatic) {
        run_cublaslt(params, stream);  // asked for by name: no algorithm is an error
    } else if (impl == Fp8GemmImpl::Decode || !try_cublaslt(params, stream)) {
        launch_fp8_gemm_decode(params, stream);
    }
}

void Fp8GemmRunner::run_cublaslt(const Fp8GemmParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.k % 512 == 0, "cuBLASLt block-scaled fp8: k {} must be a multiple of 512 (unpadded 128x128 scales)", p.k);
    K2_CHECK(try_cublaslt(p, stream), "cuBLASLt has no block-scaled fp8 algorithm for m={} n={} k={}", p.num_tokens,
             p.n, p.k);
}

bool Fp8GemmRunner::try_cublaslt(const Fp8GemmParams& p, cudaStream_t stream) {
    Plan& plan = plan_for(p);
    if (!plan.supported) {
        return false;
    }
    const void* a_scale = p.w_scale;
    const void* b_scale = p.x_scale;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale)));
    const float alpha = 1.0f;
    const float beta = 0.0f;
    auto matmul = [&] {
        return cublasLtMatmul(m_state->handle, plan.desc, &alpha, p.w, plan.a, p.x, plan.b, &beta, p.y, plan.d, p.y,
                              plan.d, &plan.algo, m_state->workspace.data(), State::kWorkspaceBytes, stream);
    };
    const cublasStatus_t status = matmul();
    if (status != CUBLAS_STATUS_SUCCESS && plan.borrowed) {  // the bucket's algorithm does not fit this m: ask
        query_algo(plan, std::make_tuple(p.num_tokens, p.n, p.k, p.x_stride, p.y_stride));
        if (!plan.supported) {
            return false;
        }
        CUBLAS_CHECK(matmul());
        return true;
    }
    CUBLAS_CHECK(status);
    return true;
}

Fp8GemmRunner::Plan& Fp8GemmRunner::plan_for(const Fp8GemmParams& p) {
    check_gemm_params(p);
    K2_CHECK(p.x_scale_stride == p.num_tokens, "cuBLASLt fp8 gemm: x_scale_stride {} must equal num_tokens {}",
             p.x_scale_stride, p.num_tokens);
    K2_CHECK(p.y_stride % 8 == 0, "cuBLASLt fp8 gemm: y_stride {} must be a multiple of 8", p.y_stride);
    auto key = std::make_tuple(p.num_tokens, p.n, p.k, p.x_stride, p.y_stride);
    auto& slot = m_state->plans[key];
    if (!slot) {
        auto plan = std::make_unique<Plan>();
        CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t trans_a = CUBLAS_OP_T;
        const cublasOperation_t trans_b = CUBLAS_OP_N;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
        const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
        const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode)));
        const void* dummy = p.w_scale;  // the pointers are set per call; the heuristic wants them present
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &dummy, sizeof(dummy)));
        dummy = p.x_scale;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &dummy, sizeof(dummy)));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_8F_E4M3, static_cast<uint64_t>(p.k),
                                                static_cast<uint64_t>(p.n), p.k));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_8F_E4M3, static_cast<uint64_t>(p.k),
                                                static_cast<uint64_t>(p.num_tokens), p.x_stride));
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->d, CUDA_R_16BF, static_cast<uint64_t>(p.n),
                                                static_cast<uint64_t>(p.num_tokens), p.y_stride));
        const ShapeKey bucket_key = std::make_tuple(m_bucket(p.num_tokens), p.n, p.k, p.x_stride, p.y_stride);
        if (const auto it = m_state->bucket_algos.find(bucket_key); it != m_state->bucket_algos.end()) {
            plan->algo = it->second;
            plan->borrowed = true;
            slot = std::move(plan);
            return *slot;
        }
        query_algo(*plan, bucket_key);
        slot = std::move(plan);
    }
    return *slot;
}

void Fp8GemmRunner::query_algo(Plan& plan, const std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>& bucket_key) {
    cublasLtMatmulPreference_t preference = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const uint64_t workspace_bytes = State::kWorkspaceBytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof(workspace_bytes)));
    cublasLtMatmulHeuristicResult_t result = {};
    int num_results = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(m_state->handle, plan.desc, plan.a, plan.b, plan.d,
                                                                 plan.d, preference, 1, &result, &num_results);
    cublasLtMatmulPreferenceDestroy(preference);
    plan.borrowed = false;
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && num_results == 0)) {
        plan.supported = false;
        return;
    }
    CUBLAS_CHECK(status);
    plan.algo = result.algo;
    m_state->bucket_algos.emplace(bucket_key, result.algo);
}

}  // namespace k2::cuda
