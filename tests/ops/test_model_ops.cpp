// Tests of the BF16 cuBLASLt GEMM runner (bf16_gemm.h) and the small model ops (model_ops.h) against host
// references computed here from the same bf16 inputs (double-precision dot products, k2::cpu::rms_norm,
// k2::float_to_bf16, plain row copies). Outputs and their padding are NaN-poisoned (0xFF bytes) before each call;
// everything a call does not own must still hold its old bytes afterwards. Without a GPU the CUDA tests skip with
// the reason; the parameter validation of model_ops (which runs before any CUDA call) is tested everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "backend/cpu/norm.h"
#include "backend/cuda/bf16_gemm.h"
#include "backend/cuda/model_ops.h"
#include "core/error.h"
#include "core/tensor.h"
#include "ops_common.h"

namespace k2::ops_test {
namespace {

class CudaModelOps : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP()
                << "no CUDA device: the CUDA op tests need a GPU (they run on the H200 via bench/gpu_kernels.sh)";
        }
    }
};

// fn must throw k2::Error mentioning `needle`: a different failure (e.g. a CUDA error from a launch that the
// validation should have stopped) does not count.
template <typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
    try {
        fn();
        ADD_FAILURE() << "no k2::Error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// ---- bf16 GEMM ----

struct GemmCase {
    std::string name;
    bool b_is_nk;
    bool c_f32;
    int64_t m, n, k;
    int64_t lda, ldb, ldc;
    int batch = 1;
    int64_t a_batch_stride = 0;
    int64_t b_batch_stride = 0;
    int64_t c_batch_stride = 0;
};

// Elements of a batched row-major operand up to the end of the last batch's last row.
int64_t span(int64_t rows, int64_t width, int64_t ld, int batch, int64_t batch_stride) {
    return (batch - 1) * batch_stride + (rows - 1) * ld + width;
}

// Tolerances (relative L2 over all outputs, against a double-precision sum of the same bf16 products):
// - f32 out: bf16 x bf16 products are exact in fp32 and cuBLASLt accumulates in fp32 (CUBLAS_COMPUTE_32F), so
//   only the fp32 summation order differs: expected ~1e-6 at k = 7168. 2e-3 still rejects any wrong element,
//   operand, transpose or stride (those land near 1) while tolerating split-K or a different reduction tree.
// - bf16 out: the one final rounding to bf16 is up to 2^-9 relative per element (~1.1e-3 RMS); 1e-2 leaves room.
void run_gemm_case(cuda::Bf16GemmRunner& runner, const GemmCase& g, std::mt19937& rng) {
    SCOPED_TRACE(fmt::format("{}: m={} n={} k={} lda={} ldb={} ldc={} batch={}", g.name, g.m, g.n, g.k, g.lda, g.ldb,
                             g.ldc, g.batch));
    const int64_t b_rows = g.b_is_nk ? g.n : g.k;
    const int64_t b_width = g.b_is_nk ? g.k : g.n;
    const int64_t a_count = span(g.m, g.k, g.lda, g.batch, g.a_batch_stride);
    const int64_t b_count = span(b_rows, b_width, g.ldb, g.batch, g.b_batch_stride);
    // Whole rows of c, so the padding after n in the last row is checked too.
    const int64_t c_count = std::max(span(g.m, g.n, g.ldc, g.batch, g.c_batch_stride), g.m * g.ldc);
    const auto a = random_bf16(sz(a_count), rng, 1.0f);
    const auto b = random_bf16(sz(b_count), rng, 1.0f / std::sqrt(static_cast<float>(g.k)));
    const auto a_dev = to_device(a);
    const auto b_dev = to_device(b);
    const size_t c_elem = g.c_f32 ? 4 : 2;
    cuda::DeviceBuffer c_dev(sz(c_count) * c_elem);
    c_dev.fill_bytes(0xFF);

    cuda::Bf16GemmParams p;
    p.a = a_dev.as<uint16_t>();
    p.b = b_dev.as<uint16_t>();
    p.c = c_dev.data();
    p.b_is_nk = g.b_is_nk;
    p.c_f32 = g.c_f32;
    p.m = g.m;
    p.n = g.n;
    p.k = g.k;
    p.lda = g.lda;
    p.ldb = g.ldb;
    p.ldc = g.ldc;
    p.batch = g.batch;
    p.a_batch_stride = g.a_batch_stride;
    p.b_batch_stride = g.b_batch_stride;
    p.c_batch_stride = g.c_batch_stride;
    runner.run(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());

    std::vector<uint32_t> c_bits(sz(c_count));  // raw bits, widened (bf16 in the low half)
    if (g.c_f32) {
        c_bits = to_host<uint32_t>(c_dev, sz(c_count));
    } else {
        const auto c16 = to_host<uint16_t>(c_dev, sz(c_count));
        std::copy(c16.begin(), c16.end(), c_bits.begin());
    }
    const auto af = bf16_to_floats(a);
    const auto bf = bf16_to_floats(b);
    std::vector<float> got;
    std::vector<float> ref;
    std::vector<bool> owned(sz(c_count), false);
    for (int bt = 0; bt < g.batch; ++bt) {
        for (int64_t i = 0; i < g.m; ++i) {
            const float* a_row = af.data() + bt * g.a_batch_stride + i * g.lda;
            for (int64_t j = 0; j < g.n; ++j) {
                double acc = 0.0;
                for (int64_t kk = 0; kk < g.k; ++kk) {
                    const int64_t b_idx = bt * g.b_batch_stride + (g.b_is_nk ? j * g.ldb + kk : kk * g.ldb + j);
                    acc += static_cast<double>(a_row[kk]) * bf[sz(b_idx)];
                }
                const int64_t c_idx = bt * g.c_batch_stride + i * g.ldc + j;
                ASSERT_FALSE(owned[sz(c_idx)]) << "test bug: batches overlap in c";
                owned[sz(c_idx)] = true;
                const uint32_t bits = c_bits[sz(c_idx)];
                float value;
                if (g.c_f32) {
                    std::memcpy(&value, &bits, sizeof(value));
                } else {
                    value = bf16_to_float(static_cast<uint16_t>(bits));
                }
                got.push_back(value);
                ref.push_back(static_cast<float>(acc));
            }
        }
    }
    EXPECT_LT(rel_l2(got, ref), g.c_f32 ? 2e-3 : 1e-2);
    const uint32_t poison = g.c_f32 ? 0xFFFFFFFFu : 0xFFFFu;
    int64_t touched = 0;
    int64_t first_touched = -1;
    for (int64_t idx = 0; idx < c_count; ++idx) {
        if (!owned[sz(idx)] && c_bits[sz(idx)] != poison) {
            first_touched = touched++ == 0 ? idx : first_touched;
        }
    }
    EXPECT_EQ(touched, 0) << "elements outside the product written (ldc padding / other heads' columns), first at "
                          << first_touched;
}

// Kimi-K2 MLA: 64 heads, q = [T, heads, nope 128 + rope 64], kv_lora 512, v_head 128. Tiny: 4 / 64 + 32 / 128 / 64.
struct MlaDims {
    const char* name;
    int heads;
    int64_t nope, rope, lat, v;
};
constexpr MlaDims kKimiMla{"kimi", 64, 128, 64, 512, 128};
constexpr MlaDims kTinyMla{"tiny", 4, 64, 32, 128, 64};

// q_abs[t, h, 0:lat] = q[t, h, 0:nope] @ W_UK[h] (W_UK [heads, nope, lat]); q_abs rows are [heads, lat + rope], so
// the rope columns of every head must stay untouched.
GemmCase w_uk_case(const MlaDims& d, int64_t tokens) {
    return GemmCase{std::string("w_uk ") + d.name, false, false, tokens, d.lat, d.nope, d.heads * (d.nope + d.rope),
                    d.lat, d.heads * (d.lat + d.rope), d.heads, d.nope + d.rope, d.nope * d.lat, d.lat + d.rope};
}

// o[t, h, 0:v] = o_lat[t, h, 0:lat] @ W_UV[h]^T (W_UV [heads, v, lat]); ldc_pad widens the rows of o.
GemmCase w_uv_case(const MlaDims& d, int64_t tokens, int64_t ldc_pad = 0) {
    return GemmCase{std::string("w_uv ") + d.name, true, false, tokens, d.v, d.lat, d.heads * d.lat, d.lat,
                    d.heads * d.v + ldc_pad, d.heads, d.lat, d.v * d.lat, d.v};
}

TEST_F(CudaModelOps, Bf16GemmRouterLogits) {
    // x [T, 7168] @ W_gate [384, 7168]^T -> f32 [T, 384]
    cuda::Bf16GemmRunner runner;
    std::mt19937 rng(11);
    for (const int64_t tokens : {1, 3, 65}) {
        run_gemm_case(runner, {"router", true, true, tokens, 384, 7168, 7168, 7168, 384}, rng);
    }
    // Strided input rows (a slice of a wider activation) and padded logits rows.
    run_gemm_case(runner, {"router strided", true, true, 3, 384, 7168, 7168 + 64, 7168, 392}, rng);
    // The tiny model's hidden 256 with 16 experts.
    run_gemm_case(runner, {"router tiny", true, true, 5, 16, 256, 256, 256, 16}, rng);
}

TEST_F(CudaModelOps, Bf16GemmLmHead) {
    // x [T, 7168] @ W [vocab, 7168]^T -> f32 [T, vocab]; vocab 4096 stands in for 163840 (same kernel family,
    // a CPU reference that stays fast).
    cuda::Bf16GemmRunner runner;
    std::mt19937 rng(12);
    for (const int64_t tokens : {1, 5}) {
        run_gemm_case(runner, {"lm_head", true, true, tokens, 4096, 7168, 7168, 7168, 4096}, rng);
    }
    run_gemm_case(runner, {"lm_head padded", true, true, 2, 4096, 7168, 7168, 7168, 4100}, rng);
    run_gemm_case(runner, {"lm_head bf16 out", true, false, 3, 4096, 7168, 7168, 7168, 4096}, rng);
}

TEST_F(CudaModelOps, Bf16GemmMlaAbsorb) {
    cuda::Bf16GemmRunner runner;
    std::mt19937 rng(13);
    for (const MlaDims& d : {kKimiMla, kTinyMla}) {
        for (const int64_t tokens : {1, 3, 17}) {
            run_gemm_case(runner, w_uk_case(d, tokens), rng);
            run_gemm_case(runner, w_uv_case(d, tokens), rng);
        }
        run_gemm_case(runner, w_uv_case(d, 3, 8), rng);  // padded o rows: the tail of each row stays poisoned
        run_gemm_case(runner, w_uk_case(d, 3), rng);     // the same shape again: a cached plan, new buffers
    }
}

TEST_F(CudaModelOps, Bf16GemmOddShapes) {
    // Shapes that are not multiples of any tile, and a bf16 ldc whose rows are not 16-byte aligned.
    cuda::Bf16GemmRunner runner;
    std::mt19937 rng(14);
    run_gemm_case(runner, {"odd nk bf16", true, false, 3, 37, 40, 40, 40, 45}, rng);
    run_gemm_case(runner, {"odd kn f32", false, true, 7, 24, 16, 16, 24, 24}, rng);
    run_gemm_case(runner, {"odd kn bf16 batched", false, false, 5, 24, 40, 2 * 48, 24, 2 * 32, 2, 48, 40 * 24, 32},
                  rng);
}

TEST_F(CudaModelOps, Bf16GemmEmptyAndBadParams) {
    cuda::Bf16GemmRunner runner;
    cuda::Bf16GemmParams empty;  // m = 0, null pointers: nothing to do
    EXPECT_NO_THROW(runner.run(empty, nullptr));
    empty.m = 4;  // n = 0 is empty too
    EXPECT_NO_THROW(runner.run(empty, nullptr));

    const auto a_dev = to_device(std::vector<uint16_t>(64 * 64, 0));
    const auto b_dev = to_device(std::vector<uint16_t>(64 * 64, 0));
    cuda::DeviceBuffer c_dev(64 * 64 * 4);
    cuda::Bf16GemmParams good;
    good.a = a_dev.as<uint16_t>();
    good.b = b_dev.as<uint16_t>();
    good.c = c_dev.data();
    good.m = 8;
    good.n = 16;
    good.k = 32;
    good.lda = 32;
    good.ldb = 32;
    good.ldc = 16;
    EXPECT_NO_THROW(runner.run(good, nullptr));
    CUDA_CHECK(cudaDeviceSynchronize());
    auto bad = [&](auto mutate, const std::string& needle) {
        cuda::Bf16GemmParams p = good;
        mutate(p);
        expect_error([&] { runner.run(p, nullptr); }, needle);
    };
    bad([](cuda::Bf16GemmParams& p) { p.m = -1; }, "negative size");
    bad([](cuda::Bf16GemmParams& p) { p.k = -1; }, "negative size");
    bad([](cuda::Bf16GemmParams& p) { p.a = nullptr; }, "null operand");
    bad([](cuda::Bf16GemmParams& p) { p.c = nullptr; }, "null operand");
    bad([](cuda::Bf16GemmParams& p) { p.lda = 31; }, "lda 31");
    bad([](cuda::Bf16GemmParams& p) { p.ldb = 31; }, "ldb 31");
    bad([](cuda::Bf16GemmParams& p) {
        p.b_is_nk = false;
        p.ldb = 15;  // [k, n] rows are n wide
    }, "ldb 15");
    bad([](cuda::Bf16GemmParams& p) { p.ldc = 15; }, "ldc 15");
    bad([](cuda::Bf16GemmParams& p) { p.batch = 0; }, "batch");
}

// ---- embedding / gather ----

// Bitwise row copy check: out row r == src row ids[r] (or zeros when `zero_row(r)`); the poisoned tail after the
// last row stays poisoned.
template <typename ZeroRow>
void expect_rows_copied(const std::vector<uint16_t>& out, const std::vector<uint16_t>& src, int64_t src_offset,
                        const std::vector<int32_t>& ids, int64_t width, int64_t out_offset, ZeroRow zero_row) {
    for (size_t r = 0; r < ids.size(); ++r) {
        for (int64_t i = 0; i < width; ++i) {
            const uint16_t want = zero_row(ids[r]) ? uint16_t{0} : src[sz(src_offset + ids[r] * width + i)];
            ASSERT_EQ(out[sz(out_offset + static_cast<int64_t>(r) * width + i)], want)
                << "row " << r << " (id " << ids[r] << ") element " << i;
        }
    }
    for (size_t idx = 0; idx < out.size(); ++idx) {
        const bool inside = static_cast<int64_t>(idx) >= out_offset &&
                            static_cast<int64_t>(idx) < out_offset + static_cast<int64_t>(ids.size()) * width;
        if (!inside) {
            ASSERT_EQ(out[idx], 0xFFFF) << "element " << idx << " outside the output rows was written";
        }
    }
}

TEST_F(CudaModelOps, Embedding) {
    std::mt19937 rng(21);
    constexpr int64_t kVocab = 1000;
    for (const int64_t hidden : {7168, 256, 100}) {
        for (const int64_t offset : {0, 1}) {  // offset 1: rows not 16-byte aligned (the element-wise path)
            const auto table = random_bf16(sz(kVocab * hidden + offset), rng);
            const auto table_dev = to_device(table);
            for (const int64_t num_tokens : {0, 1, 3, 37}) {
                SCOPED_TRACE(fmt::format("hidden {} offset {} tokens {}", hidden, offset, num_tokens));
                std::uniform_int_distribution<int32_t> id_dist(0, kVocab - 1);
                std::vector<int32_t> ids(sz(num_tokens));
                for (auto& id : ids) id = id_dist(rng);
                if (num_tokens >= 37) {  // out-of-range ids give zero rows
                    ids[5] = -1;
                    ids[6] = kVocab;
                    ids[7] = std::numeric_limits<int32_t>::max();
                    ids[8] = kVocab - 1;
                }
                const auto ids_dev = to_device(ids);
                cuda::DeviceBuffer out_dev(sz((num_tokens + 1) * hidden + offset) * 2);  // + one poisoned row
                out_dev.fill_bytes(0xFF);
                cuda::EmbeddingParams p;
                p.token_ids = ids_dev.as<int32_t>();
                p.table = table_dev.as<uint16_t>() + offset;
                p.out = out_dev.as<uint16_t>() + offset;
                p.num_tokens = num_tokens;
                p.hidden = hidden;
                p.vocab = kVocab;
                cuda::launch_embedding(p, nullptr);
                CUDA_CHECK(cudaDeviceSynchronize());
                const auto out = to_host<uint16_t>(out_dev, sz((num_tokens + 1) * hidden + offset));
                expect_rows_copied(out, table, offset, ids, hidden, offset,
                                   [](int32_t id) { return id < 0 || id >= kVocab; });
            }
        }
    }
}

TEST_F(CudaModelOps, GatherRows) {
    std::mt19937 rng(22);
    constexpr int64_t kSrcRows = 50;
    for (const int64_t width : {7168, 384, 13}) {
        for (const int64_t offset : {0, 1}) {
            for (const int64_t num_rows : {0, 1, 4, 9}) {
                SCOPED_TRACE(fmt::format("width {} offset {} rows {}", width, offset, num_rows));
                const auto x = random_bf16(sz(kSrcRows * width + offset), rng);
                std::uniform_int_distribution<int32_t> row_dist(0, kSrcRows - 1);
                std::vector<int32_t> rows(sz(num_rows));
                for (auto& r : rows) r = row_dist(rng);
                if (num_rows >= 4) {
                    rows[1] = rows[0];  // a repeated row
                    rows[2] = kSrcRows - 1;
                }
                const auto x_dev = to_device(x);
                const auto rows_dev = to_device(rows);
                cuda::DeviceBuffer out_dev(sz((num_rows + 1) * width + offset) * 2);
                out_dev.fill_bytes(0xFF);
                cuda::GatherRowsParams p;
                p.x = x_dev.as<uint16_t>() + offset;
                p.rows = rows_dev.as<int32_t>();
                p.out = out_dev.as<uint16_t>() + offset;
                p.num_rows = num_rows;
                p.width = width;
                cuda::launch_gather_rows(p, nullptr);
                CUDA_CHECK(cudaDeviceSynchronize());
                const auto out = to_host<uint16_t>(out_dev, sz((num_rows + 1) * width + offset));
                expect_rows_copied(out, x, offset, rows, width, offset, [](int32_t) { return false; });
            }
        }
    }
}

// ---- rms_norm ----

enum class NormLayout { Strided, InPlace, Unaligned };

const char* layout_name(NormLayout l) {
    switch (l) {
        case NormLayout::Strided: return "strided";
        case NormLayout::InPlace: return "in place";
        case NormLayout::Unaligned: return "unaligned";
    }
    return "?";
}

// One rms_norm call against cpu::rms_norm on the bf16-rounded residual sum. Tolerance: the GPU and the reference
// agree in fp32 up to the summation order and rsqrtf (~1e-6 relative), and each output is rounded once to bf16
// (at most half an ulp, 2^-9 relative): every element within one bf16 ulp (2^-7 relative) and relative L2 < 4e-3.
// Since the fp32 values agree so closely, the bf16 bits must also equal float_to_bf16(reference) except where the
// ~1e-6 difference straddles a rounding boundary (<= 0.04% seen on a host emulation): at most 0.25% + 2. This
// catches a half-ulp bias that the tolerances above would not, e.g. normalizing the unrounded residual sum.
void run_rms_norm_case(int64_t hidden, int64_t num_tokens, bool with_residual, NormLayout layout, std::mt19937& rng) {
    SCOPED_TRACE(fmt::format("hidden {} tokens {} residual {} {}", hidden, num_tokens, with_residual,
                             layout_name(layout)));
    const int64_t offset = layout == NormLayout::Unaligned ? 1 : 0;
    const int64_t x_stride = hidden + 8 + offset;  // unaligned: odd row stride as well as an odd base
    const int64_t out_stride = layout == NormLayout::InPlace ? x_stride : hidden + 16 + offset;
    const int64_t x_count = num_tokens * x_stride + 8 + offset;
    const int64_t out_count = num_tokens * out_stride + 8 + offset;
    const auto x = random_bf16(sz(x_count), rng, 2.0f);
    const auto residual = random_bf16(sz(num_tokens * hidden + offset), rng, 2.0f);
    const auto weight = random_bf16(sz(hidden + offset), rng, 0.5f);
    auto x_dev = to_device(x);
    auto res_dev = to_device(residual);
    const auto w_dev = to_device(weight);
    cuda::DeviceBuffer out_own(sz(out_count) * 2);
    out_own.fill_bytes(0xFF);
    cuda::DeviceBuffer& out_dev = layout == NormLayout::InPlace ? x_dev : out_own;

    cuda::RmsNormParams p;
    p.x = x_dev.as<uint16_t>() + offset;
    p.residual = with_residual ? res_dev.as<uint16_t>() + offset : nullptr;
    p.weight = w_dev.as<uint16_t>() + offset;
    p.out = out_dev.as<uint16_t>() + offset;
    p.num_tokens = num_tokens;
    p.hidden = hidden;
    p.x_stride = x_stride;
    p.out_stride = out_stride;
    p.eps = 1e-6f;
    cuda::launch_rms_norm(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());

    // Reference input: x, or bf16(x + residual), which the residual output must hold bit for bit.
    std::vector<float> in(sz(num_tokens * hidden));
    const auto res_gpu = to_host<uint16_t>(res_dev, residual.size());
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t i = 0; i < hidden; ++i) {
            float v = bf16_to_float(x[sz(offset + t * x_stride + i)]);
            if (with_residual) {
                const uint16_t sum = float_to_bf16(v + bf16_to_float(residual[sz(offset + t * hidden + i)]));
                ASSERT_EQ(res_gpu[sz(offset + t * hidden + i)], sum) << "residual of token " << t << " element " << i;
                v = bf16_to_float(sum);
            }
            in[sz(t * hidden + i)] = v;
        }
    }
    if (!with_residual) {
        EXPECT_EQ(res_gpu, residual) << "residual written although none was passed";
    }
    std::vector<uint16_t> w_bits(weight.begin() + offset, weight.end());
    const Tensor w_tensor = Tensor::view(DType::BF16, {hidden}, w_bits.data());
    std::vector<float> ref(in.size());
    cpu::rms_norm(in.data(), num_tokens, hidden, w_tensor, 1e-6f, ref.data());

    const auto out = to_host<uint16_t>(out_dev, sz(layout == NormLayout::InPlace ? x_count : out_count));
    std::vector<float> got(ref.size());
    std::vector<bool> owned(out.size(), false);
    int64_t bits_differ = 0;
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t i = 0; i < hidden; ++i) {
            const size_t idx = sz(offset + t * out_stride + i);
            owned[idx] = true;
            const float g = bf16_to_float(out[idx]);
            const float r = ref[sz(t * hidden + i)];
            got[sz(t * hidden + i)] = g;
            ASSERT_LE(std::fabs(g - r), std::ldexp(std::fabs(r), -7)) << "token " << t << " element " << i;
            bits_differ += out[idx] != float_to_bf16(r);
        }
    }
    if (num_tokens > 0) {
        EXPECT_LT(rel_l2(got, ref), 4e-3);
    }
    EXPECT_LE(bits_differ, num_tokens * hidden / 400 + 2) << "outputs not equal to bf16(reference)";
    // Everything else keeps its bytes: the poison, or x's own padding when normalizing in place.
    for (size_t idx = 0; idx < out.size(); ++idx) {
        if (!owned[idx]) {
            const uint16_t before = layout == NormLayout::InPlace ? x[idx] : uint16_t{0xFFFF};
            ASSERT_EQ(out[idx], before) << "element " << idx << " outside the normalized rows was written";
        }
    }
}

