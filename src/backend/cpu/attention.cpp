#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"

namespace k2::cpu {

namespace {

const float* entry_ptr_f32(const LatentCacheView& cache, int64_t slot) {
    return static_cast<const float*>(cache.data) + slot * cache.entry_dim;
}

// The entry at `slot` as fp32: a pointer into an F32 cache, else converted into `buf` [entry_dim].
const float* fetch_entry(const LatentCacheView& cache, int64_t slot, std::vector<float>& buf) {
    if (cache.dtype == DType::F32) {
        return entry_ptr_f32(cache, slot);
    }
    read_latent_entry(cache, slot, buf.data());
    return buf.data();
}

void check_cache(const LatentCacheView& cache) {
    K2_CHECK(cache.data != nullptr || cache.num_slots == 0, "latent cache is not allocated");
    K2_CHECK(cache.dtype == DType::F32 || cache.dtype == DType::BF16 || cache.dtype == DType::F8_E4M3,
             "latent cache: unsupported storage dtype {}", dtype_name(cache.dtype));
}

// Token t (of sequence s), head h: softmax over positions 0..positions[t], output the weighted latents.
void attend_one(const MlaAttentionArgs& a, int64_t t, int64_t h, int64_t s, std::vector<float>& scores,
                std::vector<float>& entry) {
    const int64_t lat = a.kv_lora_rank;
    const int64_t qd = a.kv_lora_rank + a.rope_dim;
    const int64_t len = int64_t{a.positions[t]} + 1;
    const float* q = a.q + (t * a.num_heads + h) * qd;
    const int32_t* table = a.block_tables + s * a.max_blocks_per_seq;
    scores.resize(static_cast<size_t>(len));
    float max_score = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < len; ++j) {
        const int64_t slot = int64_t{table[j / a.block_size]} * a.block_size + j % a.block_size;
        const float* e = fetch_entry(a.cache, slot, entry);
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < qd; ++i)
            dot += q[i] * e[i];
        scores[static_cast<size_t>(j)] = dot * a.softmax_scale;
        max_score = std::max(max_score, scores[static_cast<size_t>(j)]);
    }
    float denom = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
        scores[static_cast<size_t>(j)] = std::exp(scores[static_cast<size_t>(j)] - max_score);
        denom += scores[static_cast<size_t>(j)];
    }
    float* o = a.out + (t * a.num_heads + h) * lat;
    std::fill(o, o + lat, 0.0f);
    for (int64_t j = 0; j < len; ++j) {
        const int64_t slot = int64_t{table[j / a.block_size]} * a.block_size + j % a.block_size;
        const float* e = fetch_entry(a.cache, slot, entry);
        const float p = scores[static_cast<size_t>(j)] / denom;
#pragma omp simd
        for (int64_t i = 0; i < lat; ++i)
            o[i] += p * e[i];
    }
}

}  // namespace

void write_latent_cache(const float* kv, int64_t num_tokens, const int64_t* slot_mapping,
                        const LatentCacheView& cache) {
    check_cache(cache);
    const int64_t d = cache.entry_dim;
    for (int64_t t = 0; t < num_tokens; ++t) {
        const int64_t slot = slot_mapping[t];
        if (slot < 0) {
            continue;
        }
        K2_CHECK(slot < cache.num_slots, "slot {} of token {} is outside the KV cache ({} slots)", slot, t,
                 cache.num_slots);
        const float* src = kv + t * d;
        switch (cache.dtype) {
            case DType::F32:
                std::copy(src, src + d, static_cast<float*>(cache.data) + slot * d);
                break;
            case DType::BF16: {
                uint16_t* dst = static_cast<uint16_t*>(cache.data) + slot * d;
                for (int64_t i = 0; i < d; ++i)
                    dst[i] = float_to_bf16(src[i]);
                break;
            }
            default: {
                uint8_t* dst = static_cast<uint8_t*>(cache.data) + slot * d;
                const float inv = 1.0f / cache.kv_scale;
                for (int64_t i = 0; i < d; ++i)
                    dst[i] = float_to_fp8_e4m3(src[i] * inv);
                break;
            }
        }
    }
}

void read_latent_entry(const LatentCacheView& cache, int64_t slot, float* out) {
    const int64_t d = cache.entry_dim;
    switch (cache.dtype) {
        case DType::F32: {
            const float* src = entry_ptr_f32(cache, slot);
            std::copy(src, src + d, out);
            return;
        }
        case DType::BF16: {
            const uint16_t* src = static_cast<const uint16_t*>(cache.data) + slot * d;
            for (int64_t i = 0; i < d; ++i)
                out[i] = bf16_to_float(src[i]);
            return;
        }
        default: {
            const uint8_t* src = static_cast<const uint8_t*>(cache.data) + slot * d;
            for (int64_t i = 0; i < d; ++i)
                out[i] = fp8_e4m3_to_float(src[i]) * cache.kv_scale;
            return;
        }
    }
}

void mla_attention_absorbed(const MlaAttentionArgs& a) {
    check_cache(a.cache);
    const int64_t qd = a.kv_lora_rank + a.rope_dim;
    K2_CHECK(a.cache.entry_dim == qd, "mla attention: cache entries of {} values, queries of {}", a.cache.entry_dim,
             qd);
    K2_CHECK(a.num_seqs >= 0 && a.query_start[0] == 0 && a.query_start[a.num_seqs] == a.num_tokens,
             "mla attention: query_start does not cover the {} tokens", a.num_tokens);
    // Token -> sequence, so (token, head) pairs can be spread over threads.
    std::vector<int32_t> seq_of(static_cast<size_t>(a.num_tokens));
    for (int64_t s = 0; s < a.num_seqs; ++s) {
        for (int32_t t = a.query_start[s]; t < a.query_start[s + 1]; ++t)
            seq_of[static_cast<size_t>(t)] = static_cast<int32_t>(s);
    }
    // Validate every slot up front: nothing may throw inside the parallel region.
    for (int64_t t = 0; t < a.num_tokens; ++t) {
        const int64_t len = int64_t{a.positions[t]} + 1;
        K2_CHECK(len >= 1 && len <= a.max_blocks_per_seq * a.block_size,
                 "mla attention: position {} of token {} is outside its block table", a.positions[t], t);
        const int32_t* table = a.block_tables + seq_of[static_cast<size_t>(t)] * a.max_blocks_per_seq;
        for (int64_t b = 0; b * a.block_size < len; ++b) {
            K2_CHECK(table[b] >= 0 && (int64_t{table[b]} + 1) * a.block_size <= a.cache.num_slots,
                     "mla attention: bad block id {} at index {} for token {}", table[b], b, t);
        }
    }
    const int64_t work = a.num_tokens * a.num_heads;
    const int64_t max_len = a.num_tokens == 0 ? 0 : *std::max_element(a.positions, a.positions + a.num_tokens) + 1;
#pragma omp parallel if (work * max_len * qd >= (int64_t{1} << 17))
    {
        std::vector<float> scores;
        std::vector<float> entry(static_cast<size_t>(qd));  // [entry_dim]
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < work; ++w) {
            attend_one(a, w / a.num_heads, w % a.num_heads, seq_of[static_cast<size_t>(w / a.num_heads)], scores,
                       entry);
        }
    }
}

}  // namespace k2::cpu
