// The op test driver: every CUDA op against its CPU reference (src/backend/cpu) on random inputs, including edge
// sizes (1, 3, non-multiples of tiles, empty batches), with NaN-poisoned outputs and padding. Without a GPU every
// test is skipped with the reason (never reported as passed). `test_backend_ops --perf` is the benchmark mode.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "backend/cpu/activation.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/moe_router.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/ref_fp8_quant.h"
#include "backend/cuda/fp8_gemm.h"
#include "backend/cuda/fp8_quant.h"
#include "backend/cuda/mla_decode.h"
#include "backend/cuda/moe_router.h"
#include "core/tensor.h"
#include "ops_common.h"

namespace k2::ops_test {

namespace {

class CudaOps : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP()
                << "no CUDA device: the CUDA op tests need a GPU (they run on the H200 via bench/gpu_kernels.sh)";
        }
    }
};

// Compares a quantized GPU result with the CPU reference quantization of `ref` [num_tokens, width]:
// scales to 1e-5 relative, e4m3 codes equal except for rare one-code flips at rounding ties caused by the
// reference's different summation order (a flip moves an element by 1/16), and the dequantized tensors to 4e-3
// (e4m3's own rounding noise is ~3e-2: a real bug lands far above).
void expect_quant_matches(const std::vector<float>& ref, int64_t num_tokens, int64_t width,
                          const std::vector<uint8_t>& q_gpu, int64_t q_stride, const std::vector<float>& scale_gpu,
                          int64_t scale_stride) {
    std::vector<uint8_t> q_ref(static_cast<size_t>(num_tokens * width));
    std::vector<float> scale_ref(static_cast<size_t>(width / 128 * scale_stride), 0.0f);
    cpu::quantize_fp8_groups(ref.data(), num_tokens, width, q_ref.data(), scale_ref.data(), scale_stride);
    std::vector<uint8_t> q_dense(q_ref.size());
    int64_t mismatches = 0;
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t i = 0; i < width; ++i) {
            const uint8_t g = q_gpu[static_cast<size_t>(t * q_stride + i)];
            q_dense[static_cast<size_t>(t * width + i)] = g;
            mismatches += g != q_ref[static_cast<size_t>(t * width + i)];
        }
        for (int64_t g = 0; g < width / 128; ++g) {
            const float a = scale_gpu[static_cast<size_t>(g * scale_stride + t)];
            const float b = scale_ref[static_cast<size_t>(g * scale_stride + t)];
            ASSERT_NEAR(a, b, 1e-5 * b) << "scale of token " << t << " group " << g;
        }
    }
    EXPECT_LE(mismatches, num_tokens * width / 200 + 1) << "e4m3 codes differing from the reference";
    std::vector<float> deq_gpu(q_ref.size());
    std::vector<float> deq_ref(q_ref.size());
    cpu::dequantize_fp8_groups(q_dense.data(), scale_gpu.data(), num_tokens, width, scale_stride, deq_gpu.data());
    cpu::dequantize_fp8_groups(q_ref.data(), scale_ref.data(), num_tokens, width, scale_stride, deq_ref.data());
    EXPECT_LT(relative_l2(deq_gpu, deq_ref), 4e-3);
}

struct QuantOut {
    cuda::DeviceBuffer q;
    cuda::DeviceBuffer scale;
    int64_t q_stride;
    int64_t scale_stride;
};

// Output buffers with padding (q rows 64 bytes wider, scale rows 5 wider), poisoned with 0xFF (NaN).
QuantOut make_quant_out(int64_t num_tokens, int64_t width) {
    QuantOut out{cuda::DeviceBuffer(static_cast<size_t>(std::max<int64_t>(num_tokens, 1) * (width + 64))),
                 cuda::DeviceBuffer(static_cast<size_t>(width / 128 * (num_tokens + 5)) * sizeof(float)), width + 64,
                 num_tokens + 5};
    out.q.fill_bytes(0xFF);
    out.scale.fill_bytes(0xFF);
    return out;
}

// The padding of a quantized output must still hold the poison.
void expect_padding_untouched(const QuantOut& out, int64_t num_tokens, int64_t width) {
    const auto q = to_host<uint8_t>(out.q, static_cast<size_t>(num_tokens * out.q_stride));
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t i = width; i < out.q_stride; ++i) {
            ASSERT_EQ(q[static_cast<size_t>(t * out.q_stride + i)], 0xFF) << "padding written at token " << t;
        }
    }
    const auto s = to_host<uint32_t>(out.scale, static_cast<size_t>(width / 128 * out.scale_stride));
    for (int64_t g = 0; g < width / 128; ++g) {
        for (int64_t t = num_tokens; t < out.scale_stride; ++t) {
            ASSERT_EQ(s[static_cast<size_t>(g * out.scale_stride + t)], 0xFFFFFFFFu) << "scale padding written";
        }
    }
}

