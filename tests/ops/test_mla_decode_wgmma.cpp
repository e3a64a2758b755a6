// The wgmma MLA decode kernel (src/backend/cuda/kernels/mla_decode_wgmma.cuh) beyond the CPU-reference cases that
// test_backend_ops runs for both split kernels (CudaMlaDecode.*): CUDA-graph capture with seq_lens changed on the
// device between replays (the model's decode steps run inside graphs), and bitwise determinism.
// Benchmark (mma.sync kernel, wgmma kernel of session 6 and 7, BF16 and FP8 cache, and the copy rate in the same run):
//   test_mla_decode_wgmma --gtest_also_run_disabled_tests --gtest_filter='*Perf*'
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/device_copy.h"
#include "backend/cuda/mla_decode.h"
#include "core/dtype.h"
#include "ops_common.h"

namespace k2 {
namespace {

using ops_test::copy_rate_gbs;
using ops_test::random_bf16;
using ops_test::time_us;
using ops_test::to_device;
using ops_test::to_host;

class MlaDecodeWgmma : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP()
                << "no CUDA device: the CUDA op tests need a GPU (they run on the H200 via bench/mla_decode_wgmma.sh)";
        }
    }
};

// A decode batch on the device: num_blocks shuffled pages of a random BF16 cache and its e4m3 codes, every sequence
// owning ceil(max_len / 64) pages (seq_lens may be lowered later without touching the tables).
struct Batch {
    int64_t num_seqs = 0;
    int heads = 64;
    int max_len = 0;
    int max_blocks = 0;
    cuda::DeviceBuffer q;       // [num_seqs, heads, 576] bf16
    cuda::DeviceBuffer cache;   // [num_blocks, 64, 576] bf16
    cuda::DeviceBuffer cache8;  // [num_blocks, 64, 576] e4m3
    cuda::DeviceBuffer tables;  // [num_seqs, max_blocks] int32
    cuda::DeviceBuffer lens;    // [num_seqs] int32
    cuda::DeviceBuffer out;     // [num_seqs, heads, 512] f32
    cuda::DeviceBuffer ws;      // split partials

    Batch(int64_t seqs, int num_heads, int max_seq_len, std::mt19937& rng)
        : num_seqs(seqs), heads(num_heads), max_len(max_seq_len), max_blocks((max_seq_len + 63) / 64) {
        const int64_t num_blocks = num_seqs * max_blocks;
        std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
        std::iota(ids.begin(), ids.end(), 0);
        std::shuffle(ids.begin(), ids.end(), rng);
        const size_t elems = static_cast<size_t>(num_blocks) * 64 * 576;
        std::vector<uint16_t> bf(elems);
        std::vector<uint8_t> f8(elems);
        uint32_t state = rng();
        for (size_t i = 0; i < elems; ++i) {  // uniform in [-1, 1] in steps of 1e-3 (an LCG: 10^8 values quickly)
            state = state * 1664525u + 1013904223u;
            const float v = static_cast<float>(static_cast<int32_t>(state >> 8) % 2001 - 1000) * 1e-3f;
            bf[i] = float_to_bf16(v);
            f8[i] = float_to_fp8_e4m3(v);
        }
        q = to_device(random_bf16(static_cast<size_t>(num_seqs * heads * 576), rng));
        cache = to_device(bf);
        cache8 = to_device(f8);
        tables = to_device(ids);
        lens = to_device(std::vector<int32_t>(static_cast<size_t>(num_seqs), max_len));
        out = cuda::DeviceBuffer(static_cast<size_t>(num_seqs * heads * 512) * 4);
    }

    cuda::MlaDecodeParams params(bool fp8, cuda::MlaDecodeKernel kernel) {
        cuda::MlaDecodeParams p;
        p.q = q.as<uint16_t>();
        if (fp8) {
            p.cache_fp8 = cache8.as<uint8_t>();
            p.kv_scale = 1.0f;
        } else {
            p.cache = cache.as<uint16_t>();
        }
        p.block_tables = tables.as<int32_t>();
        p.seq_lens = lens.as<int32_t>();
        p.out = out.as<float>();
        p.num_seqs = num_seqs;
        p.num_heads = heads;
        p.max_blocks_per_seq = max_blocks;
        p.max_seq_len = max_len;
        p.softmax_scale = 0.1f;
        p.kernel = kernel;
        const int splits = cuda::mla_decode_num_splits(p, 132);
        p.num_splits = splits;
        const auto floats = static_cast<size_t>(cuda::mla_decode_workspace_floats(p, splits));
        if (ws.num_bytes() < floats * 4) {
            ws = cuda::DeviceBuffer(floats * 4);
        }
        p.workspace = ws.as<float>();
        return p;
    }

