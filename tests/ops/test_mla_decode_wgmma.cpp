// The wgmma MLA decode kernel (src/backend/cuda/kernels/mla_decode_wgmma.cuh) beyond the CPU-reference cases that
// test_backend_ops runs for both split kernels (CudaMlaDecode.*): CUDA-graph capture with seq_lens changed on the
// device between replays (the model's decode steps run inside graphs), and bitwise determinism.
// Benchmark (old mma.sync kernel, new wgmma kernel, BF16 and FP8 cache, and the copy rate in the same run):
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

// ---- benchmark ----

// Kimi-K2 decode attention, 64 heads: batch 16 x 8,192 and 64 x 4,096 (151 and 302 MB of BF16 latent cache, 3-6x the
// L2), old (mma.sync) and new (wgmma) split kernels, BF16 and FP8 cache. GB/s counts the latent cache read once.
TEST_F(MlaDecodeWgmma, DISABLED_Perf) {
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const double copy_gbs = copy_rate_gbs(stream);
    std::printf("copy rate (SM copy kernel, 1 GiB, read+write): %.1f GB/s\n", copy_gbs);
    std::printf("%-22s %-5s | %9s %8s %6s | %9s %8s %6s | %7s | %s\n", "shape", "cache", "mma us", "GB/s", "%copy",
                "wgmma us", "GB/s", "%copy", "speedup", "wgmma bf16 us / this");
    std::mt19937 rng(11);
    const std::pair<int64_t, int> shapes[] = {{16, 8192}, {64, 4096}};
    for (const auto& [seqs, context] : shapes) {
        Batch batch(seqs, 64, context, rng);
        double wgmma_bf16_us = 0.0;
        for (const bool fp8 : {false, true}) {
            const double bytes = static_cast<double>(seqs) * context * 576 * (fp8 ? 1 : 2);
            double us[2] = {0.0, 0.0};
            const cuda::MlaDecodeKernel kernels[2] = {cuda::MlaDecodeKernel::Mma, cuda::MlaDecodeKernel::Wgmma};
            for (int k = 0; k < 2; ++k) {
                const cuda::MlaDecodeParams p = batch.params(fp8, kernels[k]);
                us[k] = time_us([&](int, cudaStream_t s) { cuda::launch_mla_decode(p, s); }, stream);
            }
            if (!fp8) {
                wgmma_bf16_us = us[1];
            }
            const int splits = cuda::mla_decode_num_splits(batch.params(fp8, kernels[1]), 132);
            std::printf(
                "b=%-3lld ctx=%-5d splits=%-3d %-5s | %9.2f %8.1f %5.1f%% | %9.2f %8.1f %5.1f%% | %6.2fx | %.2fx\n",
                static_cast<long long>(seqs), context, splits, fp8 ? "fp8" : "bf16", us[0], bytes / us[0] * 1e-3,
                100.0 * bytes / us[0] * 1e-3 / copy_gbs, us[1], bytes / us[1] * 1e-3,
                100.0 * bytes / us[1] * 1e-3 / copy_gbs, us[0] / us[1], wgmma_bf16_us / us[1]);
        }
    }
    // L2 prefetch distance of the wgmma kernel (K2_MLA_WG_L2_AHEAD, pages beyond the two tiles), batch 16 x 8192.
    Batch batch(16, 64, 8192, rng);
    for (const bool fp8 : {false, true}) {
        std::printf("wgmma %s, l2 ahead:", fp8 ? "fp8 " : "bf16");
        for (const char* ahead : {"0", "2", "4", "8"}) {
            setenv("K2_MLA_WG_L2_AHEAD", ahead, 1);
            const cuda::MlaDecodeParams p = batch.params(fp8, cuda::MlaDecodeKernel::Wgmma);
            std::printf("  %s: %.2f us", ahead,
                        time_us([&](int, cudaStream_t s) { cuda::launch_mla_decode(p, s); }, stream));
        }
        unsetenv("K2_MLA_WG_L2_AHEAD");
        std::printf("\n");
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace k2