TEST_F(CudaOps, Fp8Quant) {
    std::mt19937 rng(1);
    for (const int64_t hidden : {128, 7168}) {
        for (const int64_t num_tokens : {0, 1, 3, 17, 64}) {
            SCOPED_TRACE("hidden " + std::to_string(hidden) + " tokens " + std::to_string(num_tokens));
            const auto x = random_bf16(static_cast<size_t>(num_tokens * hidden), rng, 3.0f);
            const auto x_dev = to_device(x);
            QuantOut out = make_quant_out(num_tokens, hidden);
            cuda::Fp8QuantParams p;
            p.x = x_dev.as<uint16_t>();
            p.out = out.q.as<uint8_t>();
            p.out_scale = out.scale.as<float>();
            p.num_tokens = num_tokens;
            p.hidden = hidden;
            p.x_stride = hidden;
            p.out_stride = out.q_stride;
            p.scale_stride = out.scale_stride;
            cuda::launch_fp8_quant(p, nullptr);
            CUDA_CHECK(cudaDeviceSynchronize());
            const auto q = to_host<uint8_t>(out.q, static_cast<size_t>(num_tokens * out.q_stride));
            const auto s = to_host<float>(out.scale, static_cast<size_t>(hidden / 128 * out.scale_stride));
            expect_quant_matches(bf16_to_floats(x), num_tokens, hidden, q, out.q_stride, s, out.scale_stride);
            expect_padding_untouched(out, num_tokens, hidden);
        }
    }
}

TEST_F(CudaOps, RmsNormQuant) {
    std::mt19937 rng(2);
    for (const bool with_residual : {false, true}) {
        for (const int64_t hidden : {512, 7168}) {
            for (const int64_t num_tokens : {0, 1, 3, 33}) {
                SCOPED_TRACE("residual " + std::to_string(with_residual) + " hidden " + std::to_string(hidden) +
                             " tokens " + std::to_string(num_tokens));
                const auto x = random_bf16(static_cast<size_t>(num_tokens * hidden), rng, 2.0f);
                auto residual = random_bf16(static_cast<size_t>(num_tokens * hidden), rng, 2.0f);
                auto weight = random_bf16(static_cast<size_t>(hidden), rng, 0.5f);
                const auto x_dev = to_device(x);
                auto res_dev = to_device(residual);
                const auto w_dev = to_device(weight);
                QuantOut out = make_quant_out(num_tokens, hidden);
                cuda::RmsNormQuantParams p;
                p.x = x_dev.as<uint16_t>();
                p.residual = with_residual ? res_dev.as<uint16_t>() : nullptr;
                p.weight = w_dev.as<uint16_t>();
                p.out = out.q.as<uint8_t>();
                p.out_scale = out.scale.as<float>();
                p.num_tokens = num_tokens;
                p.hidden = hidden;
                p.x_stride = hidden;
                p.out_stride = out.q_stride;
                p.scale_stride = out.scale_stride;
                p.eps = 1e-6f;
                cuda::launch_rms_norm_quant(p, nullptr);
                CUDA_CHECK(cudaDeviceSynchronize());

                // Reference: residual add rounded to bf16 (the stored residual), cpu::rms_norm, quantization.
                std::vector<float> in = bf16_to_floats(x);
                if (with_residual) {
                    const auto res_gpu = to_host<uint16_t>(res_dev, residual.size());
                    for (size_t i = 0; i < in.size(); ++i) {
                        const uint16_t sum = float_to_bf16(in[i] + bf16_to_float(residual[i]));
                        ASSERT_EQ(res_gpu[i], sum) << "residual element " << i;
                        in[i] = bf16_to_float(sum);
                    }
                }
                Tensor w_tensor = Tensor::view(DType::BF16, {hidden}, weight.data());
                std::vector<float> normed(in.size());
                cpu::rms_norm(in.data(), num_tokens, hidden, w_tensor, 1e-6f, normed.data());
                const auto q = to_host<uint8_t>(out.q, static_cast<size_t>(num_tokens * out.q_stride));
                const auto s = to_host<float>(out.scale, static_cast<size_t>(hidden / 128 * out.scale_stride));
                expect_quant_matches(normed, num_tokens, hidden, q, out.q_stride, s, out.scale_stride);
                expect_padding_untouched(out, num_tokens, hidden);
            }
        }
    }
}

