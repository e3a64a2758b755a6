// --perf mode of the op driver: times every CUDA op on Kimi-K2 shapes next to the baselines measured in the same
// run (the device-to-device copy rate; cuBLASLt's block-scaled FP8 GEMM) and prints one table row per case:
// µs, TFLOP/s, GB/s, % of the copy rate, ratio to cuBLASLt. Inputs rotate over enough copies to exceed L2.
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/device_copy.h"
#include "backend/cuda/fp8_gemm.h"
#include "backend/cuda/fp8_quant.h"
#include "backend/cuda/mla_decode.h"
#include "backend/cuda/moe_router.h"
#include "ops_common.h"

namespace k2::ops_test {
namespace {

constexpr size_t kRotateBytes = 512ull << 20;  // ten times the H200's 50 MB L2

int copies_for(size_t bytes_per_call) {
    return static_cast<int>(std::clamp<size_t>((kRotateBytes + bytes_per_call - 1) / bytes_per_call, 1, 64));
}

void print_row(const std::string& name, double us, double flops, double bytes, double copy_gbs, double base_us,
               const char* base_name = "cuBLASLt") {
    const double gbs = bytes / us * 1e-3;
    std::printf("%-44s %9.2f us %8.1f TFLOP/s %8.1f GB/s %6.1f%% copy", name.c_str(), us, flops / us * 1e-6, gbs,
                100.0 * gbs / copy_gbs);
    if (base_us > 0)
        std::printf("  %5.2fx vs %s", base_us / us, base_name);
    std::printf("\n");
    std::fflush(stdout);
}

double measure_copy_gbs(cudaStream_t stream) {
    const size_t bytes = 1ull << 30;
    cuda::DeviceBuffer a(bytes);
    cuda::DeviceBuffer b(bytes);
    a.fill_bytes(1);
    const double engine_us = time_us(
        [&](int, cudaStream_t s) {
            CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, s));
        },
        stream);
    const double gbs = copy_rate_gbs(stream);
    const double us = 2.0 * bytes / gbs * 1e-3;  // bytes read + bytes written
    std::printf("cudaMemcpyAsync D2D (1 GiB, read+write)     %9.2f us %8.1f GB/s\n", engine_us,
                2.0 * bytes / engine_us * 1e-3);
    std::printf("SM copy kernel (1 GiB, read+write)          %9.2f us %8.1f GB/s   <- the copy rate\n", us, gbs);
    return gbs;
}

struct GemmShape {
    const char* name;
    int64_t n;
    int64_t k;
};

// Random e4m3 bytes from a cheap generator (hundreds of MB per shape): any code but the two NaNs.
std::vector<uint8_t> fast_random_fp8(size_t count, uint64_t seed) {
    std::vector<uint8_t> out(count);
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
    for (auto& v : out) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        const auto b = static_cast<uint8_t>(state >> 24);
        v = (b & 0x7F) == 0x7F ? static_cast<uint8_t>(b & 0xF7) : b;
    }
    return out;
}

struct GemmWeights {
    std::vector<cuda::DeviceBuffer> w;   // copies of [n, k] e4m3
    std::vector<cuda::DeviceBuffer> ws;  // copies of [ceil(n / 128), k / 128] f32
};

GemmWeights make_weights(const GemmShape& shape, std::mt19937& rng) {
    const size_t w_bytes = static_cast<size_t>(shape.n * shape.k);
    const int copies = copies_for(w_bytes);
    const auto w_host = fast_random_fp8(w_bytes, rng());
    const auto ws_host =
        random_uniform(static_cast<size_t>((shape.n + 127) / 128 * (shape.k / 128)), rng, 1e-4f, 4e-4f);
    GemmWeights out;
    for (int c = 0; c < copies; ++c) {
        out.w.push_back(to_device(w_host));
        out.ws.push_back(to_device(ws_host));
    }
    return out;
}

