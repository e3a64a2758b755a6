// Host launcher of mla_prefill.h: validate shapes, strides and alignment, then launch (mla_prefill.cu).
#include "backend/cuda/mla_prefill.h"

#include <cmath>
#include <cstdint>
#include <utility>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/mla_prefill_detail.h"
#include "backend/cuda/mla_prefill_wgmma_detail.h"

namespace k2::cuda {
namespace {

bool aligned16(const void* ptr) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

}  // namespace

void launch_mla_prefill(const MlaPrefillParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0 || p.num_seqs == 0) {
        return;
    }
    K2_CHECK(p.num_tokens > 0 && p.num_tokens <= INT32_MAX, "mla_prefill: bad num_tokens {}", p.num_tokens);
    K2_CHECK(p.num_seqs > 0 && p.num_seqs <= 65535, "mla_prefill: num_seqs {} must be in 1..65535", p.num_seqs);
    K2_CHECK(p.heads > 0 && p.heads <= 65535, "mla_prefill: bad head count {}", p.heads);
    K2_CHECK(p.max_q_len > 0 && p.max_q_len <= p.num_tokens, "mla_prefill: max_q_len {} must be in 1..num_tokens {}",
             p.max_q_len, p.num_tokens);
    K2_CHECK(p.q != nullptr && p.k_nope != nullptr && p.v != nullptr && p.k_pe != nullptr &&
                 p.cu_seqlens_q != nullptr && p.cu_seqlens_k != nullptr && p.out != nullptr,
             "mla_prefill: null pointer");
    K2_CHECK(aligned16(p.q) && aligned16(p.k_nope) && aligned16(p.v) && aligned16(p.k_pe) && aligned16(p.out),
             "mla_prefill: q, k_nope, v, k_pe and out must be 16-byte aligned");
    const int64_t dqk = kMlaPrefillNope + kMlaPrefillRope;
    K2_CHECK(p.q_stride >= p.heads * dqk && p.q_stride % 8 == 0,
             "mla_prefill: q_stride {} must be a multiple of 8 >= "
             "heads * 192 = {}",
             p.q_stride, p.heads * dqk);
    K2_CHECK(p.kv_head_stride >= kMlaPrefillNope && p.kv_head_stride % 8 == 0,
             "mla_prefill: kv_head_stride {} must be a multiple of 8 >= 128", p.kv_head_stride);
    K2_CHECK(p.kv_stride >= (p.heads - 1) * p.kv_head_stride + kMlaPrefillNope && p.kv_stride % 8 == 0,
             "mla_prefill: kv_stride {} must be a multiple of 8 covering {} heads of stride {}", p.kv_stride, p.heads,
             p.kv_head_stride);
    K2_CHECK(p.k_pe_stride >= kMlaPrefillRope && p.k_pe_stride % 8 == 0,
             "mla_prefill: k_pe_stride {} must be a multiple of 8 >= 64", p.k_pe_stride);
    K2_CHECK(p.out_stride >= p.heads * int64_t{kMlaPrefillDv} && p.out_stride % 2 == 0,
             "mla_prefill: out_stride {} must be even and >= heads * 128 = {}", p.out_stride,
             p.heads * int64_t{kMlaPrefillDv});
    K2_CHECK(p.softmax_scale > 0.0f && std::isfinite(p.softmax_scale), "mla_prefill: bad softmax_scale {}",
             p.softmax_scale);
    switch (p.kernel) {
        case MlaPrefillKernel::kMmaSync:
            K2_CHECK(p.warps_per_cta == 4 || p.warps_per_cta == 8, "mla_prefill: warps_per_cta {} must be 4 or 8",
                     p.warps_per_cta);
            CUDA_CHECK(detail::launch_mla_prefill_kernel(p, stream));
            return;
        case MlaPrefillKernel::kAuto:
        case MlaPrefillKernel::kWgmma:
            CUDA_CHECK(detail::launch_mla_prefill_wgmma_kernel(p, detail::WgmmaPrefillSchedule::kLockstep, stream));
            return;
        case MlaPrefillKernel::kWgmmaPingPong:
            CUDA_CHECK(detail::launch_mla_prefill_wgmma_kernel(p, detail::WgmmaPrefillSchedule::kPingPong, stream));
            return;
        case MlaPrefillKernel::kWgmmaOverlap:
            CUDA_CHECK(detail::launch_mla_prefill_wgmma_kernel(p, detail::WgmmaPrefillSchedule::kOverlap, stream));
            return;
        case MlaPrefillKernel::kWgmmaHeadsInner:
            CUDA_CHECK(
                detail::launch_mla_prefill_wgmma_kernel(p, detail::WgmmaPrefillSchedule::kLockstepHeadsInner, stream));
            return;
    }
    K2_FAIL("mla_prefill: unknown kernel {}", static_cast<int>(p.kernel));
}