TEST_F(CudaOps, SiluMulQuant) {
    std::mt19937 rng(3);
    for (const int64_t inter : {128, 2048}) {
        for (const int64_t num_tokens : {0, 1, 3, 65}) {
            SCOPED_TRACE("inter " + std::to_string(inter) + " tokens " + std::to_string(num_tokens));
            const auto gate_up = random_bf16(static_cast<size_t>(num_tokens * 2 * inter), rng, 2.0f);
            const auto gu_dev = to_device(gate_up);
            QuantOut out = make_quant_out(num_tokens, inter);
            cuda::SiluMulQuantParams p;
            p.gate_up = gu_dev.as<uint16_t>();
            p.out = out.q.as<uint8_t>();
            p.out_scale = out.scale.as<float>();
            p.num_tokens = num_tokens;
            p.inter = inter;
            p.gate_up_stride = 2 * inter;
            p.out_stride = out.q_stride;
            p.scale_stride = out.scale_stride;
            cuda::launch_silu_mul_quant(p, nullptr);
            CUDA_CHECK(cudaDeviceSynchronize());
            const auto in = bf16_to_floats(gate_up);
            std::vector<float> act(static_cast<size_t>(num_tokens * inter));
            if (num_tokens > 0) {
                cpu::silu_mul(in.data(), in.data() + inter, num_tokens, inter, 2 * inter, act.data());
            }
            const auto q = to_host<uint8_t>(out.q, static_cast<size_t>(num_tokens * out.q_stride));
            const auto s = to_host<float>(out.scale, static_cast<size_t>(inter / 128 * out.scale_stride));
            expect_quant_matches(act, num_tokens, inter, q, out.q_stride, s, out.scale_stride);
            expect_padding_untouched(out, num_tokens, inter);
        }
    }
}

// One GEMM case: quantized activations and FP8 weights made on the CPU, y compared with cpu::linear over the
// dequantized activations (the same numbers the GPU multiplies), y's padding columns checked for the poison.
void check_fp8_gemm(cuda::Fp8GemmRunner& runner, cuda::Fp8GemmImpl impl, int64_t num_tokens, int64_t n, int64_t k,
                    std::mt19937& rng) {
    SCOPED_TRACE("m " + std::to_string(num_tokens) + " n " + std::to_string(n) + " k " + std::to_string(k) +
                 (impl == cuda::Fp8GemmImpl::CublasLt ? " cublaslt" : " decode"));
    const int64_t num_kb = k / 128;
    const int64_t sn = (n + 127) / 128;
    const auto x = bf16_to_floats(random_bf16(static_cast<size_t>(num_tokens * k), rng, 1.0f));
    std::vector<uint8_t> xq(x.size());
    std::vector<float> xs(static_cast<size_t>(num_kb * num_tokens));
    cpu::quantize_fp8_groups(x.data(), num_tokens, k, xq.data(), xs.data(), num_tokens);
    std::vector<float> x_deq(x.size());
    cpu::dequantize_fp8_groups(xq.data(), xs.data(), num_tokens, k, num_tokens, x_deq.data());
    auto w = random_fp8(static_cast<size_t>(n * k), rng);
    auto ws = random_uniform(static_cast<size_t>(sn * num_kb), rng, 1e-4f, 4e-4f);

    std::vector<float> y_ref(static_cast<size_t>(num_tokens * n));
    if (num_tokens > 0) {
        Tensor w_tensor = Tensor::view(DType::F8_E4M3, {n, k}, w.data());
        Tensor s_tensor = Tensor::view(DType::F32, {sn, num_kb}, ws.data());
        cpu::linear(x_deq.data(), num_tokens, k, w_tensor, &s_tensor, y_ref.data());
    }
    const int64_t y_stride = n + 24;
    const auto xq_dev = to_device(xq);
    const auto xs_dev = to_device(xs);
    const auto w_dev = to_device(w);
    const auto ws_dev = to_device(ws);
    cuda::DeviceBuffer y_dev(static_cast<size_t>(std::max<int64_t>(num_tokens, 1) * y_stride) * 2);
    y_dev.fill_bytes(0xFF);
    cuda::Fp8GemmParams p;
    p.x = xq_dev.as<uint8_t>();
    p.x_scale = xs_dev.as<float>();
    p.w = w_dev.as<uint8_t>();
    p.w_scale = ws_dev.as<float>();
    p.y = y_dev.as<uint16_t>();
    p.num_tokens = num_tokens;
    p.n = n;
    p.k = k;
    p.x_stride = k;
    p.x_scale_stride = num_tokens;
    p.y_stride = y_stride;
    runner.run(p, nullptr, impl);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto y = to_host<uint16_t>(y_dev, static_cast<size_t>(num_tokens * y_stride));
    std::vector<float> y_gpu(y_ref.size());
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t j = 0; j < n; ++j)
            y_gpu[static_cast<size_t>(t * n + j)] = bf16_to_float(y[t * y_stride + j]);
        for (int64_t j = n; j < y_stride; ++j)
            ASSERT_EQ(y[t * y_stride + j], 0xFFFF) << "y padding written";
    }
    // bf16 output rounding alone gives ~2e-3; accumulation-order differences are far below.
    EXPECT_LT(relative_l2(y_gpu, y_ref), 5e-3);
}

