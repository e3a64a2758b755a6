// The non-absorbed MLA prefill attention (cuda/mla_prefill.h) against cpu::causal_attention (plain causal attention
// in double, ref_mla_prefill.h) on random inputs: Kimi-K2 (64 heads) and DeepSeek-V3 (128 heads) shapes, 1, 3, 127,
// 129 tokens, several sequences with cached prefixes, a sequence without queries, empty batches. The inputs sit in
// the layouts the model uses (K_nope | V interleaved per head as kv_b_proj writes them, k_pe inside the 576-wide
// latent rows); everything the kernel must not read (the latent's c_kv part, padding columns, one row past every
// buffer) is NaN, and outputs are NaN-poisoned with a padding row and padding columns that must stay poisoned.
// Every case runs against every flash kernel (kVariants: mma.sync with 8 and 4 warps, the four wgmma variants).
// `test_mla_prefill --gtest_also_run_disabled_tests --gtest_filter='*Perf*'` is the benchmark mode (8192 causal
// tokens, 64 heads): every flash kernel, the model path, and the absorbed kernel (mla_ops.h) in the same run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cpu/ref_mla_prefill.h"
#include "backend/cpu/rope.h"
#include "backend/cuda/bf16_gemm.h"
#include "backend/cuda/mla_ops.h"
#include "backend/cuda/mla_prefill.h"
#include "core/error.h"
#include "ops_common.h"

namespace k2::ops_test {
namespace {

constexpr int kNope = cuda::kMlaPrefillNope;
constexpr int kRope = cuda::kMlaPrefillRope;
constexpr int kDqk = kNope + kRope;
constexpr int kDv = cuda::kMlaPrefillDv;
constexpr int kLat = 512;
constexpr int kEntry = kLat + kRope;  // latent row: c_kv | k_pe
constexpr uint16_t kPoison = 0xFFFF;  // bf16 NaN
// Kimi-K2's softmax scale: 1/sqrt(192) times YaRN's mscale(32, 1)^2 (peakier than 1/sqrt(d): larger P spread).
const float kSoftmaxScale = static_cast<float>(std::pow(0.1 * std::log(32.0) + 1.0, 2.0) / std::sqrt(192.0));

class MlaPrefill : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the CUDA op tests need a GPU (they run on the H200)";
        }
    }
};

// Every flash kernel launch_mla_prefill can run; each test case runs against all of them.
struct Variant {
    const char* name;
    cuda::MlaPrefillKernel kernel;
    int warps_per_cta;  // kMmaSync only
};
constexpr Variant kVariants[] = {
    {"mma.sync, 8 warps", cuda::MlaPrefillKernel::kMmaSync, 8},
    {"mma.sync, 4 warps", cuda::MlaPrefillKernel::kMmaSync, 4},
    {"wgmma", cuda::MlaPrefillKernel::kWgmma, 8},
    {"wgmma ping-pong", cuda::MlaPrefillKernel::kWgmmaPingPong, 8},
    {"wgmma overlap", cuda::MlaPrefillKernel::kWgmmaOverlap, 8},
    {"wgmma heads inner", cuda::MlaPrefillKernel::kWgmmaHeadsInner, 8},
};

struct Seq {
    int k_len;  // whole context (cached prefix + chunk)
    int q_len;  // queries at the end of the context
};

struct Case {
    int heads;
    std::vector<Seq> seqs;
    bool split_kv = false;  // K_nope and V in two buffers instead of interleaved per head
    int q_pad = 0;          // extra (NaN) columns per q row
    int out_pad = 0;        // extra columns per out row that must stay poisoned
};

// Host data of one case in the kernel's layouts, plus the float views the reference takes.
struct Inputs {
    std::vector<int32_t> cu_q{0};
    std::vector<int32_t> cu_k{0};
    int64_t num_tokens = 0;
    int64_t num_ctx = 0;
    int max_q_len = 0;
    int64_t q_stride = 0;
    int64_t kv_stride = 0;
    int64_t kv_head_stride = 0;
    std::vector<uint16_t> q;       // [num_tokens + 1, q_stride]
    std::vector<uint16_t> kv;      // [num_ctx + 1, kv_stride] (interleaved) or K_nope only (split)
    std::vector<uint16_t> v;       // [num_ctx + 1, kv_stride] (split only)
    std::vector<uint16_t> latent;  // [num_ctx + 1, 576]: c_kv NaN (never read), k_pe random
};

uint16_t random_bits(std::normal_distribution<float>& dist, std::mt19937& rng) {
    return float_to_bf16(dist(rng));
}