TEST_F(CudaModelOps, RmsNorm) {
    std::mt19937 rng(31);
    // 7168 Kimi hidden, 1536 q_a_norm, 512 kv_a_norm, 256 / 128 tiny, 100 and 7: not multiples of 8.
    for (const int64_t hidden : {7168, 1536, 512, 256, 128, 100, 7}) {
        for (const int64_t num_tokens : {0, 1, 3, 33}) {
            for (const bool with_residual : {false, true}) {
                for (const NormLayout layout : {NormLayout::Strided, NormLayout::InPlace, NormLayout::Unaligned}) {
                    run_rms_norm_case(hidden, num_tokens, with_residual, layout, rng);
                }
            }
        }
    }
}

// ---- f32 -> bf16 ----

TEST_F(CudaModelOps, F32ToBf16) {
    std::mt19937 rng(41);
    // 65536 blocks * 256 threads + 1001: more elements than one grid covers, so the grid-stride loop runs.
    for (const int64_t count : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{100003}, int64_t{65536} * 256 + 1001}) {
        SCOPED_TRACE(fmt::format("count {}", count));
        std::vector<float> x(sz(count));
        std::normal_distribution<float> normal(0.0f, 100.0f);
        std::uniform_int_distribution<uint32_t> any_bits;
        for (size_t i = 0; i < x.size(); ++i) {
            if (i % 2 == 0) {
                x[i] = normal(rng);
            } else {  // every bit pattern: NaNs, infinities, subnormals, values that overflow bf16
                const uint32_t bits = any_bits(rng);
                std::memcpy(&x[i], &bits, sizeof(bits));
            }
        }
        const uint32_t specials[] = {0x7FC00000u, 0xFFC00001u, 0x7F800001u, 0x7F800000u, 0xFF800000u, 0x00000000u,
                                     0x80000000u, 0x00000001u, 0x807FFFFFu, 0x7F7FFFFFu, 0x3F808000u, 0x3F818000u,
                                     0x3F808001u, 0xBF80FFFFu};  // NaNs, inf, zeros, subnormals, max, ties
        for (size_t i = 0; i < std::size(specials) && i < x.size(); ++i) {
            std::memcpy(&x[i], &specials[i], sizeof(float));
        }
        const auto x_dev = to_device(x);
        cuda::DeviceBuffer out_dev(sz(count + 16) * 2);
        out_dev.fill_bytes(0xFF);
        cuda::F32ToBf16Params p;
        p.x = x_dev.as<float>();
        p.out = out_dev.as<uint16_t>();
        p.count = count;
        cuda::launch_f32_to_bf16(p, nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());
        const auto out = to_host<uint16_t>(out_dev, sz(count + 16));
        for (int64_t i = 0; i < count; ++i) {
            ASSERT_EQ(out[sz(i)], float_to_bf16(x[sz(i)])) << "element " << i << " (f32 bits " << std::hex
                                                         << std::bit_cast<uint32_t>(x[sz(i)]) << ")";
        }
        for (int64_t i = count; i < count + 16; ++i) {
            ASSERT_EQ(out[sz(i)], 0xFFFF) << "element " << i << " past count was written";
        }
    }
}