TEST_F(CudaOps, Fp8GemmDecode) {
    std::mt19937 rng(4);
    cuda::Fp8GemmRunner runner;
    for (const int64_t m : {0, 1, 3, 8, 12, 17, 64, 65, 130}) {  // every token-tile count (1, 2, 4, 8)
        check_fp8_gemm(runner, cuda::Fp8GemmImpl::Decode, m, 256, 512, rng);
    }
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::Decode, 12, 8320, 256, rng);
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::Decode, 5, 576, 1536, rng);    // partial 128-row scale block
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::Decode, 33, 2112, 7168, rng);  // q_a + kv_a, 8-way split-K
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::Decode, 2, 1024, 18432, rng);  // long K (dense down)
}

TEST_F(CudaOps, Fp8GemmCublasLt) {
    std::mt19937 rng(5);
    cuda::Fp8GemmRunner runner;
    for (const int64_t m : {0, 16, 64, 136}) {
        check_fp8_gemm(runner, cuda::Fp8GemmImpl::CublasLt, m, 256, 512, rng);
    }
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::CublasLt, 256, 2112, 7168, rng);
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::Auto, 300, 384, 1024, rng);
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::Auto, 3, 384, 1024, rng);   // the heuristic's decode side
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::Auto, 1, 8320, 256, rng);   // m = 1, which cuBLASLt rejects
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::Auto, 12, 8320, 256, rng);  // below kCublasLtMinTokens
}

// cuBLASLt at m = 12, k = 256 returned NaN here (2026-11-29): not the small m but k / 128 = 2 blocks, which cuBLASLt
// reads from a scale layout padded to 4 k-blocks (PyTorch #166752). With 4 k-blocks m = 12 is fine, and the
// runner refuses unpadded shapes instead of computing garbage.
TEST_F(CudaOps, CublasLtSmallM) {
    std::mt19937 rng(9);
    cuda::Fp8GemmRunner runner;
    check_fp8_gemm(runner, cuda::Fp8GemmImpl::CublasLt, 12, 8320, 512, rng);
}

TEST_F(CudaOps, CublasLtRefusesKBlocksNotAMultipleOfFour) {
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(64, 256, 256), cuda::Fp8GemmImpl::Decode);
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(64, 256, 384), cuda::Fp8GemmImpl::Decode);
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(256, 4096, 7168), cuda::Fp8GemmImpl::CublasLt);
    cuda::Fp8GemmRunner runner;
    cuda::Fp8GemmParams p;
    p.num_tokens = 16;
    p.n = 256;
    p.k = 256;
    EXPECT_THROW(runner.run_cublaslt(p, nullptr), Error);
}