Inputs make_inputs(const Case& c, std::mt19937& rng) {
    Inputs in;
    for (const Seq& s : c.seqs) {
        in.cu_q.push_back(in.cu_q.back() + s.q_len);
        in.cu_k.push_back(in.cu_k.back() + s.k_len);
        in.max_q_len = std::max(in.max_q_len, s.q_len);
    }
    in.num_tokens = in.cu_q.back();
    in.num_ctx = in.cu_k.back();
    in.q_stride = int64_t{c.heads} * kDqk + c.q_pad;
    in.kv_head_stride = c.split_kv ? kNope : kNope + kDv;
    in.kv_stride = c.heads * in.kv_head_stride;
    std::normal_distribution<float> dist(0.0f, 1.0f);
    // One extra NaN row after every buffer: a read past the last token shows up as NaN in the output.
    in.q.assign(static_cast<size_t>((in.num_tokens + 1) * in.q_stride), kPoison);
    for (int64_t t = 0; t < in.num_tokens; ++t) {
        for (int64_t i = 0; i < int64_t{c.heads} * kDqk; ++i) {
            in.q[static_cast<size_t>(t * in.q_stride + i)] = random_bits(dist, rng);
        }
    }
    in.kv.assign(static_cast<size_t>((in.num_ctx + 1) * in.kv_stride), kPoison);
    if (c.split_kv) {
        in.v.assign(in.kv.size(), kPoison);
    }
    in.latent.assign(static_cast<size_t>((in.num_ctx + 1) * kEntry), kPoison);
    for (int64_t j = 0; j < in.num_ctx; ++j) {
        for (int64_t i = 0; i < in.kv_stride; ++i) {
            in.kv[static_cast<size_t>(j * in.kv_stride + i)] = random_bits(dist, rng);
            if (c.split_kv) {
                in.v[static_cast<size_t>(j * in.kv_stride + i)] = random_bits(dist, rng);
            }
        }
        for (int d = 0; d < kRope; ++d) {
            in.latent[static_cast<size_t>(j * kEntry + kLat + d)] = random_bits(dist, rng);
        }
    }
    return in;
}

// K = [K_nope | k_pe] per head and V as dense float arrays for the reference.
std::vector<float> reference(const Case& c, const Inputs& in) {
    const int64_t h_count = c.heads;
    std::vector<float> q(static_cast<size_t>(in.num_tokens * h_count * kDqk));
    for (int64_t t = 0; t < in.num_tokens; ++t) {
        for (int64_t i = 0; i < h_count * kDqk; ++i) {
            q[static_cast<size_t>(t * h_count * kDqk + i)] =
                bf16_to_float(in.q[static_cast<size_t>(t * in.q_stride + i)]);
        }
    }
    std::vector<float> k(static_cast<size_t>(in.num_ctx * h_count * kDqk));
    std::vector<float> v(static_cast<size_t>(in.num_ctx * h_count * kDv));
    const std::vector<uint16_t>& v_src = c.split_kv ? in.v : in.kv;
    const int64_t v_off = c.split_kv ? 0 : kNope;
    for (int64_t j = 0; j < in.num_ctx; ++j) {
        for (int64_t h = 0; h < h_count; ++h) {
            const int64_t base = j * in.kv_stride + h * in.kv_head_stride;
            float* kr = &k[static_cast<size_t>((j * h_count + h) * kDqk)];
            for (int d = 0; d < kNope; ++d)
                kr[d] = bf16_to_float(in.kv[static_cast<size_t>(base + d)]);
            for (int d = 0; d < kRope; ++d)
                kr[kNope + d] = bf16_to_float(in.latent[static_cast<size_t>(j * kEntry + kLat + d)]);
            float* vr = &v[static_cast<size_t>((j * h_count + h) * kDv)];
            for (int d = 0; d < kDv; ++d)
                vr[d] = bf16_to_float(v_src[static_cast<size_t>(base + v_off + d)]);
        }
    }
    std::vector<float> out(static_cast<size_t>(in.num_tokens * h_count * kDv));
    cpu::CausalAttentionArgs a;
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.cu_seqlens_q = in.cu_q.data();
    a.cu_seqlens_k = in.cu_k.data();
    a.num_seqs = static_cast<int64_t>(c.seqs.size());
    a.heads = h_count;
    a.d_qk = kDqk;
    a.d_v = kDv;
    a.softmax_scale = kSoftmaxScale;
    a.out = out.data();
    cpu::causal_attention(a);
    return out;
}

// One launch of a case and every check of its output (poisoned before the launch by the caller).
void check_launch(const Case& c, const Inputs& in, const cuda::MlaPrefillParams& p, const cuda::DeviceBuffer& out_dev,
                  int64_t out_stride, const std::vector<float>& ref) {
    const size_t out_count = static_cast<size_t>((in.num_tokens + 1) * out_stride);
    cuda::launch_mla_prefill(p, nullptr);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out_bits = to_host<uint16_t>(out_dev, out_count);
    if (in.num_tokens == 0) {
        for (const uint16_t b : out_bits) {
            ASSERT_EQ(b, kPoison) << "an empty batch wrote its output";
        }
        return;
    }
    std::vector<float> out(ref.size());
    for (int64_t t = 0; t <= in.num_tokens; ++t) {
        for (int64_t i = 0; i < out_stride; ++i) {
            const uint16_t b = out_bits[static_cast<size_t>(t * out_stride + i)];
            if (t == in.num_tokens || i >= int64_t{c.heads} * kDv) {
                ASSERT_EQ(b, kPoison) << "wrote outside the output: token " << t << " column " << i;
            } else {
                out[static_cast<size_t>(t * c.heads * kDv + i)] = bf16_to_float(b);
            }
        }
    }
    // Tolerances: the inputs are the same bf16 values on both sides; the kernel accumulates in fp32, rounds P to
    // bf16 (2^-9 relative per weight, averaging out over keys) and the output to bf16 (2^-9 relative per element):
    // expected rel L2 ~3e-3. 1e-2 overall, 2e-2 per (token, head) row of 128 values (NaN fails both).
    EXPECT_LT(rel_l2(out, ref), 1e-2);
    for (int64_t row = 0; row < in.num_tokens * c.heads; ++row) {
        const auto begin = static_cast<std::ptrdiff_t>(row * kDv);
        const std::vector<float> a(out.begin() + begin, out.begin() + begin + kDv);
        const std::vector<float> b(ref.begin() + begin, ref.begin() + begin + kDv);
        ASSERT_LT(rel_l2(a, b), 2e-2) << "token " << row / c.heads << " head " << row % c.heads;
    }
    // A query with a single key (position 0) outputs that key's V exactly: P = 1 is exact in bf16.
    for (size_t s = 0; s < c.seqs.size(); ++s) {
        if (c.seqs[s].k_len != c.seqs[s].q_len || c.seqs[s].q_len == 0)
            continue;
        const int64_t t = in.cu_q[s];
        const int64_t j = in.cu_k[s];
        for (int64_t h = 0; h < c.heads; ++h) {
            for (int d = 0; d < kDv; ++d) {
                const uint16_t want =
                    c.split_kv ? in.v[static_cast<size_t>(j * in.kv_stride + h * in.kv_head_stride + d)]
                               : in.kv[static_cast<size_t>(j * in.kv_stride + h * in.kv_head_stride + kNope + d)];
                ASSERT_EQ(out_bits[static_cast<size_t>(t * out_stride + h * kDv + d)], want)
                    << "position 0 of sequence " << s << " head " << h << " dim " << d;
            }
        }
    }
}