void perf_gemm(cuda::Fp8GemmRunner& runner, const GemmShape& shape, const GemmWeights& weights, int64_t m,
               double copy_gbs, cudaStream_t stream, std::mt19937& rng) {
    const size_t copies = weights.w.size();
    PerfGemmInputs in = perf_gemm_inputs(
        m, shape.n, shape.k, [&](size_t count) { return fast_random_fp8(count, rng()); }, rng);
    cuda::Fp8GemmParams& p = in.params;  // m_pad: cuBLASLt's fallback shape below
    const int64_t m_pad = (m + 15) / 16 * 16;
    auto body = [&](cuda::Fp8GemmImpl impl) {
        return [&, impl](int iter, cudaStream_t s) {
            cuda::Fp8GemmParams q = p;
            q.w = weights.w[static_cast<size_t>(iter) % copies].as<uint8_t>();
            q.w_scale = weights.ws[static_cast<size_t>(iter) % copies].as<float>();
            runner.run(q, s, impl);
        };
    };
    const double flops = 2.0 * static_cast<double>(m) * shape.n * shape.k;
    const double bytes = static_cast<double>(shape.n) * shape.k + m * shape.k + 2.0 * m * shape.n;
    const std::string label = fmt::format("{} m={} n={} k={}", shape.name, m, shape.n, shape.k);
    double base_us = 0.0;
    try {
        base_us = time_us(body(cuda::Fp8GemmImpl::CublasLt), stream);
        print_row("cublaslt " + label, base_us, flops, bytes, copy_gbs, 0.0);
    } catch (const Error& e) {
        // cuBLASLt has no block-scaled kernel for some small m: time it on m padded to 16, as a caller would.
        std::printf("cublaslt %s: %s; timing m padded to %ld\n", label.c_str(), e.message().c_str(),
                    static_cast<long>(m_pad));
        p.num_tokens = m_pad;
        p.x_scale_stride = m_pad;
        base_us = time_us(body(cuda::Fp8GemmImpl::CublasLt), stream);
        print_row("cublaslt(pad) " + label, base_us, flops, bytes, copy_gbs, 0.0);
        p.num_tokens = m;
        p.x_scale_stride = m;
    }
    if (m <= 128) {
        const double us = time_us(body(cuda::Fp8GemmImpl::Decode), stream);
        print_row("decode   " + label, us, flops, bytes, copy_gbs, base_us);
    }
}

void perf_quant(double copy_gbs, cudaStream_t stream, std::mt19937& rng) {
    const int64_t m = 8192;
    for (const int64_t hidden : {int64_t{7168}}) {
        const auto x = to_device(random_bf16(static_cast<size_t>(m * hidden), rng));
        const auto wt = to_device(random_bf16(static_cast<size_t>(hidden), rng));
        cuda::DeviceBuffer q(static_cast<size_t>(m * hidden));
        cuda::DeviceBuffer s(static_cast<size_t>(m * hidden / 128) * 4);
        cuda::RmsNormQuantParams p;
        p.x = x.as<uint16_t>();
        p.weight = wt.as<uint16_t>();
        p.out = q.as<uint8_t>();
        p.out_scale = s.as<float>();
        p.num_tokens = m;
        p.hidden = hidden;
        p.x_stride = hidden;
        p.out_stride = hidden;
        p.scale_stride = m;
        const double us = time_us([&](int, cudaStream_t st) { cuda::launch_rms_norm_quant(p, st); }, stream);
        const double bytes = m * hidden * 3.0 + m * hidden / 128 * 4.0;
        print_row(fmt::format("rms_norm_quant m={} hidden={}", m, hidden), us, 0.0, bytes, copy_gbs, 0.0);
    }
    for (const int64_t inter : {int64_t{2048}, int64_t{18432}}) {
        const int64_t rows = inter == 2048 ? m : 2048;
        const auto gu = to_device(random_bf16(static_cast<size_t>(rows * 2 * inter), rng));
        cuda::DeviceBuffer q(static_cast<size_t>(rows * inter));
        cuda::DeviceBuffer s(static_cast<size_t>(rows * inter / 128) * 4);
        cuda::SiluMulQuantParams p;
        p.gate_up = gu.as<uint16_t>();
        p.out = q.as<uint8_t>();
        p.out_scale = s.as<float>();
        p.num_tokens = rows;
        p.inter = inter;
        p.gate_up_stride = 2 * inter;
        p.out_stride = inter;
        p.scale_stride = rows;
        const double us = time_us([&](int, cudaStream_t st) { cuda::launch_silu_mul_quant(p, st); }, stream);
        const double bytes = rows * inter * 5.0 + rows * inter / 128 * 4.0;
        print_row(fmt::format("silu_mul_quant m={} inter={}", rows, inter), us, 0.0, bytes, copy_gbs, 0.0);
    }
}

