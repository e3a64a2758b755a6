// The MLA ops of mla_ops.h (latent store, query RoPE, general absorbed attention) against the CPU references
// (cpu::rms_norm + cpu::rope_interleaved + cpu::write_latent_cache, cpu::rope_interleaved,
// cpu::mla_attention_absorbed) on random inputs, at Kimi-K2 / DeepSeek-V3 / tiny / small-dsv3 shapes and edge cases
// (0, 1, 3 tokens; contexts not multiple of 64; several sequences in one CTA; non-contiguous blocks; FP8 caches).
// Outputs and caches are NaN-poisoned first; what must stay untouched is checked to still hold the poison.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/rope.h"
#include "backend/cuda/mla_ops.h"
#include "core/tensor.h"
#include "ops_common.h"

namespace k2::ops_test {
namespace {

class MlaOps : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP()
                << "no CUDA device: the CUDA op tests need a GPU (they run on the H200 via bench/gpu_kernels.sh)";
        }
    }
};

// Position of a bf16 / e4m3 code on the number line (sign-magnitude codes are monotonic in their magnitude bits):
// two codes are one rounding step apart iff their ordinals differ by one.
int64_t ordinal(uint32_t code, int bits) {
    const uint32_t sign = 1u << (bits - 1);
    const auto mag = static_cast<int64_t>(code & (sign - 1));
    return (code & sign) != 0 ? -mag : mag;
}

// YaRN as Kimi-K2 / DeepSeek-V3 configure it, but with mscale != mscale_all_dim so that the cos/sin scale is not 1.
cpu::YarnParams test_yarn() {
    cpu::YarnParams y;
    y.yarn = true;
    y.factor = 32.0;
    y.mscale = 1.0;
    y.mscale_all_dim = 0.7;
    y.original_max_position_embeddings = 4096;
    return y;
}

// Compares the cache codes written on the GPU with the reference codes. The reference computes the same fp32
// values in the same order except for the RMS sum order and cosf/sinf (1 fp32 ulp), so a code may differ only
// by one rounding step, and only rarely (a value within an fp32 ulp of a rounding midpoint).
template <typename T>
void expect_codes_match(const std::vector<T>& gpu, const std::vector<T>& ref, int bits, const std::string& what) {
    ASSERT_EQ(gpu.size(), ref.size());
    int64_t off_by_one = 0;
    for (size_t i = 0; i < gpu.size(); ++i) {
        if (gpu[i] == ref[i])
            continue;
        const int64_t d = ordinal(gpu[i], bits) - ordinal(ref[i], bits);
        ASSERT_LE(std::abs(d), 1) << what << ": code " << i << " is " << uint32_t{gpu[i]} << ", expected "
                                  << uint32_t{ref[i]};
        ++off_by_one;
    }
    EXPECT_LE(off_by_one, static_cast<int64_t>(gpu.size()) / 1000 + 2) << what << ": codes one rounding step off";
}

// ---------------------------------------------------------------------------------------------------------------
// Latent store