void check_case(const Case& c, std::mt19937& rng) {
    std::string name = "heads " + std::to_string(c.heads) + ", seqs";
    for (const Seq& s : c.seqs)
        name += " (" + std::to_string(s.k_len) + ", " + std::to_string(s.q_len) + ")";
    SCOPED_TRACE(name);
    const Inputs in = make_inputs(c, rng);
    const int64_t out_stride = int64_t{c.heads} * kDv + c.out_pad;
    const size_t out_count = static_cast<size_t>((in.num_tokens + 1) * out_stride);  // + one poisoned row

    const auto q_dev = to_device(in.q);
    const auto kv_dev = to_device(in.kv);
    const auto v_dev = to_device(c.split_kv ? in.v : std::vector<uint16_t>{});
    const auto latent_dev = to_device(in.latent);
    const auto cu_q_dev = to_device(in.cu_q);
    const auto cu_k_dev = to_device(in.cu_k);
    cuda::DeviceBuffer out_dev(out_count * 2);
    cuda::MlaPrefillParams p;
    p.q = q_dev.as<uint16_t>();
    p.k_nope = kv_dev.as<uint16_t>();
    p.v = c.split_kv ? v_dev.as<uint16_t>() : kv_dev.as<uint16_t>() + kNope;
    p.k_pe = latent_dev.as<uint16_t>() + kLat;
    p.cu_seqlens_q = cu_q_dev.as<int32_t>();
    p.cu_seqlens_k = cu_k_dev.as<int32_t>();
    p.out = out_dev.as<uint16_t>();
    p.num_tokens = in.num_tokens;
    p.q_stride = in.q_stride;
    p.kv_stride = in.kv_stride;
    p.kv_head_stride = in.kv_head_stride;
    p.k_pe_stride = kEntry;
    p.out_stride = out_stride;
    p.num_seqs = static_cast<int>(c.seqs.size());
    p.heads = c.heads;
    p.max_q_len = in.max_q_len;
    p.softmax_scale = kSoftmaxScale;
    const std::vector<float> ref = in.num_tokens > 0 ? reference(c, in) : std::vector<float>{};
    for (const Variant& v : kVariants) {
        SCOPED_TRACE(v.name);
        out_dev.fill_bytes(0xFF);
        p.kernel = v.kernel;
        p.warps_per_cta = v.warps_per_cta;
        check_launch(c, in, p, out_dev, out_stride, ref);
    }
}

TEST_F(MlaPrefill, KimiK2SingleSequences) {
    std::mt19937 rng(71);
    for (const int t : {1, 3, 127, 128, 129, 300}) {
        check_case({64, {{t, t}}}, rng);
    }
}

TEST_F(MlaPrefill, KimiK2CachedPrefixes) {
    std::mt19937 rng(72);
    // Chunks after cached prefixes (positions not multiples of a tile), a decode-like single query, a 1-token
    // sequence, a full prefill and a sequence without queries, in one launch.
    check_case({64, {{300, 37}, {1, 1}, {200, 200}, {1000, 129}, {77, 0}, {65, 1}}}, rng);
    check_case({64, {{700, 3}, {130, 127}}, true, 8, 8}, rng);  // split K/V buffers, padded q and out rows
}

TEST_F(MlaPrefill, DeepSeekV3) {
    std::mt19937 rng(73);
    check_case({128, {{150, 150}, {90, 20}}}, rng);
}

TEST_F(MlaPrefill, FewHeads) {
    std::mt19937 rng(74);
    check_case({1, {{513, 513}, {40, 7}}}, rng);  // 5 query tiles, heads in grid x = 1
    check_case({3, {{2, 2}, {5, 1}}, false, 16, 0}, rng);
}

TEST_F(MlaPrefill, EmptyBatches) {
    std::mt19937 rng(75);
    check_case({64, {}}, rng);
    check_case({64, {{10, 0}}}, rng);  // a sequence without queries: num_tokens 0
}