// ---- validation (runs before any CUDA call, so it is tested without a GPU too) ----

TEST(ModelOpsValidation, RejectsBadParams) {
    // Non-null dummies: validation must fail before anything dereferences or launches.
    static uint16_t dummy16[16];
    static int32_t dummy32[16];
    static float dummyf[16];
    cuda::EmbeddingParams e{dummy32, dummy16, dummy16, 1, 8, 10};
    expect_error([&] { auto p = e; p.num_tokens = -1; cuda::launch_embedding(p, nullptr); }, "embedding: num_tokens");
    expect_error([&] { auto p = e; p.hidden = 0; cuda::launch_embedding(p, nullptr); }, "embedding: hidden");
    expect_error([&] { auto p = e; p.vocab = 0; cuda::launch_embedding(p, nullptr); }, "embedding: vocab");
    expect_error([&] { auto p = e; p.table = nullptr; cuda::launch_embedding(p, nullptr); }, "embedding: null");

    cuda::RmsNormParams n{dummy16, nullptr, dummy16, dummy16 + 8, 1, 8, 8, 8, 1e-6f};
    expect_error([&] { auto p = n; p.hidden = 0; cuda::launch_rms_norm(p, nullptr); }, "rms_norm: hidden");
    expect_error([&] { auto p = n; p.x_stride = 7; cuda::launch_rms_norm(p, nullptr); }, "rms_norm: x_stride 7");
    expect_error([&] { auto p = n; p.out_stride = 7; cuda::launch_rms_norm(p, nullptr); }, "rms_norm: out_stride 7");
    expect_error([&] { auto p = n; p.weight = nullptr; cuda::launch_rms_norm(p, nullptr); }, "rms_norm: null");
    expect_error([&] { auto p = n; p.eps = -1.0f; cuda::launch_rms_norm(p, nullptr); }, "rms_norm: eps");
    expect_error([&] { auto p = n; p.out = dummy16; p.out_stride = 9; cuda::launch_rms_norm(p, nullptr); },
                 "rms_norm: in place");
    expect_error([&] { auto p = n; p.residual = dummy16; cuda::launch_rms_norm(p, nullptr); }, "rms_norm: residual");

    cuda::GatherRowsParams g{dummy16, dummy32, dummy16, 1, 8};
    expect_error([&] { auto p = g; p.width = 0; cuda::launch_gather_rows(p, nullptr); }, "gather_rows: width");
    expect_error([&] { auto p = g; p.rows = nullptr; cuda::launch_gather_rows(p, nullptr); }, "gather_rows: null");
    expect_error([&] { auto p = g; p.num_rows = -2; cuda::launch_gather_rows(p, nullptr); }, "gather_rows: num_rows");

    cuda::F32ToBf16Params f{dummyf, dummy16, 4};
    expect_error([&] { auto p = f; p.count = -1; cuda::launch_f32_to_bf16(p, nullptr); }, "f32_to_bf16: count");
    expect_error([&] { auto p = f; p.out = nullptr; cuda::launch_f32_to_bf16(p, nullptr); }, "f32_to_bf16: null");

    // Empty inputs are no-ops, even with null pointers.
    EXPECT_NO_THROW(cuda::launch_embedding(cuda::EmbeddingParams{}, nullptr));
    EXPECT_NO_THROW(cuda::launch_rms_norm(cuda::RmsNormParams{}, nullptr));
    EXPECT_NO_THROW(cuda::launch_gather_rows(cuda::GatherRowsParams{}, nullptr));
    EXPECT_NO_THROW(cuda::launch_f32_to_bf16(cuda::F32ToBf16Params{}, nullptr));
}

}  // namespace
}  // namespace k2::ops_test