void perf_router(double copy_gbs, cudaStream_t stream, std::mt19937& rng) {
    for (const int64_t m : {int64_t{16}, int64_t{256}, int64_t{8192}}) {
        const int experts = 384;
        const auto logits = to_device(random_uniform(static_cast<size_t>(m * experts), rng, -4.0f, 4.0f));
        const auto bias = to_device(random_uniform(static_cast<size_t>(experts), rng, -0.5f, 0.5f));
        cuda::DeviceBuffer ids(static_cast<size_t>(m * 8 * 4));
        cuda::DeviceBuffer weights(static_cast<size_t>(m * 8 * 4));
        cuda::MoeRouterParams p;
        p.logits = logits.as<float>();
        p.bias = bias.as<float>();
        p.topk_ids = ids.as<int32_t>();
        p.topk_weights = weights.as<float>();
        p.num_tokens = m;
        p.num_experts = experts;
        p.top_k = 8;
        p.routed_scaling_factor = 2.827f;
        const double us = time_us([&](int, cudaStream_t st) { cuda::launch_moe_router(p, st); }, stream);
        const double bytes = m * experts * 4.0 + m * 8 * 8.0;
        print_row(fmt::format("moe_router m={} experts=384 top8", m), us, 0.0, bytes, copy_gbs, 0.0);
    }
}

// Kimi-K2 decode attention: 64 heads, batch 16, 8192-token contexts, BF16 latent cache in shuffled pages.
void perf_mla(double copy_gbs, cudaStream_t stream, std::mt19937& rng) {
    const int64_t num_seqs = 16;
    const int context = 8192;
    const int heads = 64;
    const int pages = context / 64;
    const int64_t num_blocks = num_seqs * pages;
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    for (int64_t i = 0; i < num_blocks; ++i)
        ids[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    std::shuffle(ids.begin(), ids.end(), rng);
    const size_t cache_elems = static_cast<size_t>(num_blocks) * 64 * 576;
    std::vector<uint16_t> cache_host(cache_elems);
    uint32_t state = 12345;
    for (auto& v : cache_host) {
        state = state * 1664525u + 1013904223u;
        v = float_to_bf16(static_cast<float>(static_cast<int32_t>(state >> 8) % 2001 - 1000) * 1e-3f);
    }
    const auto cache = to_device(cache_host);
    const auto tables = to_device(ids);
    const auto lens = to_device(std::vector<int32_t>(static_cast<size_t>(num_seqs), context));
    const auto q = to_device(random_bf16(static_cast<size_t>(num_seqs * heads * 576), rng));
    cuda::DeviceBuffer out(static_cast<size_t>(num_seqs * heads * 512) * 4);
    cuda::MlaDecodeParams p;
    p.q = q.as<uint16_t>();
    p.cache = cache.as<uint16_t>();
    p.block_tables = tables.as<int32_t>();
    p.seq_lens = lens.as<int32_t>();
    p.out = out.as<float>();
    p.num_seqs = num_seqs;
    p.num_heads = heads;
    p.max_blocks_per_seq = pages;
    p.max_seq_len = context;
    p.softmax_scale = 0.1f;
    const int splits = cuda::mla_decode_num_splits(p, 132);
    cuda::DeviceBuffer ws(static_cast<size_t>(cuda::mla_decode_workspace_floats(p, splits)) * 4);
    p.workspace = ws.as<float>();
    const double us = time_us([&](int, cudaStream_t st) { cuda::launch_mla_decode(p, st); }, stream);
    const double bytes = static_cast<double>(cache_elems) * 2;  // latent reads (the floor's bytes)
    const double flops = 2.0 * num_seqs * heads * context * (576 + 512);
    print_row(fmt::format("mla_decode bf16 b={} ctx={} heads={} splits={}", num_seqs, context, heads, splits), us,
              flops, bytes, copy_gbs, 0.0);
    // The same batch over an FP8 cache (half the bytes), timed against the BF16 cache above.
    std::vector<uint8_t> cache_fp8_host(cache_elems);
    for (size_t i = 0; i < cache_elems; ++i) {
        cache_fp8_host[i] = float_to_fp8_e4m3(bf16_to_float(cache_host[i]));
    }
    const auto cache_fp8 = to_device(cache_fp8_host);
    p.cache = nullptr;
    p.cache_fp8 = cache_fp8.as<uint8_t>();
    const double us_fp8 = time_us([&](int, cudaStream_t st) { cuda::launch_mla_decode(p, st); }, stream);
    print_row(fmt::format("mla_decode fp8  b={} ctx={} heads={} splits={}", num_seqs, context, heads, splits), us_fp8,
              flops, bytes / 2, copy_gbs, us, "the BF16 cache");
}

}  // namespace