TEST_F(CudaOps, MoeRouter) {
    std::mt19937 rng(6);
    struct Config {
        int experts, n_group, topk_group, top_k;
        bool norm;
        float scale;
    };
    // Kimi-K2 (384 experts, one group), DeepSeek-V3 (256 in 8 groups, 4 kept), an unnormalized variant, and expert
    // counts that do not fill the warp's last slot (the tiny fixture's 16; 40 in 4 groups).
    for (const Config c :
         {Config{384, 1, 1, 8, true, 2.827f}, Config{256, 8, 4, 8, true, 2.5f}, Config{64, 4, 2, 6, false, 1.0f},
          Config{16, 1, 1, 4, true, 2.827f}, Config{40, 4, 2, 5, true, 1.5f}}) {
        for (const int64_t num_tokens : {0, 1, 3, 37}) {
            SCOPED_TRACE("experts " + std::to_string(c.experts) + " tokens " + std::to_string(num_tokens));
            const auto logits = random_uniform(static_cast<size_t>(num_tokens * c.experts), rng, -4.0f, 4.0f);
            const auto bias = random_uniform(static_cast<size_t>(c.experts), rng, -0.5f, 0.5f);
            std::vector<int32_t> ids_ref(static_cast<size_t>(num_tokens * c.top_k));
            std::vector<float> weights_ref(ids_ref.size());
            cpu::MoeRouterArgs args;
            args.router_logits = logits.data();
            args.correction_bias = bias.data();
            args.num_tokens = num_tokens;
            args.num_experts = c.experts;
            args.n_group = c.n_group;
            args.topk_group = c.topk_group;
            args.top_k = c.top_k;
            args.norm_topk_prob = c.norm;
            args.routed_scaling_factor = c.scale;
            args.topk_ids = ids_ref.data();
            args.topk_weights = weights_ref.data();
            cpu::moe_route(args);

            const auto logits_dev = to_device(logits);
            const auto bias_dev = to_device(bias);
            cuda::DeviceBuffer ids_dev(ids_ref.size() * 4 + 4);
            cuda::DeviceBuffer weights_dev(ids_ref.size() * 4 + 4);
            ids_dev.fill_bytes(0xFF);
            weights_dev.fill_bytes(0xFF);
            cuda::MoeRouterParams p;
            p.logits = logits_dev.as<float>();
            p.bias = bias_dev.as<float>();
            p.topk_ids = ids_dev.as<int32_t>();
            p.topk_weights = weights_dev.as<float>();
            p.num_tokens = num_tokens;
            p.num_experts = c.experts;
            p.n_group = c.n_group;
            p.topk_group = c.topk_group;
            p.top_k = c.top_k;
            p.norm_topk_prob = c.norm;
            p.routed_scaling_factor = c.scale;
            cuda::launch_moe_router(p, nullptr);
            CUDA_CHECK(cudaDeviceSynchronize());
            const auto ids = to_host<int32_t>(ids_dev, ids_ref.size() + 1);
            const auto weights = to_host<float>(weights_dev, ids_ref.size() + 1);
            for (size_t i = 0; i < ids_ref.size(); ++i) {
                ASSERT_EQ(ids[i], ids_ref[i]) << "expert id " << i;  // index op: bitwise
                ASSERT_NEAR(weights[i], weights_ref[i], 1e-5f * std::fabs(weights_ref[i])) << "weight " << i;
            }
            EXPECT_EQ(ids.back(), -1) << "wrote past the last token";  // the 0xFF poison
        }
    }
}