// The whole path of a model layer (run_mla_prefill_forward: latent gather from a paged cache, the two kv_b
// expansion GEMMs, the in-place query RoPE, the flash kernel) against a CPU reference that works from the same
// cache bytes and weights in fp32/fp64 (cpu::read_latent_entry, the expansion as plain loops, cpu::rope_interleaved,
// cpu::causal_attention). Tolerance: K_nope, V, the latents of an FP8 cache (times kv_scale) and the roped q_pe are
// rounded to bf16 on the GPU (2^-9 relative each) on top of the kernel's own rounding: rel L2 < 1e-2 overall, < 3e-2
// per (token, head) row.
void check_forward(bool fp8, const std::vector<Seq>& seqs, std::mt19937& rng, cuda::MlaPrefillKernel kernel) {
    SCOPED_TRACE(fp8 ? "fp8 cache" : "bf16 cache");
    constexpr int kHeads = 64;
    constexpr int kBlock = 64;
    const float kv_scale = fp8 ? 0.05f : 1.0f;
    std::vector<int32_t> cu_q{0};
    std::vector<int32_t> cu_k{0};
    int max_q_len = 0;
    int num_blocks = 0;
    for (const Seq& s : seqs) {
        cu_q.push_back(cu_q.back() + s.q_len);
        cu_k.push_back(cu_k.back() + s.k_len);
        max_q_len = std::max(max_q_len, s.q_len);
        num_blocks += (s.k_len + kBlock - 1) / kBlock + 1;  // one unused block per sequence
    }
    const int64_t num_tokens = cu_q.back();
    const int64_t num_ctx = cu_k.back();
    const int64_t num_slots = int64_t{num_blocks} * kBlock;
    std::vector<int32_t> block_ids(static_cast<size_t>(num_blocks));
    std::iota(block_ids.begin(), block_ids.end(), 0);
    std::shuffle(block_ids.begin(), block_ids.end(), rng);
    // The cache: every context token's entry random, everything else NaN (0xFF bytes).
    const size_t elem = fp8 ? 1 : 2;
    std::vector<uint8_t> cache(static_cast<size_t>(num_slots * kEntry) * elem, 0xFF);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<int64_t> slots;
    std::vector<int32_t> positions;
    size_t next_block = 0;
    for (const Seq& s : seqs) {
        const size_t first = next_block;
        next_block += static_cast<size_t>((s.k_len + kBlock - 1) / kBlock + 1);
        for (int j = 0; j < s.k_len; ++j) {
            const int64_t slot = int64_t{block_ids[first + static_cast<size_t>(j / kBlock)]} * kBlock + j % kBlock;
            slots.push_back(slot);
            for (int d = 0; d < kEntry; ++d) {
                const size_t i = static_cast<size_t>(slot * kEntry + d);
                if (fp8) {
                    cache[i] = float_to_fp8_e4m3(dist(rng) / kv_scale);
                } else {
                    const uint16_t v = float_to_bf16(dist(rng));
                    std::memcpy(&cache[2 * i], &v, 2);
                }
            }
        }
        for (int i = 0; i < s.q_len; ++i)
            positions.push_back(s.k_len - s.q_len + i);
    }
    const auto q = random_bf16(static_cast<size_t>(num_tokens * kHeads * kDqk), rng);
    const float w_sigma = 1.0f / std::sqrt(float{kLat});  // K_nope, V ~ N(0, 1)
    const auto w_uk = random_bf16(size_t{kHeads} * kNope * kLat, rng, w_sigma);
    const auto w_uv = random_bf16(size_t{kHeads} * kDv * kLat, rng, w_sigma);
    cpu::YarnParams yarn;
    yarn.yarn = true;
    yarn.factor = 32.0;
    yarn.mscale = 1.0;
    yarn.mscale_all_dim = 0.7;  // cos/sin scale != 1
    const std::vector<float> inv_freq = cpu::yarn_inv_freq(kRope, 50000.0, yarn);
    const float rope_scale = cpu::yarn_cos_sin_scale(yarn);

    // CPU reference.
    const cpu::LatentCacheView view{cache.data(), fp8 ? DType::F8_E4M3 : DType::BF16, num_slots, kEntry, kv_scale};
    std::vector<float> latent(static_cast<size_t>(num_ctx * kEntry));
    for (int64_t j = 0; j < num_ctx; ++j)
        cpu::read_latent_entry(view, slots[static_cast<size_t>(j)], &latent[static_cast<size_t>(j * kEntry)]);
    const std::vector<float> uk = bf16_to_floats(w_uk);
    const std::vector<float> uv = bf16_to_floats(w_uv);
    std::vector<float> k(static_cast<size_t>(num_ctx * kHeads * kDqk));
    std::vector<float> v(static_cast<size_t>(num_ctx * kHeads * kDv));
#pragma omp parallel for collapse(2)
    for (int64_t j = 0; j < num_ctx; ++j) {
        for (int64_t h = 0; h < kHeads; ++h) {
            const float* c = &latent[static_cast<size_t>(j * kEntry)];
            for (int d = 0; d < kNope; ++d) {
                double acc_k = 0.0;
                double acc_v = 0.0;
                const float* wk = &uk[static_cast<size_t>((h * kNope + d) * kLat)];
                const float* wv = &uv[static_cast<size_t>((h * kDv + d) * kLat)];
                for (int l = 0; l < kLat; ++l) {
                    acc_k += double{c[l]} * wk[l];
                    acc_v += double{c[l]} * wv[l];
                }
                k[static_cast<size_t>((j * kHeads + h) * kDqk + d)] = static_cast<float>(acc_k);
                v[static_cast<size_t>((j * kHeads + h) * kDv + d)] = static_cast<float>(acc_v);
            }
            for (int d = 0; d < kRope; ++d)
                k[static_cast<size_t>((j * kHeads + h) * kDqk + kNope + d)] = c[kLat + d];
        }
    }
    std::vector<float> qf = bf16_to_floats(q);
    if (num_tokens > 0) {
        cpu::rope_interleaved(qf.data() + kNope, num_tokens, kHeads, kRope, int64_t{kHeads} * kDqk, kDqk,
                              positions.data(), inv_freq.data(), rope_scale);
    }
    std::vector<float> ref(static_cast<size_t>(num_tokens * kHeads * kDv));
    cpu::CausalAttentionArgs a;
    a.q = qf.data();
    a.k = k.data();
    a.v = v.data();
    a.cu_seqlens_q = cu_q.data();
    a.cu_seqlens_k = cu_k.data();
    a.num_seqs = static_cast<int64_t>(seqs.size());
    a.heads = kHeads;
    a.d_qk = kDqk;
    a.d_v = kDv;
    a.softmax_scale = kSoftmaxScale;
    a.out = ref.data();
    cpu::causal_attention(a);

    // GPU.
    const auto q_dev = to_device(q);
    const auto cache_dev = to_device(cache);
    const auto slots_dev = to_device(slots);
    const auto pos_dev = to_device(positions);
    const auto inv_freq_dev = to_device(inv_freq);
    const auto uk_dev = to_device(w_uk);
    const auto uv_dev = to_device(w_uv);
    const auto cu_q_dev = to_device(cu_q);
    const auto cu_k_dev = to_device(cu_k);
    cuda::DeviceBuffer latent_dev(static_cast<size_t>(std::max<int64_t>(num_ctx, 1) * kEntry) * 2);
    cuda::DeviceBuffer k_nope_dev(static_cast<size_t>(std::max<int64_t>(num_ctx, 1) * kHeads * kNope) * 2);
    cuda::DeviceBuffer v_dev(static_cast<size_t>(std::max<int64_t>(num_ctx, 1) * kHeads * kDv) * 2);
    const size_t out_count = static_cast<size_t>((num_tokens + 1) * kHeads * kDv);  // + one poisoned row
    cuda::DeviceBuffer out_dev(out_count * 2);
    for (cuda::DeviceBuffer* b : {&latent_dev, &k_nope_dev, &v_dev, &out_dev})
        b->fill_bytes(0xFF);
    cuda::Bf16GemmRunner gemm;
    cuda::MlaPrefillForwardParams p;
    p.q = q_dev.as<uint16_t>();
    p.positions = pos_dev.as<int32_t>();
    p.inv_freq = inv_freq_dev.as<float>();
    p.rope_scale = rope_scale;
    p.cache = cuda::LatentCacheRef{cache_dev.data(), fp8, kv_scale, num_slots};
    p.ctx_slots = slots_dev.as<int64_t>();
    p.w_uk = uk_dev.as<uint16_t>();
    p.w_uv = uv_dev.as<uint16_t>();
    p.cu_seqlens_q = cu_q_dev.as<int32_t>();
    p.cu_seqlens_k = cu_k_dev.as<int32_t>();
    p.latent_ctx = latent_dev.as<uint16_t>();
    p.k_nope_ctx = k_nope_dev.as<uint16_t>();
    p.v_ctx = v_dev.as<uint16_t>();
    p.out = out_dev.as<uint16_t>();
    p.num_tokens = num_tokens;
    p.num_ctx = num_ctx;
    p.num_seqs = static_cast<int>(seqs.size());
    p.heads = kHeads;
    p.lat = kLat;
    p.max_q_len = max_q_len;
    p.softmax_scale = kSoftmaxScale;
    p.kernel = kernel;
    cuda::run_mla_prefill_forward(gemm, p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out_bits = to_host<uint16_t>(out_dev, out_count);
    std::vector<float> out(ref.size());
    for (size_t i = 0; i < out.size(); ++i)
        out[i] = bf16_to_float(out_bits[i]);
    for (size_t i = out.size(); i < out_count; ++i)
        ASSERT_EQ(out_bits[i], kPoison) << "wrote past the output at " << i;
    if (num_tokens == 0)
        return;
    EXPECT_LT(rel_l2(out, ref), 1e-2);
    for (int64_t row = 0; row < num_tokens * kHeads; ++row) {
        const auto begin = static_cast<std::ptrdiff_t>(row * kDv);
        const std::vector<float> x(out.begin() + begin, out.begin() + begin + kDv);
        const std::vector<float> y(ref.begin() + begin, ref.begin() + begin + kDv);
        ASSERT_LT(rel_l2(x, y), 3e-2) << "token " << row / kHeads << " head " << row % kHeads;
    }
}

TEST_F(MlaPrefill, ForwardFromPagedCache) {
    std::mt19937 rng(77);
    const std::vector<Seq> seqs = {{300, 37}, {129, 129}, {1, 1}, {70, 3}};
    for (const cuda::MlaPrefillKernel kernel :
         {cuda::MlaPrefillKernel::kAuto, cuda::MlaPrefillKernel::kMmaSync, cuda::MlaPrefillKernel::kWgmma,
          cuda::MlaPrefillKernel::kWgmmaPingPong, cuda::MlaPrefillKernel::kWgmmaOverlap,
          cuda::MlaPrefillKernel::kWgmmaHeadsInner}) {
        SCOPED_TRACE("kernel " + std::to_string(static_cast<int>(kernel)));
        check_forward(false, seqs, rng, kernel);
        check_forward(true, seqs, rng, kernel);
        check_forward(false, {}, rng, kernel);  // empty batch
    }
}

// Validation happens before any CUDA call: runs without a GPU too.
TEST(MlaPrefillHost, RejectsBadParams) {
    cuda::MlaPrefillParams p;
    EXPECT_NO_THROW(cuda::launch_mla_prefill(p, nullptr));  // empty: nothing checked, nothing launched
    p.num_tokens = 4;
    p.num_seqs = 1;
    p.heads = 2;
    p.max_q_len = 4;
    EXPECT_THROW(cuda::launch_mla_prefill(p, nullptr), Error);  // null pointers
    alignas(16) static uint16_t buf[64];
    alignas(16) static int32_t cu[2] = {0, 4};
    p.q = p.k_nope = p.v = p.k_pe = buf;
    p.out = buf;
    p.cu_seqlens_q = p.cu_seqlens_k = cu;
    p.q_stride = 2 * 192;
    p.kv_stride = 2 * 256;
    p.kv_head_stride = 256;
    p.k_pe_stride = 576;
    p.out_stride = 2 * 128;
    p.q_stride = 2 * 192 - 8;  // rows overlap
    EXPECT_THROW(cuda::launch_mla_prefill(p, nullptr), Error);
    p.q_stride = 2 * 192;
    p.k_pe_stride = 60;
    EXPECT_THROW(cuda::launch_mla_prefill(p, nullptr), Error);
    p.k_pe_stride = 576;
    p.v = buf + 1;  // not 16-byte aligned
    EXPECT_THROW(cuda::launch_mla_prefill(p, nullptr), Error);
    p.v = buf;
    p.softmax_scale = 0.0f;
    EXPECT_THROW(cuda::launch_mla_prefill(p, nullptr), Error);
    p.softmax_scale = 1.0f;
    p.kernel = cuda::MlaPrefillKernel::kMmaSync;
    p.warps_per_cta = 5;
    EXPECT_THROW(cuda::launch_mla_prefill(p, nullptr), Error);
    p.kernel = static_cast<cuda::MlaPrefillKernel>(17);
    EXPECT_THROW(cuda::launch_mla_prefill(p, nullptr), Error);
}

// Median time in ms of `runs` launches of `body` (one event pair each, after one warm-up).
template <typename F>
double median_ms(F&& body, int runs) {
    body();
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<double> times;
    cudaEvent_t start;
    cudaEvent_t stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    for (int i = 0; i < runs; ++i) {
        CUDA_CHECK(cudaEventRecord(start, nullptr));
        body();
        CUDA_CHECK(cudaEventRecord(stop, nullptr));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

// 8192 causal tokens of one sequence at Kimi-K2 shape: the kv_b expansion GEMM, the flash kernel, and the absorbed
// kernel (mla_ops.h, BF16 paged latent cache) as the baseline, in one run; a CPU spot check of three tokens.
TEST_F(MlaPrefill, DISABLED_Perf8k) {
    constexpr int kTokens = 8192;
    constexpr int kHeads = 64;
    std::mt19937 rng(76);
    // Random blocks repeated (generating ~500M normals would dominate the test); the period is not a multiple of a
    // row, so heads and tokens still see different values.
    const auto block = random_bf16((size_t{1} << 20) + 37, rng);
    auto fill = [&](size_t count) {
        std::vector<uint16_t> out(count);
        for (size_t i = 0; i < count; ++i)
            out[i] = block[i % block.size()];
        return out;
    };
    const auto q = fill(size_t{kTokens} * kHeads * kDqk);
    const auto latent = fill(size_t{kTokens} * kEntry);
    // kv_b_proj weight [heads * 256, 512], N(0, 1/512): K_nope and V come out ~N(0, 1) like the other inputs.
    const auto w_kvb = random_bf16(size_t{kHeads} * (kNope + kDv) * kLat, rng, 1.0f / std::sqrt(float{kLat}));
    const auto q_dev = to_device(q);
    const auto latent_dev = to_device(latent);
    const auto w_dev = to_device(w_kvb);
    cuda::DeviceBuffer kv_dev(size_t{kTokens} * kHeads * (kNope + kDv) * 2);
    cuda::DeviceBuffer out_dev(size_t{kTokens} * kHeads * kDv * 2);
    out_dev.fill_bytes(0xFF);
    kv_dev.fill_bytes(0xFF);
    const std::vector<int32_t> cu = {0, kTokens};
    const auto cu_dev = to_device(cu);

    cuda::Bf16GemmRunner gemm;
    cuda::Bf16GemmParams g;  // kv [T, heads * (K_nope | V)] = c_kv [T, 512] @ W_kvb^T
    g.a = latent_dev.as<uint16_t>();
    g.b = w_dev.as<uint16_t>();
    g.c = kv_dev.data();
    g.b_is_nk = true;
    g.m = kTokens;
    g.n = int64_t{kHeads} * (kNope + kDv);
    g.k = kLat;
    g.lda = kEntry;
    g.ldb = kLat;
    g.ldc = g.n;
    const double gemm_ms = median_ms([&] { gemm.run(g, nullptr); }, 10);

    cuda::MlaPrefillParams p;
    p.q = q_dev.as<uint16_t>();
    p.k_nope = kv_dev.as<uint16_t>();
    p.v = kv_dev.as<uint16_t>() + kNope;
    p.k_pe = latent_dev.as<uint16_t>() + kLat;
    p.cu_seqlens_q = cu_dev.as<int32_t>();
    p.cu_seqlens_k = cu_dev.as<int32_t>();
    p.out = out_dev.as<uint16_t>();
    p.num_tokens = kTokens;
    p.q_stride = int64_t{kHeads} * kDqk;
    p.kv_stride = int64_t{kHeads} * (kNope + kDv);
    p.kv_head_stride = kNope + kDv;
    p.k_pe_stride = kEntry;
    p.out_stride = int64_t{kHeads} * kDv;
    p.num_seqs = 1;
    p.heads = kHeads;
    p.max_q_len = kTokens;
    p.softmax_scale = kSoftmaxScale;
    const double flop = 2.0 * kHeads * (kDqk + kDv) * double{kTokens} * kTokens / 2;  // the brief's causal count
    double flash_ms = 1e30;
    std::printf(
        "mla_prefill 8192 causal tokens, 64 heads (TFLOP/s on 2*H*(192+128)*T^2/2; ratio: time of the first,\n"
        "the mma.sync baseline, over this one's):\n");
    double baseline_ms = 0.0;
    for (const Variant& v : kVariants) {
        p.kernel = v.kernel;
        p.warps_per_cta = v.warps_per_cta;
        const double ms = median_ms([&] { cuda::launch_mla_prefill(p, nullptr); }, 10);
        baseline_ms = baseline_ms > 0.0 ? baseline_ms : ms;
        std::printf("  flash, %-20s %9.1f us  %6.1f TFLOP/s  %5.2fx\n", v.name, ms * 1e3, flop / (ms * 1e-3) / 1e12,
                    baseline_ms / ms);
        flash_ms = std::min(flash_ms, ms);
    }

    // Baseline: the absorbed kernel over a BF16 latent cache of the same context (q_abs is random: only timed).
    const auto q_abs_dev = to_device(fill(size_t{kTokens} * kHeads * kEntry));
    std::vector<int32_t> table(kTokens / 64);
    std::iota(table.begin(), table.end(), 0);
    std::vector<int32_t> positions(kTokens);
    std::iota(positions.begin(), positions.end(), 0);
    const std::vector<int32_t> token_seq(kTokens, 0);
    const auto table_dev = to_device(table);
    const auto pos_dev = to_device(positions);
    const auto seq_dev = to_device(token_seq);
    cuda::DeviceBuffer o_lat_dev(size_t{kTokens} * kHeads * kLat * 2);
    cuda::MlaAttentionParams a;
    a.q = q_abs_dev.as<uint16_t>();
    a.cache = cuda::LatentCacheRef{latent_dev.data(), false, 1.0f, int64_t{kTokens}};
    a.block_tables = table_dev.as<int32_t>();
    a.token_seq = seq_dev.as<int32_t>();
    a.positions = pos_dev.as<int32_t>();
    a.out = o_lat_dev.as<uint16_t>();
    a.num_tokens = kTokens;
    a.heads = kHeads;
    a.lat = kLat;
    a.rope = kRope;
    a.block_size = 64;
    a.max_blocks_per_seq = kTokens / 64;
    a.max_context = kTokens;
    a.softmax_scale = kSoftmaxScale;
    const double absorbed_ms = median_ms([&] { cuda::launch_mla_attention(a, nullptr); }, 3);
    const double absorbed_flop = 2.0 * kHeads * (double{kTokens} * (kTokens + 1) / 2) * (kEntry + kLat);

    // The model's whole path: gather from the paged cache, two expansion GEMMs (W_UK, W_UV), RoPE, flash kernel.
    std::vector<int64_t> slots(kTokens);
    std::iota(slots.begin(), slots.end(), int64_t{0});
    const auto slots_dev = to_device(slots);
    const std::vector<float> inv_freq = cpu::yarn_inv_freq(kRope, 50000.0, cpu::YarnParams{});
    const auto inv_freq_dev = to_device(inv_freq);
    cuda::DeviceBuffer gathered_dev(size_t{kTokens} * kEntry * 2);
    cuda::DeviceBuffer k_nope_dev(size_t{kTokens} * kHeads * kNope * 2);
    cuda::DeviceBuffer v_dev(size_t{kTokens} * kHeads * kDv * 2);
    const auto q_path_dev = to_device(q);  // the path ropes q_pe in place: its own copy
    cuda::MlaPrefillForwardParams fw;
    fw.q = q_path_dev.as<uint16_t>();
    fw.positions = pos_dev.as<int32_t>();
    fw.inv_freq = inv_freq_dev.as<float>();
    fw.cache = cuda::LatentCacheRef{latent_dev.data(), false, 1.0f, int64_t{kTokens}};
    fw.ctx_slots = slots_dev.as<int64_t>();
    fw.w_uk = w_dev.as<uint16_t>();
    fw.w_uv = w_dev.as<uint16_t>() + size_t{kHeads} * kNope * kLat;
    fw.cu_seqlens_q = cu_dev.as<int32_t>();
    fw.cu_seqlens_k = cu_dev.as<int32_t>();
    fw.latent_ctx = gathered_dev.as<uint16_t>();
    fw.k_nope_ctx = k_nope_dev.as<uint16_t>();
    fw.v_ctx = v_dev.as<uint16_t>();
    fw.out = out_dev.as<uint16_t>();
    fw.num_tokens = kTokens;
    fw.num_ctx = kTokens;
    fw.num_seqs = 1;
    fw.heads = kHeads;
    fw.lat = kLat;
    fw.max_q_len = kTokens;
    fw.softmax_scale = kSoftmaxScale;
    fw.kernel = cuda::MlaPrefillKernel::kMmaSync;
    const double path_mma_ms = median_ms([&] { cuda::run_mla_prefill_forward(gemm, fw, nullptr); }, 10);
    fw.kernel = cuda::MlaPrefillKernel::kAuto;
    const double path_ms = median_ms([&] { cuda::run_mla_prefill_forward(gemm, fw, nullptr); }, 10);

    std::printf("  model path (gather, W_UK + W_UV GEMMs, RoPE, flash) %9.1f us (%.0fk tokens/s/layer of attention)\n",
                path_ms * 1e3, kTokens / (path_ms * 1e-3) / 1e3);
    std::printf("  model path with the mma.sync kernel                 %9.1f us (%.0fk tokens/s/layer of attention)\n",
                path_mma_ms * 1e3, kTokens / (path_mma_ms * 1e-3) / 1e3);
    std::printf("  kv_b expansion GEMM         %9.1f us  %6.1f TFLOP/s ([8192,512] x [512,16384], cuBLASLt)\n",
                gemm_ms * 1e3, 2.0 * kTokens * g.n * kLat / (gemm_ms * 1e-3) / 1e12);
    std::printf("  best flash + expansion      %9.1f us  (%.0fk tokens/s/layer of attention)\n",
                (flash_ms + gemm_ms) * 1e3, kTokens / ((flash_ms + gemm_ms) * 1e-3) / 1e3);
    std::printf("  baseline absorbed (576/512) %9.1f us  %6.1f TFLOP/s own count; %.2fx slower than flash+GEMM\n",
                absorbed_ms * 1e3, absorbed_flop / (absorbed_ms * 1e-3) / 1e12, absorbed_ms / (flash_ms + gemm_ms));

    // Spot check of every kernel's output on the unchanged q at the first, a middle and the last token, all heads
    // (CPU, double).
    const auto kv_bits = to_host<uint16_t>(kv_dev, size_t{kTokens} * kHeads * (kNope + kDv));
    constexpr int kSpotTokens[] = {0, kTokens / 2 + 17, kTokens - 1};
    std::vector<std::vector<float>> refs;
    for (const int t : kSpotTokens) {
        const int len = t + 1;
        std::vector<float> qf(size_t{kHeads} * kDqk);
        for (size_t i = 0; i < qf.size(); ++i)
            qf[i] = bf16_to_float(q[static_cast<size_t>(t) * kHeads * kDqk + i]);
        std::vector<float> kf(static_cast<size_t>(len) * kHeads * kDqk);
        std::vector<float> vf(static_cast<size_t>(len) * kHeads * kDv);
        for (int j = 0; j < len; ++j) {
            for (int h = 0; h < kHeads; ++h) {
                const size_t base = (static_cast<size_t>(j) * kHeads + h) * (kNope + kDv);
                float* kr = &kf[(static_cast<size_t>(j) * kHeads + h) * kDqk];
                for (int d = 0; d < kNope; ++d)
                    kr[d] = bf16_to_float(kv_bits[base + d]);
                for (int d = 0; d < kRope; ++d)
                    kr[kNope + d] = bf16_to_float(latent[static_cast<size_t>(j) * kEntry + kLat + d]);
                float* vr = &vf[(static_cast<size_t>(j) * kHeads + h) * kDv];
                for (int d = 0; d < kDv; ++d)
                    vr[d] = bf16_to_float(kv_bits[base + kNope + d]);
            }
        }
        // The one query at position t: a sequence of 1 query over len keys.
        const int32_t cq[2] = {0, 1};
        const int32_t ck[2] = {0, len};
        std::vector<float> ref(size_t{kHeads} * kDv);
        cpu::CausalAttentionArgs r;
        r.q = qf.data();
        r.k = kf.data();
        r.v = vf.data();
        r.cu_seqlens_q = cq;
        r.cu_seqlens_k = ck;
        r.num_seqs = 1;
        r.heads = kHeads;
        r.d_qk = kDqk;
        r.d_v = kDv;
        r.softmax_scale = kSoftmaxScale;
        r.out = ref.data();
        cpu::causal_attention(r);
        refs.push_back(std::move(ref));
    }
    for (const Variant& v : kVariants) {
        SCOPED_TRACE(v.name);
        p.kernel = v.kernel;
        p.warps_per_cta = v.warps_per_cta;
        out_dev.fill_bytes(0xFF);
        cuda::launch_mla_prefill(p, nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());
        const auto out_bits = to_host<uint16_t>(out_dev, size_t{kTokens} * kHeads * kDv);
        for (size_t k = 0; k < refs.size(); ++k) {
            const size_t t = static_cast<size_t>(kSpotTokens[k]);
            std::vector<float> got(refs[k].size());
            for (size_t i = 0; i < got.size(); ++i)
                got[i] = bf16_to_float(out_bits[t * kHeads * kDv + i]);
            EXPECT_LT(rel_l2(got, refs[k]), 1e-2) << "token " << t;  // same tolerance as the small cases
        }
    }
}

}  // namespace
}  // namespace k2::ops_test