// --perf [--only NAME] [--m M]: all cases, one GEMM shape (by name; at one token count with --m) or one group of
// the other ops (quant, router, mla), e.g. for ncu.
int run_perf(int argc, char** argv) {
    std::string only;
    int64_t only_m = 0;
    for (int i = 1; i + 1 < argc; ++i) {
        if (std::string(argv[i]) == "--only")
            only = argv[i + 1];
        if (std::string(argv[i]) == "--m")
            only_m = std::stoll(argv[i + 1]);
    }
    if (cuda::cuda_device_count() == 0) {
        std::printf("no CUDA device: --perf needs a GPU\n");
        return 2;
    }
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const double copy_gbs = measure_copy_gbs(stream);
    std::mt19937 rng(7);
    cuda::Fp8GemmRunner runner;
    const GemmShape shapes[] = {
        {"q_a+kv_a", 2112, 7168},       {"q_b", 12288, 1536},        {"o_proj", 7168, 8192},
        {"dense_gate_up", 18432, 7168}, {"dense_down", 7168, 18432}, {"expert_gate_up", 4096, 7168},
        {"expert_down", 7168, 2048},    {"q_b_v3", 24576, 1536},     {"kv_b", 16384, 512},
    };
    if (only == "quant" || only == "router" || only == "mla") {  // one group of the non-GEMM ops (for ncu)
        (only == "quant" ? perf_quant : only == "router" ? perf_router : perf_mla)(copy_gbs, stream, rng);
        CUDA_CHECK(cudaStreamDestroy(stream));
        return 0;
    }
    for (const auto& shape : shapes) {
        if (!only.empty() && only != shape.name)
            continue;
        const GemmWeights weights = make_weights(shape, rng);
        if (only_m > 0) {
            perf_gemm(runner, shape, weights, only_m, copy_gbs, stream, rng);
            continue;
        }
        for (const int64_t m : {1, 8, 16, 64, 128}) {
            perf_gemm(runner, shape, weights, m, copy_gbs, stream, rng);
        }
        if (shape.n == 18432 || shape.n == 4096) {  // the prefill side: cuBLASLt is the large-M path
            perf_gemm(runner, shape, weights, 4096, copy_gbs, stream, rng);
        }
    }
    if (only.empty()) {
        perf_quant(copy_gbs, stream, rng);
        perf_router(copy_gbs, stream, rng);
        perf_mla(copy_gbs, stream, rng);
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
    return 0;
}

}  // namespace k2::ops_test