// One decode batch: a paged BF16 (Code = uint16_t) or FP8 e4m3 (Code = uint8_t, codes of value / kv_scale) cache
// with shuffled block ids, unused pages NaN-poisoned and block tables padded with -1; the GPU result is compared
// with cpu::mla_attention_absorbed on the same stored numbers, for the split kernel `kernel`. bf16_out: the result goes
// to MlaDecodeParams::out_bf16 instead of the f32 `out`.
template <typename Code>
void check_mla_decode(cuda::MlaDecodeKernel kernel, const std::vector<int32_t>& seq_lens, int num_heads,
                      std::mt19937& rng, float kv_scale = 1.0f, bool bf16_out = false) {
    constexpr bool kFp8 = std::is_same_v<Code, uint8_t>;
    const auto num_seqs = static_cast<int64_t>(seq_lens.size());
    SCOPED_TRACE("seqs " + std::to_string(num_seqs) + " heads " + std::to_string(num_heads) + " first len " +
                 std::to_string(seq_lens.empty() ? 0 : seq_lens[0]));
    int max_len = 1;
    int total_pages = 0;
    for (const int32_t len : seq_lens) {
        max_len = std::max(max_len, len);
        total_pages += (len + 63) / 64;
    }
    const int max_blocks = (max_len + 63) / 64 + 1;  // one padding column of -1
    const int num_blocks = total_pages + 3;          // three pages nobody owns: NaN
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    for (int i = 0; i < num_blocks; ++i)
        ids[static_cast<size_t>(i)] = i;
    std::shuffle(ids.begin(), ids.end(), rng);
    std::vector<int32_t> tables(static_cast<size_t>(num_seqs * max_blocks), -1);
    std::vector<Code> cache(static_cast<size_t>(num_blocks) * 64 * 576, kFp8 ? 0xFF : 0xFFFF);  // NaN everywhere
    std::normal_distribution<float> dist(0.0f, 1.0f);
    int next = 0;
    for (int64_t b = 0; b < num_seqs; ++b) {
        const int len = seq_lens[static_cast<size_t>(b)];
        for (int page = 0; page < (len + 63) / 64; ++page) {
            const int32_t id = ids[static_cast<size_t>(next++)];
            tables[static_cast<size_t>(b * max_blocks + page)] = id;
            for (int t = 0; t < std::min(64, len - page * 64); ++t) {  // the page's tail stays NaN
                for (int d = 0; d < 576; ++d) {
                    const size_t at =
                        (static_cast<size_t>(id) * 64 + static_cast<size_t>(t)) * 576 + static_cast<size_t>(d);
                    if constexpr (kFp8) {
                        cache[at] = float_to_fp8_e4m3(dist(rng) / kv_scale);
                    } else {
                        cache[at] = float_to_bf16(dist(rng));
                    }
                }
            }
        }
    }
    const auto q = random_bf16(static_cast<size_t>(num_seqs * num_heads * 576), rng);
    const float softmax_scale = 0.1f;

    std::vector<float> out_ref(static_cast<size_t>(num_seqs * num_heads * 512));
    if (num_seqs > 0) {
        const auto q_f = bf16_to_floats(q);
        std::vector<int32_t> query_start(static_cast<size_t>(num_seqs + 1));
        std::vector<int32_t> positions(static_cast<size_t>(num_seqs));
        for (int64_t b = 0; b <= num_seqs; ++b)
            query_start[static_cast<size_t>(b)] = static_cast<int32_t>(b);
        for (int64_t b = 0; b < num_seqs; ++b)
            positions[static_cast<size_t>(b)] = seq_lens[static_cast<size_t>(b)] - 1;
        cpu::MlaAttentionArgs args;
        args.q = q_f.data();
        args.num_tokens = num_seqs;
        args.num_heads = num_heads;
        args.kv_lora_rank = 512;
        args.rope_dim = 64;
        args.cache = cpu::LatentCacheView{cache.data(), kFp8 ? DType::F8_E4M3 : DType::BF16,
                                          static_cast<int64_t>(num_blocks) * 64, 576, kFp8 ? kv_scale : 1.0f};
        args.block_size = 64;
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
    const auto lens_dev = to_device(seq_lens);
    const size_t out_elem_bytes = bf16_out ? 2 : 4;
    cuda::DeviceBuffer out_dev((out_ref.size() + 4) * out_elem_bytes);
    out_dev.fill_bytes(0xFF);  // NaN in f32 and in bf16
    cuda::MlaDecodeParams p;
    p.q = q_dev.as<uint16_t>();
    if constexpr (kFp8) {
        p.cache_fp8 = cache_dev.template as<uint8_t>();
        p.kv_scale = kv_scale;
    } else {
        p.cache = cache_dev.template as<uint16_t>();
    }
    p.block_tables = tables_dev.as<int32_t>();
    p.seq_lens = lens_dev.as<int32_t>();
    if (bf16_out) {
        p.out_bf16 = out_dev.as<uint16_t>();
    } else {
        p.out = out_dev.as<float>();
    }
    p.num_seqs = num_seqs;
    p.num_heads = num_heads;
    p.max_blocks_per_seq = max_blocks;
    p.max_seq_len = max_len;
    p.softmax_scale = softmax_scale;
    p.kernel = kernel;
    ASSERT_EQ(cuda::mla_decode_kernel(p), kernel);
    const int splits = cuda::mla_decode_num_splits(p, 132);
    p.num_splits = splits;
    cuda::DeviceBuffer ws(static_cast<size_t>(cuda::mla_decode_workspace_floats(p, splits)) * 4 + 16);
    ws.fill_bytes(0xFF);  // stale partials must never leak into the result
    p.workspace = ws.as<float>();
    cuda::launch_mla_decode(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out = bf16_out ? bf16_to_floats(to_host<uint16_t>(out_dev, out_ref.size() + 4))
                              : to_host<float>(out_dev, out_ref.size() + 4);
    const std::vector<float> out_gpu(out.begin(), out.begin() + static_cast<int64_t>(out_ref.size()));
    // P is rounded to bf16 for the P.V product; a bf16 output adds its own rounding (relative error <= 2^-9 per
    // element, ~1.1e-3 RMS), hence the looser bound there.
    EXPECT_LT(relative_l2(out_gpu, out_ref), bf16_out ? 6e-3 : 5e-3);
    for (size_t i = out_ref.size(); i < out.size(); ++i) {
        const float v = out[i];
        EXPECT_TRUE(std::isnan(v)) << "wrote past the output";
    }
}

// Lengths 1..200 of a batch large enough for at most 2 splits (the wgmma kernel then combines inside a cluster).
std::vector<int32_t> mla_many_lens(int num_seqs, std::mt19937& rng) {
    std::uniform_int_distribution<int32_t> len(1, 200);
    std::vector<int32_t> lens(static_cast<size_t>(num_seqs));
    for (auto& l : lens)
        l = len(rng);
    return lens;
}

// Both split kernels (mma.sync and wgmma) run every case below.
class CudaMlaDecode : public CudaOps, public ::testing::WithParamInterface<cuda::MlaDecodeKernel> {};

TEST_P(CudaMlaDecode, MlaDecode) {
    const cuda::MlaDecodeKernel k = GetParam();
    std::mt19937 rng(8);
    check_mla_decode<uint16_t>(k, {}, 64, rng);
    check_mla_decode<uint16_t>(k, {1, 65, 200}, 64, rng);
    check_mla_decode<uint16_t>(k, {64, 1000}, 128, rng);
    check_mla_decode<uint16_t>(k, {4097}, 64, rng);  // many splits over one sequence
    // A tensor-parallel rank's heads (Kimi-K2 at tp 8 and 2, DeepSeek-V3 at tp 16): one zero-padded head group.
    check_mla_decode<uint16_t>(k, {1, 65, 200}, 8, rng);
    check_mla_decode<uint16_t>(k, {64, 1000}, 32, rng);
    check_mla_decode<uint8_t>(k, {300, 7}, 8, rng, 0.5f);
    check_mla_decode<uint16_t>(k, mla_many_lens(50, rng), 64, rng);  // 2 splits: the wgmma kernel's cluster path
}

// The FP8 cache through the same split-KV kernels (staged e4m3 pages converted to bf16 in shared memory); a
// kv_scale other than 1 checks that it multiplies the scores and the output.
TEST_P(CudaMlaDecode, MlaDecodeFp8Cache) {
    const cuda::MlaDecodeKernel k = GetParam();
    std::mt19937 rng(14);
    check_mla_decode<uint8_t>(k, {}, 64, rng);
    check_mla_decode<uint8_t>(k, {1, 65, 200}, 64, rng, 0.5f);
    check_mla_decode<uint8_t>(k, {64, 1000}, 128, rng);
    check_mla_decode<uint8_t>(k, {4097, 3, 129}, 64, rng, 2.0f);           // odd page counts: the prefetch's tail
    check_mla_decode<uint8_t>(k, mla_many_lens(40, rng), 128, rng, 0.5f);  // 1 split: a cluster of one CTA
}

// The wgmma kernel writing bf16 (MlaDecodeParams::out_bf16, so the runner needs no f32 -> bf16 pass) on every
// combine path: the combine kernel (many splits), the thread-block cluster (1-2 splits), a partial head group and
// the FP8 cache; the mma.sync kernel refuses it.
TEST_F(CudaOps, MlaDecodeBf16Out) {
    std::mt19937 rng(21);
    const cuda::MlaDecodeKernel k = cuda::MlaDecodeKernel::Wgmma;
    check_mla_decode<uint16_t>(k, {}, 64, rng, 1.0f, true);
    check_mla_decode<uint16_t>(k, {1, 65, 200}, 64, rng, 1.0f, true);
    check_mla_decode<uint16_t>(k, {64, 1000}, 8, rng, 1.0f, true);
    check_mla_decode<uint16_t>(k, mla_many_lens(50, rng), 64, rng, 1.0f, true);
    check_mla_decode<uint8_t>(k, {4097, 3, 129}, 64, rng, 2.0f, true);
    check_mla_decode<uint8_t>(k, mla_many_lens(40, rng), 128, rng, 0.5f, true);

    cuda::DeviceBuffer dummy(1024);
    cuda::MlaDecodeParams p;
    p.q = dummy.as<uint16_t>();
    p.cache = dummy.as<uint16_t>();
    p.block_tables = dummy.as<int32_t>();
    p.seq_lens = dummy.as<int32_t>();
    p.workspace = dummy.as<float>();
    p.out_bf16 = dummy.as<uint16_t>();
    p.num_seqs = 1;
    p.max_blocks_per_seq = 1;
    p.max_seq_len = 1;
    p.kernel = cuda::MlaDecodeKernel::Mma;
    EXPECT_THROW(cuda::launch_mla_decode(p, nullptr), Error);  // out_bf16 is the wgmma kernel's
    p.kernel = cuda::MlaDecodeKernel::Wgmma;
    p.out = dummy.as<float>();
    EXPECT_THROW(cuda::launch_mla_decode(p, nullptr), Error);  // both outputs set
}

INSTANTIATE_TEST_SUITE_P(Kernels, CudaMlaDecode,
                         ::testing::Values(cuda::MlaDecodeKernel::Mma, cuda::MlaDecodeKernel::Wgmma),
                         [](const ::testing::TestParamInfo<cuda::MlaDecodeKernel>& param_info) {
                             return param_info.param == cuda::MlaDecodeKernel::Mma ? "mma" : "wgmma";
                         });

TEST_F(CudaOps, RejectsBadShapes) {
    cuda::Fp8GemmRunner runner;
    cuda::Fp8GemmParams p;
    p.num_tokens = 4;
    p.n = 256;
    p.k = 200;  // not a multiple of 128
    EXPECT_THROW(runner.run(p, nullptr, cuda::Fp8GemmImpl::Decode), Error);
}

// Host-side logic (heuristics, validation before any CUDA call): runs everywhere, CI included.
TEST(CudaOpsHost, GemmHeuristic) {
    using cuda::Fp8GemmImpl;
    // Decode batches take the wgmma kernel (fp8_gemm_config.h prefer_wgmma), any n.
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(1, 2112, 7168), Fp8GemmImpl::Wgmma);
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(15, 24576, 1536), Fp8GemmImpl::Wgmma);  // cuBLASLt NaN at m = 12
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(16, 2112, 7168), Fp8GemmImpl::Wgmma);
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(16, 12288, 1536), Fp8GemmImpl::CublasLt);  // few k blocks: cuBLASLt
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(64, 18432, 7168), Fp8GemmImpl::CublasLt);
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(128, 2112, 7168), Fp8GemmImpl::Wgmma);
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(129, 2112, 7168), Fp8GemmImpl::CublasLt);
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(4096, 18432, 7168), Fp8GemmImpl::CublasLt);
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(1, 200, 7168), Fp8GemmImpl::Wgmma);
    EXPECT_EQ(cuda::Fp8GemmRunner::choose(200, 200, 7168), Fp8GemmImpl::CublasLt);  // n % 16 != 0: not Decode
}