static_assert(kMlaPrefillNope == kMlaPrefillDv, "K_nope and V share the kv strides");

void launch_latent_gather(const LatentGatherParams& p, cudaStream_t stream) {
    if (p.num_rows == 0) {
        return;
    }
    K2_CHECK(p.num_rows > 0 && p.entry > 0 && p.entry % 8 == 0, "latent_gather: bad shape: {} rows of {} values",
             p.num_rows, p.entry);
    K2_CHECK(p.cache.data != nullptr && p.cache.num_slots > 0 && aligned16(p.cache.data),
             "latent_gather: the latent cache is not allocated or not 16-byte aligned");
    K2_CHECK(p.slots != nullptr && p.out != nullptr && aligned16(p.out),
             "latent_gather: null slots / out, or out not 16-byte aligned");
    K2_CHECK(p.num_rows * (p.entry / 8) / 256 < INT32_MAX, "latent_gather: {} rows is too many", p.num_rows);
    CUDA_CHECK(detail::launch_latent_gather_kernel(p, stream));
}

void run_mla_prefill_forward(Bf16GemmRunner& gemm, const MlaPrefillForwardParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.num_ctx >= p.num_tokens, "mla_prefill_forward: {} context tokens for {} queries", p.num_ctx,
             p.num_tokens);
    K2_CHECK(p.lat > 0 && p.lat % 8 == 0, "mla_prefill_forward: kv_lora_rank {} must be a multiple of 8", p.lat);
    const int entry = p.lat + kMlaPrefillRope;
    const int64_t width = int64_t{p.heads} * kMlaPrefillNope;  // heads * 128, K_nope and V alike

    LatentGatherParams gather;
    gather.cache = p.cache;
    gather.slots = p.ctx_slots;
    gather.out = p.latent_ctx;
    gather.num_rows = p.num_ctx;
    gather.entry = entry;
    launch_latent_gather(gather, stream);

    // [num_ctx, heads * 128] = c_kv [num_ctx, lat] @ W^T with W = [heads * 128, lat] (the heads' rows stacked).
    for (const auto& [w, c] : {std::pair{p.w_uk, p.k_nope_ctx}, std::pair{p.w_uv, p.v_ctx}}) {
        Bf16GemmParams g;
        g.a = p.latent_ctx;
        g.b = w;
        g.c = c;
        g.b_is_nk = true;
        g.m = p.num_ctx;
        g.n = width;
        g.k = p.lat;
        g.lda = entry;
        g.ldb = p.lat;
        g.ldc = width;
        gemm.run(g, stream);
    }

    QueryRopeParams rope;  // in place: q_abs = q with lat = nope writes q[.., nope:] from q[.., nope:]
    rope.q = p.q;
    rope.q_abs = p.q;
    rope.positions = p.positions;
    rope.inv_freq = p.inv_freq;
    rope.rope_scale = p.rope_scale;
    rope.num_tokens = p.num_tokens;
    rope.heads = p.heads;
    rope.nope = kMlaPrefillNope;
    rope.rope = kMlaPrefillRope;
    rope.lat = kMlaPrefillNope;
    launch_query_rope(rope, stream);

    MlaPrefillParams attn;
    attn.q = p.q;
    attn.k_nope = p.k_nope_ctx;
    attn.v = p.v_ctx;
    attn.k_pe = p.latent_ctx + p.lat;
    attn.cu_seqlens_q = p.cu_seqlens_q;
    attn.cu_seqlens_k = p.cu_seqlens_k;
    attn.out = p.out;
    attn.num_tokens = p.num_tokens;
    attn.q_stride = int64_t{p.heads} * (kMlaPrefillNope + kMlaPrefillRope);
    attn.kv_stride = width;
    attn.kv_head_stride = kMlaPrefillNope;
    attn.k_pe_stride = entry;
    attn.out_stride = int64_t{p.heads} * kMlaPrefillDv;
    attn.num_seqs = p.num_seqs;
    attn.heads = p.heads;
    attn.max_q_len = p.max_q_len;
    attn.softmax_scale = p.softmax_scale;
    attn.kernel = p.kernel;
    launch_mla_prefill(attn, stream);
}

}  // namespace k2::cuda