void check_latent_store(int lat, int rope, bool fp8, int64_t num_tokens, std::mt19937& rng) {
    SCOPED_TRACE("lat " + std::to_string(lat) + " rope " + std::to_string(rope) + (fp8 ? " fp8" : " bf16") +
                 " tokens " + std::to_string(num_tokens));
    const int entry = lat + rope;
    const int64_t kv_stride = entry + 8;  // a padded row, as a slice of a wider projection output
    const float eps = 1e-6f;
    // kv_scale 0.005: |value| > 2.24 saturates to +-448, so the clamp is exercised (a few % of the values).
    const float kv_scale = fp8 ? 0.005f : 1.0f;
    const auto kv = random_bf16(static_cast<size_t>(std::max<int64_t>(num_tokens, 1) * kv_stride), rng, 2.0f);
    const auto w_f = random_uniform(static_cast<size_t>(lat), rng, 0.5f, 1.5f);
    std::vector<uint16_t> w(w_f.size());
    for (size_t i = 0; i < w.size(); ++i)
        w[i] = float_to_bf16(w_f[i]);
    const auto positions_f = random_uniform(static_cast<size_t>(num_tokens), rng, 0.0f, 20000.0f);
    std::vector<int32_t> positions(positions_f.begin(), positions_f.end());
    const int64_t num_slots = 2 * num_tokens + 5;
    std::vector<int64_t> slots(static_cast<size_t>(num_slots));
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    std::vector<int64_t> slot_mapping(slots.begin(), slots.begin() + num_tokens);
    for (int64_t t = 1; t < num_tokens; t += 3)
        slot_mapping[static_cast<size_t>(t)] = -1;  // padding tokens
    const cpu::YarnParams yarn = test_yarn();
    const std::vector<float> inv_freq = cpu::yarn_inv_freq(rope, 50000.0, yarn);
    const float rope_scale = cpu::yarn_cos_sin_scale(yarn);

    // Reference: fp32 entries [num_tokens, entry] = rms_norm(latent) | rope(k_pe), written into a poisoned cache.
    const size_t elem = fp8 ? 1 : 2;
    std::vector<uint8_t> cache_ref(static_cast<size_t>(num_slots * entry) * elem, 0xFF);
    if (num_tokens > 0) {
        const auto kv_f = bf16_to_floats(kv);
        std::vector<float> entries(static_cast<size_t>(num_tokens * entry));
        const Tensor weight = Tensor::view(DType::BF16, {lat}, w.data());
        cpu::rms_norm(kv_f.data(), num_tokens, lat, kv_stride, weight, eps, entries.data(), entry);
        for (int64_t t = 0; t < num_tokens; ++t) {
            std::copy_n(kv_f.data() + t * kv_stride + lat, rope, entries.data() + t * entry + lat);
        }
        cpu::rope_interleaved(entries.data() + lat, num_tokens, 1, rope, entry, 0, positions.data(), inv_freq.data(),
                              rope_scale);
        const cpu::LatentCacheView view{cache_ref.data(), fp8 ? DType::F8_E4M3 : DType::BF16, num_slots, entry,
                                        kv_scale};
        cpu::write_latent_cache(entries.data(), num_tokens, slot_mapping.data(), view);
    }

    const auto kv_dev = to_device(kv);
    const auto w_dev = to_device(w);
    const auto pos_dev = to_device(positions);
    const auto slot_dev = to_device(slot_mapping);
    const auto freq_dev = to_device(inv_freq);
    cuda::DeviceBuffer cache_dev(cache_ref.size());
    cache_dev.fill_bytes(0xFF);
    cuda::LatentStoreParams p;
    p.kv = kv_dev.as<uint16_t>();
    p.norm_weight = w_dev.as<uint16_t>();
    p.positions = pos_dev.as<int32_t>();
    p.slot_mapping = slot_dev.as<int64_t>();
    p.inv_freq = freq_dev.as<float>();
    p.rope_scale = rope_scale;
    p.eps = eps;
    p.cache = cuda::LatentCacheRef{cache_dev.data(), fp8, kv_scale, num_slots};
    p.num_tokens = num_tokens;
    p.kv_stride = kv_stride;
    p.lat = lat;
    p.rope = rope;
    cuda::launch_latent_store(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    // Slots of padding tokens and slots nobody maps must still hold the poison: the reference cache has it there.
    if (fp8) {
        expect_codes_match(to_host<uint8_t>(cache_dev, cache_ref.size()), cache_ref, 8, "fp8 cache");
    } else {
        std::vector<uint16_t> ref16(cache_ref.size() / 2);
        std::memcpy(ref16.data(), cache_ref.data(), cache_ref.size());
        expect_codes_match(to_host<uint16_t>(cache_dev, ref16.size()), ref16, 16, "bf16 cache");
    }
}

TEST_F(MlaOps, LatentStore) {
    std::mt19937 rng(11);
    for (const bool fp8 : {false, true}) {
        for (const int64_t n : {0, 1, 3, 37}) {
            check_latent_store(512, 64, fp8, n, rng);  // Kimi-K2 / DeepSeek-V3
            check_latent_store(128, 32, fp8, n, rng);  // tiny-kimi-k2
            check_latent_store(192, 16, fp8, n, rng);  // small-dsv3
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Query RoPE

void check_query_rope(int heads, int nope, int rope, int lat, int64_t num_tokens, std::mt19937& rng) {
    SCOPED_TRACE("heads " + std::to_string(heads) + " rope " + std::to_string(rope) + " tokens " +
                 std::to_string(num_tokens));
    const int64_t q_row = int64_t{heads} * (nope + rope);
    const int64_t abs_row = int64_t{heads} * (lat + rope);
    const auto q = random_bf16(static_cast<size_t>(num_tokens * q_row), rng, 2.0f);
    const auto positions_f = random_uniform(static_cast<size_t>(num_tokens), rng, 0.0f, 20000.0f);
    std::vector<int32_t> positions(positions_f.begin(), positions_f.end());
    const cpu::YarnParams yarn = test_yarn();
    const std::vector<float> inv_freq = cpu::yarn_inv_freq(rope, 50000.0, yarn);
    const float rope_scale = cpu::yarn_cos_sin_scale(yarn);

    // Reference: q_abs stays poisoned (0xFFFF) except the rope part of each head.
    std::vector<uint16_t> ref(static_cast<size_t>((num_tokens + 1) * abs_row), 0xFFFF);  // one padding token
    if (num_tokens > 0) {
        auto q_f = bf16_to_floats(q);
        cpu::rope_interleaved(q_f.data() + nope, num_tokens, heads, rope, q_row, nope + rope, positions.data(),
                              inv_freq.data(), rope_scale);
        for (int64_t t = 0; t < num_tokens; ++t) {
            for (int64_t h = 0; h < heads; ++h) {
                for (int i = 0; i < rope; ++i) {
                    ref[static_cast<size_t>(t * abs_row + h * (lat + rope) + lat + i)] =
                        float_to_bf16(q_f[static_cast<size_t>(t * q_row + h * (nope + rope) + nope + i)]);
                }
            }
        }
    }
    const auto q_dev = to_device(q);
    const auto pos_dev = to_device(positions);
    const auto freq_dev = to_device(inv_freq);
    cuda::DeviceBuffer abs_dev(ref.size() * 2);
    abs_dev.fill_bytes(0xFF);
    cuda::QueryRopeParams p;
    p.q = q_dev.as<uint16_t>();
    p.q_abs = abs_dev.as<uint16_t>();
    p.positions = pos_dev.as<int32_t>();
    p.inv_freq = freq_dev.as<float>();
    p.rope_scale = rope_scale;
    p.num_tokens = num_tokens;
    p.heads = heads;
    p.nope = nope;
    p.rope = rope;
    p.lat = lat;
    cuda::launch_query_rope(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    expect_codes_match(to_host<uint16_t>(abs_dev, ref.size()), ref, 16, "q_abs");
}

TEST_F(MlaOps, QueryRope) {
    std::mt19937 rng(12);
    for (const int64_t n : {0, 1, 3, 17}) {
        check_query_rope(64, 128, 64, 512, n, rng);  // Kimi-K2
        check_query_rope(4, 64, 32, 128, n, rng);    // tiny-kimi-k2
        check_query_rope(16, 32, 16, 192, n, rng);   // small-dsv3
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Attention

struct SeqSpec {
    int context;    // tokens 0..context-1 are in the cache
    int num_query;  // the last num_query of them are this batch's query tokens (1: decode; < context: a chunk)
};

struct AttnCase {
    int heads;
    int lat;
    int rope;
    int nope;  // only for the softmax scale 1 / sqrt(nope + rope), as the models use it
    int block_size;
    bool fp8;
    std::vector<SeqSpec> seqs;
};

// Random paged cache and queries; the GPU output must match cpu::mla_attention_absorbed on the same bf16 / e4m3
// bytes. Tolerance: relative L2 < 1e-2 over the whole output and < 2e-2 per (token, head) row. The GPU rounds P to
// bf16 for the P.V MMA (2^-9 relative per weight, averaging out over the keys) and rounds the output once to bf16
// (2^-9 relative per value, ~1.1e-3 RMS); q and the cache are the same bits in both. A wrong key, mask, head or
// row lands far above (a single wrong row of 512 values is O(1) relative error for that row).
void check_attention(const AttnCase& c, std::mt19937& rng) {
    std::string trace = "heads " + std::to_string(c.heads) + " lat " + std::to_string(c.lat) + " rope " +
                        std::to_string(c.rope) + " block " + std::to_string(c.block_size) + (c.fp8 ? " fp8" : " bf16") +
                        " seqs";
    for (const auto& s : c.seqs)
        trace += " " + std::to_string(s.context) + "/" + std::to_string(s.num_query);
    SCOPED_TRACE(trace);
    const int entry = c.lat + c.rope;
    const int bs = c.block_size;
    const auto num_seqs = static_cast<int64_t>(c.seqs.size());
    int max_context = 0;
    int total_blocks = 0;
    int64_t num_tokens = 0;
    for (const auto& s : c.seqs) {
        max_context = std::max(max_context, s.context);
        total_blocks += (s.context + bs - 1) / bs;
        num_tokens += s.num_query;
    }
    const int max_blocks = (max_context + bs - 1) / bs + 1;  // one padding column of -1
    const int num_blocks = total_blocks + 3;                 // three blocks nobody owns: NaN
    const int64_t num_slots = int64_t{num_blocks} * bs;
    const float kv_scale = c.fp8 ? 0.02f : 1.0f;
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    std::vector<int32_t> tables(static_cast<size_t>(num_seqs * max_blocks), -1);
    // Cache entries N(0, 1) (bf16, or e4m3 of value / kv_scale); everything not written stays NaN (0xFF bytes).
    const size_t elem = c.fp8 ? 1 : 2;
    std::vector<uint8_t> cache(static_cast<size_t>(num_slots * entry) * elem, 0xFF);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<int32_t> token_seq;
    std::vector<int32_t> positions;
    std::vector<int32_t> query_start{0};
    int next = 0;
    for (int64_t s = 0; s < num_seqs; ++s) {
        const SeqSpec& spec = c.seqs[static_cast<size_t>(s)];
        for (int b = 0; b < (spec.context + bs - 1) / bs; ++b) {
            tables[static_cast<size_t>(s * max_blocks + b)] = ids[static_cast<size_t>(next++)];
        }
        for (int j = 0; j < spec.context; ++j) {
            const int64_t slot = int64_t{tables[static_cast<size_t>(s * max_blocks + j / bs)]} * bs + j % bs;
            for (int d = 0; d < entry; ++d) {
                const size_t i = static_cast<size_t>(slot * entry + d);
                if (c.fp8) {
                    cache[i] = float_to_fp8_e4m3(dist(rng) / kv_scale);
                } else {
                    const uint16_t v = float_to_bf16(dist(rng));
                    std::memcpy(&cache[2 * i], &v, 2);
                }
            }
        }
        for (int j = spec.context - spec.num_query; j < spec.context; ++j) {
            token_seq.push_back(static_cast<int32_t>(s));
            positions.push_back(j);
        }
        query_start.push_back(static_cast<int32_t>(positions.size()));
    }
    const auto q = random_bf16(static_cast<size_t>(num_tokens * c.heads * entry), rng);
    const float softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.nope + c.rope));
    const int64_t out_size = num_tokens * c.heads * c.lat;

    std::vector<float> out_ref(static_cast<size_t>(out_size));
    if (num_tokens > 0) {
        const auto q_f = bf16_to_floats(q);
        cpu::MlaAttentionArgs args;
        args.q = q_f.data();
        args.num_tokens = num_tokens;
        args.num_heads = c.heads;
        args.kv_lora_rank = c.lat;
        args.rope_dim = c.rope;
        args.cache =
            cpu::LatentCacheView{cache.data(), c.fp8 ? DType::F8_E4M3 : DType::BF16, num_slots, entry, kv_scale};
        args.block_size = bs;
        args.block_tables = tables.data();
        args.max_blocks_per_seq = max_blocks;
        args.query_start = query_start.data();
        args.num_seqs = num_seqs;
        args.positions = positions.data();
        args.softmax_scale = softmax_scale;
        args.out = out_ref.data();
        cpu::mla_attention_absorbed(args);
    }

    const auto q_dev = to_device(q);
    const auto cache_dev = to_device(cache);
    const auto tables_dev = to_device(tables);
    const auto seq_dev = to_device(token_seq);
    const auto pos_dev = to_device(positions);
    const int64_t pad = int64_t{c.heads} * c.lat;  // one poisoned token row after the output
    cuda::DeviceBuffer out_dev(static_cast<size_t>(out_size + pad) * 2);
    out_dev.fill_bytes(0xFF);
    cuda::MlaAttentionParams p;
    p.q = q_dev.as<uint16_t>();
    p.cache = cuda::LatentCacheRef{cache_dev.data(), c.fp8, kv_scale, num_slots};
    p.block_tables = tables_dev.as<int32_t>();
    p.token_seq = seq_dev.as<int32_t>();
    p.positions = pos_dev.as<int32_t>();
    p.out = out_dev.as<uint16_t>();
    p.num_tokens = num_tokens;
    p.heads = c.heads;
    p.lat = c.lat;
    p.rope = c.rope;
    p.block_size = bs;
    p.max_blocks_per_seq = max_blocks;
    p.max_context = max_context;
    p.softmax_scale = softmax_scale;
    cuda::launch_mla_attention(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out_bits = to_host<uint16_t>(out_dev, static_cast<size_t>(out_size + pad));
    std::vector<float> out(static_cast<size_t>(out_size));
    for (size_t i = 0; i < out.size(); ++i)
        out[i] = bf16_to_float(out_bits[i]);
    if (num_tokens > 0) {
        EXPECT_LT(rel_l2(out, out_ref), 1e-2);
    }
    for (int64_t row = 0; row < num_tokens * c.heads; ++row) {
        const auto begin = static_cast<std::ptrdiff_t>(row * c.lat);
        const std::vector<float> a(out.begin() + begin, out.begin() + begin + c.lat);
        const std::vector<float> b(out_ref.begin() + begin, out_ref.begin() + begin + c.lat);
        const double err = rel_l2(a, b);
        ASSERT_LT(err, 2e-2) << "token " << row / c.heads << " head " << row % c.heads << " (position "
                             << positions[static_cast<size_t>(row / c.heads)] << ")";
    }
    for (int64_t i = out_size; i < out_size + pad; ++i) {
        ASSERT_EQ(out_bits[static_cast<size_t>(i)], 0xFFFF) << "wrote past the output at " << i;
    }
}

// A prefill chunk attending to a cached prefix (positions 63..99), a decode token, a 1-token sequence, a short
// prefill: contexts not multiples of 64, blocks shuffled over the cache.
const std::vector<SeqSpec> kMixedBatch = {{100, 37}, {300, 1}, {1, 1}, {65, 3}};

TEST_F(MlaOps, AttentionKimiK2) {
    std::mt19937 rng(13);
    for (const bool fp8 : {false, true}) {
        check_attention({64, 512, 64, 128, 64, fp8, kMixedBatch}, rng);
        check_attention({64, 512, 64, 128, 64, fp8, {{1, 1}}}, rng);
        check_attention({64, 512, 64, 128, 64, fp8, {{64, 64}, {129, 2}}}, rng);
        check_attention({64, 512, 64, 128, 64, fp8, {{2000, 2}}}, rng);  // 32 key tiles of online softmax
    }
}

TEST_F(MlaOps, AttentionDeepSeekV3) {
    std::mt19937 rng(14);
    check_attention({128, 512, 64, 128, 64, false, {{70, 2}, {200, 1}}}, rng);  // two head groups per token
    check_attention({128, 512, 64, 128, 64, true, {{70, 2}}}, rng);
}

TEST_F(MlaOps, AttentionTiny) {
    std::mt19937 rng(15);
    // 16 tokens of 4 heads per CTA: CTAs span sequence boundaries (one key pass per sequence).
    const std::vector<SeqSpec> seqs = {{700, 50}, {5, 5}, {129, 1}, {1, 1}, {64, 64}, {90, 1}, {33, 7}};
    for (const bool fp8 : {false, true}) {
        check_attention({4, 128, 32, 64, 64, fp8, seqs}, rng);
        check_attention({4, 128, 32, 64, 16, fp8, seqs}, rng);  // blocks smaller than a key tile
    }
}

TEST_F(MlaOps, AttentionSmallDsv3) {
    std::mt19937 rng(16);
    // Decode batch: every token its own sequence (4 per CTA), plus a long prefill chunk.
    const std::vector<SeqSpec> seqs = {{33, 1}, {200, 1}, {64, 1}, {1, 1}, {1000, 20}, {2, 1}};
    for (const bool fp8 : {false, true}) {
        check_attention({16, 192, 16, 32, 64, fp8, seqs}, rng);
    }
}

TEST_F(MlaOps, AttentionOddShapes) {
    std::mt19937 rng(17);
    // 10 heads (6 tokens per CTA, 4 idle rows); lat + rope = 70 is not a multiple of 8 (element-wise loads).
    for (const bool fp8 : {false, true}) {
        check_attention({10, 64, 6, 16, 32, fp8, {{45, 9}, {3, 1}, {130, 4}}}, rng);
        check_attention({1, 32, 2, 8, 64, fp8, {{77, 77}}}, rng);  // 1 head: 64 tokens per CTA
    }
}

TEST_F(MlaOps, EmptyBatches) {
    std::mt19937 rng(18);
    check_attention({64, 512, 64, 128, 64, false, {}}, rng);
    check_attention({64, 512, 64, 128, 64, false, {{10, 0}}}, rng);  // a sequence without query tokens
}

// Timing of an 8192-token causal prefill of one sequence at Kimi-K2 shape (64 heads, lat 512, rope 64), BF16 and
// FP8 caches, with a CPU spot check of three tokens (first, middle, last). Run on the GPU with
// `test_mla_ops --gtest_also_run_disabled_tests --gtest_filter='*PrefillPerf*'`.
TEST_F(MlaOps, DISABLED_PrefillPerf8k) {
    constexpr int kTokens = 8192;
    constexpr int kHeads = 64;
    constexpr int kLat = 512;
    constexpr int kEntry = 576;
    constexpr int kBlock = 64;
    constexpr int kBlocks = kTokens / kBlock;
    std::mt19937 rng(19);
    std::vector<int32_t> table(kBlocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng);
    std::vector<int32_t> positions(kTokens);
    std::iota(positions.begin(), positions.end(), 0);
    const std::vector<int32_t> token_seq(kTokens, 0);
    // q: a random block repeated (generating 300M normals would dominate the test).
    const auto q_block = random_bf16(size_t{1} << 20, rng);
    const size_t q_size = size_t{kTokens} * kHeads * kEntry;
    std::vector<uint16_t> q(q_size);
    for (size_t i = 0; i < q_size; ++i)
        q[i] = q_block[i % q_block.size()];
    const auto q_dev = to_device(q);
    const auto table_dev = to_device(table);
    const auto pos_dev = to_device(positions);
    const auto seq_dev = to_device(token_seq);
    cuda::DeviceBuffer out_dev(size_t{kTokens} * kHeads * kLat * 2);
    const float softmax_scale = 1.0f / std::sqrt(192.0f);
    for (const bool fp8 : {false, true}) {
        const float kv_scale = fp8 ? 0.02f : 1.0f;
        std::vector<uint8_t> cache(size_t{kTokens} * kEntry * (fp8 ? 1 : 2));
        std::normal_distribution<float> dist(0.0f, 1.0f);
        for (size_t i = 0; i < size_t{kTokens} * kEntry; ++i) {
            if (fp8) {
                cache[i] = float_to_fp8_e4m3(dist(rng) / kv_scale);
            } else {
                const uint16_t v = float_to_bf16(dist(rng));
                std::memcpy(&cache[2 * i], &v, 2);
            }
        }
        const auto cache_dev = to_device(cache);
        out_dev.fill_bytes(0xFF);
        cuda::MlaAttentionParams p;
        p.q = q_dev.as<uint16_t>();
        p.cache = cuda::LatentCacheRef{cache_dev.data(), fp8, kv_scale, int64_t{kTokens}};
        p.block_tables = table_dev.as<int32_t>();
        p.token_seq = seq_dev.as<int32_t>();
        p.positions = pos_dev.as<int32_t>();
        p.out = out_dev.as<uint16_t>();
        p.num_tokens = kTokens;
        p.heads = kHeads;
        p.lat = kLat;
        p.rope = kEntry - kLat;
        p.block_size = kBlock;
        p.max_blocks_per_seq = kBlocks;
        p.max_context = kTokens;
        p.softmax_scale = softmax_scale;
        cuda::launch_mla_attention(p, nullptr);  // warm-up
        cudaEvent_t start;
        cudaEvent_t stop;
        CUDA_CHECK(cudaEventCreate(&start));
        CUDA_CHECK(cudaEventCreate(&stop));
        constexpr int kRuns = 3;
        CUDA_CHECK(cudaEventRecord(start, nullptr));
        for (int i = 0; i < kRuns; ++i)
            cuda::launch_mla_attention(p, nullptr);
        CUDA_CHECK(cudaEventRecord(stop, nullptr));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        CUDA_CHECK(cudaEventDestroy(start));
        CUDA_CHECK(cudaEventDestroy(stop));
        ms /= kRuns;
        const double flop = 2.0 * kHeads * (double{kTokens} * (kTokens + 1) / 2) * (kEntry + kLat);
        std::printf("mla_attention 8k causal prefill, %s cache: %.2f ms, %.1f TFLOP/s\n", fp8 ? "fp8" : "bf16", ms,
                    flop / (ms * 1e-3) / 1e12);

        const auto out_bits = to_host<uint16_t>(out_dev, size_t{kTokens} * kHeads * kLat);
        for (const int t : {0, kTokens / 2 - 1, kTokens - 1}) {
            SCOPED_TRACE("token " + std::to_string(t) + (fp8 ? " fp8" : " bf16"));
            std::vector<float> q_t(size_t{kHeads} * kEntry);
            for (size_t i = 0; i < q_t.size(); ++i)
                q_t[i] = bf16_to_float(q[static_cast<size_t>(t) * kHeads * kEntry + i]);
            std::vector<float> ref(size_t{kHeads} * kLat);
            const int32_t query_start[2] = {0, 1};
            cpu::MlaAttentionArgs args;
            args.q = q_t.data();
            args.num_tokens = 1;
            args.num_heads = kHeads;
            args.kv_lora_rank = kLat;
            args.rope_dim = kEntry - kLat;
            args.cache = cpu::LatentCacheView{cache.data(), fp8 ? DType::F8_E4M3 : DType::BF16, int64_t{kTokens},
                                              kEntry, kv_scale};
            args.block_size = kBlock;
            args.block_tables = table.data();
            args.max_blocks_per_seq = kBlocks;
            args.query_start = query_start;
            args.num_seqs = 1;
            args.positions = &positions[static_cast<size_t>(t)];
            args.softmax_scale = softmax_scale;
            args.out = ref.data();
            cpu::mla_attention_absorbed(args);
            std::vector<float> got(ref.size());
            for (size_t i = 0; i < got.size(); ++i)
                got[i] = bf16_to_float(out_bits[static_cast<size_t>(t) * kHeads * kLat + i]);
            EXPECT_LT(rel_l2(got, ref), 1e-2);
        }
    }
}

// Validation happens before any CUDA call: runs without a GPU too.
TEST(MlaOpsHost, RejectsBadShapes) {
    cuda::MlaAttentionParams attn;
    attn.num_tokens = 0;
    EXPECT_NO_THROW(cuda::launch_mla_attention(attn, nullptr));  // empty batch: nothing to do, nothing checked
    attn.num_tokens = 1;
    attn.heads = 4;
    attn.lat = 100;  // not a multiple of 32
    attn.rope = 32;
    EXPECT_THROW(cuda::launch_mla_attention(attn, nullptr), Error);
    attn.lat = 128;
    attn.rope = 33;  // odd
    EXPECT_THROW(cuda::launch_mla_attention(attn, nullptr), Error);
    attn.rope = 32;  // cache not allocated
    EXPECT_THROW(cuda::launch_mla_attention(attn, nullptr), Error);

    cuda::LatentStoreParams store;
    EXPECT_NO_THROW(cuda::launch_latent_store(store, nullptr));
    store.num_tokens = 2;
    store.lat = 640;  // > 512
    store.rope = 64;
    EXPECT_THROW(cuda::launch_latent_store(store, nullptr), Error);

    cuda::QueryRopeParams rope;
    EXPECT_NO_THROW(cuda::launch_query_rope(rope, nullptr));
    rope.num_tokens = 1;
    rope.heads = 4;
    rope.rope = 96;  // > 64
    EXPECT_THROW(cuda::launch_query_rope(rope, nullptr), Error);
}

}  // namespace
}  // namespace k2::ops_test