TEST(CudaOpsHost, ValidationBeforeLaunch) {
    cuda::Fp8GemmParams gemm;
    gemm.num_tokens = 4;
    gemm.n = 256;
    gemm.k = 200;
    EXPECT_THROW(cuda::launch_fp8_gemm_decode(gemm, nullptr), Error);
    gemm.num_tokens = 0;
    EXPECT_NO_THROW(cuda::launch_fp8_gemm_decode(gemm, nullptr));  // empty batch: nothing to do

    cuda::Fp8QuantParams quant;
    quant.num_tokens = 2;
    quant.hidden = 100;  // not a multiple of 128
    EXPECT_THROW(cuda::launch_fp8_quant(quant, nullptr), Error);

    cuda::MoeRouterParams router;
    router.num_tokens = 1;
    router.num_experts = 384;
    router.n_group = 5;  // does not divide 384
    EXPECT_THROW(cuda::launch_moe_router(router, nullptr), Error);

    cuda::MlaDecodeParams mla;
    mla.num_seqs = 1;
    mla.num_heads = 96;  // above 64 and not a multiple of it
    EXPECT_THROW(cuda::launch_mla_decode(mla, nullptr), Error);
}

TEST(CudaOpsHost, MlaSplits) {
    cuda::MlaDecodeParams p;
    p.num_seqs = 16;
    p.num_heads = 64;
    p.max_seq_len = 8192;
    EXPECT_EQ(cuda::mla_decode_num_splits(p, 132), 8);  // one wave of 128 CTAs
    p.num_seqs = 1;
    p.max_seq_len = 100;
    EXPECT_EQ(cuda::mla_decode_num_splits(p, 132), 2);  // never more splits than pages
    p.num_seqs = 200;
    EXPECT_EQ(cuda::mla_decode_num_splits(p, 132), 1);
    EXPECT_EQ(cuda::mla_decode_workspace_floats(p, 1), 200 * 64 * (512 + 2));
}

}  // namespace
}  // namespace k2::ops_test

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--perf") == 0) {
            return k2::ops_test::run_perf(argc, argv);
        }
    }
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