    std::vector<float> run(const cuda::MlaDecodeParams& p) {
        out.fill_bytes(0xFF);
        cuda::launch_mla_decode(p, nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());
        return to_host<float>(out, static_cast<size_t>(num_seqs * heads * 512));
    }
};

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// Captured once for max_seq_len, replayed after the device's seq_lens changed: the kernel reads the lengths on the
// device, so each replay must equal an eager launch with the new lengths, bit for bit; eager launches repeat bitwise.
// Batch 3 takes 44 splits and batch 16 x 1000 8 splits (partials in the workspace + the combine kernel), batch 48 x
// 300 2 splits (one thread-block cluster per sequence, combined in the kernel).
void check_graph_replay(Batch& batch, const std::vector<std::vector<int32_t>>& len_sets) {
    const std::vector<int32_t> full(static_cast<size_t>(batch.num_seqs), batch.max_len);
    for (const bool fp8 : {false, true}) {
        SCOPED_TRACE(fp8 ? "fp8 cache" : "bf16 cache");
        const cuda::MlaDecodeParams p = batch.params(fp8, cuda::MlaDecodeKernel::Wgmma);
        const std::vector<float> eager = batch.run(p);
        for (const float v : eager)
            ASSERT_FALSE(std::isnan(v)) << "an output was not written";
        ASSERT_TRUE(bitwise_equal(eager, batch.run(p))) << "two eager launches differ: a race?";

        cudaStream_t stream = nullptr;
        CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        cudaGraph_t graph = nullptr;
        CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        cuda::launch_mla_decode(p, stream);
        CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        cudaGraphExec_t exec = nullptr;
        CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        for (const std::vector<int32_t>& lens : len_sets) {
            CUDA_CHECK(cudaMemcpy(batch.lens.data(), lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
            const std::vector<float> want = batch.run(p);
            batch.out.fill_bytes(0xFF);
            CUDA_CHECK(cudaGraphLaunch(exec, stream));
            CUDA_CHECK(cudaStreamSynchronize(stream));
            const auto got = to_host<float>(batch.out, want.size());
            EXPECT_TRUE(bitwise_equal(got, want))
                << "graph replay with lens " << lens[0] << ", " << lens[1] << ".. differs from an eager launch";
        }
        CUDA_CHECK(cudaGraphExecDestroy(exec));
        CUDA_CHECK(cudaGraphDestroy(graph));
        CUDA_CHECK(cudaStreamDestroy(stream));
        CUDA_CHECK(cudaMemcpy(batch.lens.data(), full.data(), full.size() * 4, cudaMemcpyHostToDevice));
    }
}

TEST_F(MlaDecodeWgmma, GraphCaptureFollowsDeviceSeqLens) {
    std::mt19937 rng(5);
    Batch small(3, 64, 4097, rng);
    ASSERT_GT(cuda::mla_decode_num_splits(small.params(false, cuda::MlaDecodeKernel::Wgmma), 132), 8);
    check_graph_replay(small, {{4097, 4097, 4097}, {100, 64, 3000}, {1, 4097, 65}});
    Batch wide(16, 64, 1000, rng);
    ASSERT_LE(cuda::mla_decode_num_splits(wide.params(false, cuda::MlaDecodeKernel::Wgmma), 132), 8);
    std::vector<int32_t> mixed(16);
    for (size_t i = 0; i < mixed.size(); ++i)
        mixed[i] = static_cast<int32_t>(1 + (i * 397) % 1000);
    check_graph_replay(wide, {std::vector<int32_t>(16, 1000), mixed});
    Batch many(48, 64, 300, rng);
    ASSERT_EQ(cuda::mla_decode_num_splits(many.params(false, cuda::MlaDecodeKernel::Wgmma), 132), 2);
    std::vector<int32_t> short_lens(48);
    for (size_t i = 0; i < short_lens.size(); ++i)
        short_lens[i] = static_cast<int32_t>(1 + (i * 61) % 300);
    check_graph_replay(many, {std::vector<int32_t>(48, 300), short_lens});
}

// The FP8 page conversion is exact (session 6's cvt path and session 7's integer bit move + one bf16 multiply by
// 2^120 of the staged kernel, including the e4m3 subnormals and both signs of zero): with every non-NaN e4m3 code in
// the cache, kv_scale 1 and a BF16 cache holding the codes' exact values (fp8_e4m3_to_float, exact in bf16), the FP8
// kernel does the same arithmetic as the BF16 one, so the outputs must agree to f32 rounding noise (a flushed subnormal
// or a wrong exponent would show as ~1e-3 or more). Both combine paths (8 splits through the workspace, 2 splits in a
// cluster).
TEST_F(MlaDecodeWgmma, Fp8ConversionIsExact) {
    std::mt19937 rng(9);
    for (const auto& [seqs, context] : {std::pair<int64_t, int>{16, 1000}, std::pair<int64_t, int>{48, 200}}) {
        Batch batch(seqs, 64, context, rng);
        const size_t elems = static_cast<size_t>(batch.num_seqs * batch.max_blocks) * 64 * 576;
        std::vector<uint8_t> codes(elems);
        std::vector<uint16_t> values(elems);
        std::uniform_int_distribution<int> code(0, 253);
        for (size_t i = 0; i < elems; ++i) {
            const int c = code(rng);
            codes[i] = static_cast<uint8_t>(c < 127 ? c : c + 1);  // skips 0x7f; 0xff is past the range
            values[i] = float_to_bf16(fp8_e4m3_to_float(codes[i]));
            ASSERT_EQ(bf16_to_float(values[i]), fp8_e4m3_to_float(codes[i]));
        }
        batch.cache8 = to_device(codes);
        batch.cache = to_device(values);
        const std::vector<float> from_bf16 = batch.run(batch.params(false, cuda::MlaDecodeKernel::Wgmma));
        for (const char* fp8_kernel : {"v6", "staged"}) {  // cvt conversion, integer conversion
            setenv("K2_MLA_WG_FP8", fp8_kernel, 1);
            const std::vector<float> from_fp8 = batch.run(batch.params(true, cuda::MlaDecodeKernel::Wgmma));
            unsetenv("K2_MLA_WG_FP8");
            double err = 0.0;
            double ref = 0.0;
            for (size_t i = 0; i < from_bf16.size(); ++i) {
                ASSERT_FALSE(std::isnan(from_fp8[i])) << "output " << i << " not written";
                const double d = static_cast<double>(from_fp8[i]) - from_bf16[i];
                err += d * d;
                ref += static_cast<double>(from_bf16[i]) * from_bf16[i];
            }
            EXPECT_LT(std::sqrt(err / ref), 1e-6) << "batch " << seqs << " x " << context << ", " << fp8_kernel;
        }
    }
}

// ---- benchmark ----

// Times launch_mla_decode for p with the wgmma variant chosen by the environment: K2_MLA_WG_COMBINE ("v6": the
// mma.sync kernel's combine, as session 6; "": session 7's combine kernel launched as a programmatic dependent) and
// K2_MLA_WG_FP8 ("": the register-fed FP8 kernel, "staged": bulk copies into staging slots).
double time_variant(const cuda::MlaDecodeParams& p, const char* combine, const char* fp8, cudaStream_t stream) {
    setenv("K2_MLA_WG_COMBINE", combine, 1);
    setenv("K2_MLA_WG_FP8", fp8, 1);
    const double us = time_us([&](int, cudaStream_t s) { cuda::launch_mla_decode(p, s); }, stream);
    unsetenv("K2_MLA_WG_COMBINE");
    unsetenv("K2_MLA_WG_FP8");
    return us;
}

// Kimi-K2 decode attention, 64 heads: batch 16 x 8,192 and 64 x 4,096 (151 and 302 MB of BF16 latent cache, 3-6x the
// L2) and the model's batch 16 x 2,048; the mma.sync kernel, the wgmma kernel as session 6 left it (v6) and with
// session 7's defaults (v7: f32 and bf16 output; FP8 also with the staged kernel), BF16 and FP8 cache, all in one
// run with the copy rate. GB/s counts the latent cache read once.
TEST_F(MlaDecodeWgmma, DISABLED_Perf) {
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const double copy_gbs = copy_rate_gbs(stream);
    std::printf("copy rate (SM copy kernel, 1 GiB, read+write): %.1f GB/s\n", copy_gbs);
    std::printf("%-26s %-5s | %8s | %8s | %8s %6s | %9s | %7s | %6s | %s\n", "shape", "cache", "mma us", "v6 us",
                "v7 us", "%copy", "v7 bf16o", "v6/v7", "bf16/x", "staged us");
    std::mt19937 rng(11);
    const std::pair<int64_t, int> shapes[] = {{16, 8192}, {64, 4096}, {16, 2048}};
    for (const auto& [seqs, context] : shapes) {
        Batch batch(seqs, 64, context, rng);
        double bf16_cache_us = 0.0;
        for (const bool fp8 : {false, true}) {
            const double bytes = static_cast<double>(seqs) * context * 576 * (fp8 ? 1 : 2);
            const cuda::MlaDecodeParams mma = batch.params(fp8, cuda::MlaDecodeKernel::Mma);
            const double mma_us = time_us([&](int, cudaStream_t s) { cuda::launch_mla_decode(mma, s); }, stream);
            const cuda::MlaDecodeParams p = batch.params(fp8, cuda::MlaDecodeKernel::Wgmma);
            const double v6_us = time_variant(p, "v6", "", stream);
            const double v7_us = time_variant(p, "", "", stream);
            const double staged_us = fp8 ? time_variant(p, "", "staged", stream) : 0.0;
            cuda::MlaDecodeParams p_bf16 = p;
            p_bf16.out = nullptr;
            p_bf16.out_bf16 = batch.out.as<uint16_t>();  // [num_seqs, 64, 512] bf16 fits the f32 buffer
            const double bf16_out_us = time_variant(p_bf16, "", "", stream);
            if (!fp8) {
                bf16_cache_us = v7_us;
            }
            std::printf(
                "b=%-3lld ctx=%-5d splits=%-3d %-5s | %8.2f | %8.2f | %8.2f %5.1f%% | %9.2f | %6.2fx | %5.2fx | "
                "%8.2f\n",
                static_cast<long long>(seqs), context, p.num_splits, fp8 ? "fp8" : "bf16", mma_us, v6_us, v7_us,
                100.0 * bytes / v7_us * 1e-3 / copy_gbs, bf16_out_us, v6_us / v7_us, bf16_cache_us / v7_us, staged_us);
        }
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace k2
