// upload_weights: the CPU loader's tensor views (mmap'ed safetensors) copied to the GPU through two pinned staging
// buffers, so reading the next chunk from the page cache or disk overlaps the DMA of the previous one and no shard
// is ever copied whole into host memory.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "core/log.h"
#include "model/cuda/deepseek_v3_cuda.h"

namespace k2::cuda_model {

namespace {

constexpr size_t kStagingBytes = size_t{64} << 20;

// Double-buffered pinned staging; reports progress (a bar on a terminal, a log line per layer otherwise).
class Uploader {
public:
    explicit Uploader(size_t total_bytes) : m_total(total_bytes), m_start(std::chrono::steady_clock::now()) {
        CUDA_CHECK(cudaStreamCreateWithFlags(&m_stream, cudaStreamNonBlocking));
        for (int i = 0; i < 2; ++i) {
            CUDA_CHECK(cudaHostAlloc(&m_staging[i], kStagingBytes, cudaHostAllocDefault));
            CUDA_CHECK(cudaEventCreateWithFlags(&m_done[i], cudaEventDisableTiming));
        }
        m_tty = isatty(STDERR_FILENO) != 0;
    }
    ~Uploader() {
        cudaStreamSynchronize(m_stream);
        for (int i = 0; i < 2; ++i) {
            cudaFreeHost(m_staging[i]);
            cudaEventDestroy(m_done[i]);
        }
        cudaStreamDestroy(m_stream);
    }
    Uploader(const Uploader&) = delete;
    Uploader& operator=(const Uploader&) = delete;

    void copy(void* dst, const void* src, size_t num_bytes) {
        for (size_t done = 0; done < num_bytes;) {
            const size_t chunk = std::min(kStagingBytes, num_bytes - done);
            CUDA_CHECK(cudaEventSynchronize(m_done[m_next]));  // the DMA that used this buffer last is finished
            std::memcpy(m_staging[m_next], static_cast<const char*>(src) + done, chunk);
            CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + done, m_staging[m_next], chunk, cudaMemcpyHostToDevice,
                                       m_stream));
            CUDA_CHECK(cudaEventRecord(m_done[m_next], m_stream));
            m_next ^= 1;
            done += chunk;
        }
        m_copied += num_bytes;
        if (m_tty) {
            report(false);
        }
    }

    void finish_part(const std::string& what) {
        CUDA_CHECK(cudaStreamSynchronize(m_stream));
        if (!m_tty) {
            K2_INFO("loaded {}: {:.2f} / {:.2f} GiB, {:.2f} GiB/s", what, gib(m_copied), gib(m_total), rate());
        }
    }

    void finish() {
        CUDA_CHECK(cudaStreamSynchronize(m_stream));
        if (m_tty) {
            report(true);
        }
    }

private:
    static double gib(size_t bytes) { return static_cast<double>(bytes) / (1ull << 30); }
    double rate() const {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - m_start).count();
        return gib(m_copied) / std::max(s, 1e-6);
    }
    void report(bool last) {
        constexpr int kWidth = 40;
        const double frac = m_total > 0 ? static_cast<double>(m_copied) / static_cast<double>(m_total) : 1.0;
        const int filled = static_cast<int>(frac * kWidth);
        std::fprintf(stderr, "\rLoading weights [%s%s] %5.1f%% %.2f/%.2f GiB %.2f GiB/s%s",
                     std::string(static_cast<size_t>(filled), '#').c_str(),
                     std::string(static_cast<size_t>(kWidth - filled), ' ').c_str(), 100.0 * frac, gib(m_copied),
                     gib(m_total), rate(), last ? "\n" : "");
    }

    size_t m_total;
    size_t m_copied = 0;
    std::chrono::steady_clock::time_point m_start;
    cudaStream_t m_stream = nullptr;
    void* m_staging[2] = {nullptr, nullptr};
    cudaEvent_t m_done[2] = {nullptr, nullptr};
    int m_next = 0;
    bool m_tty = false;
};

// bf16 bits of a BF16 or F32 host tensor (F32 is rounded once, to nearest even).
std::vector<uint16_t> to_bf16(const Tensor& t) {
    std::vector<uint16_t> out(static_cast<size_t>(t.numel()));
    if (t.dtype() == DType::BF16) {
        std::memcpy(out.data(), t.data(), out.size() * 2);
        return out;
    }
    K2_CHECK(t.dtype() == DType::F32, "CUDA model: a norm/router/embedding tensor has dtype {} (BF16 or F32 expected)",
             dtype_name(t.dtype()));
    const float* src = t.data_as<float>();
    for (size_t i = 0; i < out.size(); ++i) {
        out[i] = float_to_bf16(src[i]);
    }
    return out;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
        out[i] = float_to_bf16(v[i]);
    }
    return out;
}

class LayerUploader {
public:
    explicit LayerUploader(Uploader& up) : m_up(up) {}

    cuda::DeviceBuffer bf16(const Tensor& t) {
        if (t.dtype() == DType::BF16) {
            cuda::DeviceBuffer buf(t.nbytes());
            m_up.copy(buf.data(), t.data(), t.nbytes());
            return buf;
        }
        return bf16(to_bf16(t));
    }
    cuda::DeviceBuffer bf16(const std::vector<uint16_t>& v) {
        cuda::DeviceBuffer buf(v.size() * 2);
        m_up.copy(buf.data(), v.data(), v.size() * 2);
        return buf;
    }
    cuda::DeviceBuffer f32(const std::vector<float>& v) {
        cuda::DeviceBuffer buf(v.size() * 4);
        m_up.copy(buf.data(), v.data(), v.size() * 4);
        return buf;
    }

    // Projections stacked along n into one [sum n, k] matrix (gate_up = [gate; up]); every part FP8 with whole
    // 128-row scale blocks, so the stacked scales are the parts' scales one after the other.
    DeviceLinear linear(std::initializer_list<const LinearWeight*> parts, int64_t copies = 1) {
        DeviceLinear d;
        d.k = (*parts.begin())->weight.dim(1);
        for (const LinearWeight* p : parts) {
            K2_CHECK(p->weight.dtype() == DType::F8_E4M3,
                     "CUDA model: projection weights must be FP8 (e4m3, 128x128 block scales), got {}",
                     dtype_name(p->weight.dtype()));
            K2_CHECK(parts.size() == 1 || p->out_features() % 128 == 0,
                     "CUDA model: fused projections need multiples of 128 rows, got {}", p->out_features());
            d.n += p->out_features();
        }
        d.weight = cuda::DeviceBuffer(static_cast<size_t>(copies * d.n * d.k));
        d.scale = cuda::DeviceBuffer(static_cast<size_t>(copies * (d.n + 127) / 128 * (d.k / 128)) * 4);
        return d;
    }
    // Appends the parts' bytes at the write cursors (one expert after the other).
    void fill(DeviceLinear& d, std::initializer_list<const LinearWeight*> parts, size_t& w_off, size_t& s_off) {
        for (const LinearWeight* p : parts) {
            m_up.copy(d.weight.as<char>() + w_off, p->weight.data(), p->weight.nbytes());
            m_up.copy(d.scale.as<char>() + s_off, p->scale_inv.data(), p->scale_inv.nbytes());
            w_off += p->weight.nbytes();
            s_off += p->scale_inv.nbytes();
        }
    }
    DeviceLinear single(std::initializer_list<const LinearWeight*> parts) {
        DeviceLinear d = linear(parts);
        size_t w_off = 0;
        size_t s_off = 0;
        fill(d, parts, w_off, s_off);
        return d;
    }

private:
    Uploader& m_up;
};

size_t mlp_bytes(const MlpWeights& m) {
    return m.gate.weight.nbytes() + m.up.weight.nbytes() + m.down.weight.nbytes();
}

size_t total_bytes(const DeepseekV3Weights& host) {
    size_t total = host.embed_tokens.nbytes() + host.lm_head.weight.nbytes();
    for (const LayerWeights& l : host.layers) {
        total += l.q_a.weight.nbytes() + l.q_b.weight.nbytes() + l.q_proj.weight.nbytes() + l.kv_a.weight.nbytes() +
                 l.o_proj.weight.nbytes() + (l.w_uk.size() + l.w_uv.size()) * 2 + l.router.nbytes();
        total += mlp_bytes(l.dense) + mlp_bytes(l.shared);
        for (const MlpWeights& e : l.experts) {
            total += mlp_bytes(e);
        }
    }
    return total;
}

DeviceLayer upload_layer(LayerUploader& up, const LayerWeights& l, const ModelConfig& c) {
    DeviceLayer d;
    d.input_norm = up.bf16(l.input_norm);
    d.post_norm = up.bf16(l.post_attention_norm);
    if (c.q_lora_rank > 0) {
        d.q_a = up.single({&l.q_a});
        d.q_a_norm = up.bf16(l.q_a_norm);
        d.q_b = up.single({&l.q_b});
    } else {
        d.q_b = up.single({&l.q_proj});
    }
    d.kv_a = up.single({&l.kv_a});
    d.kv_a_norm = up.bf16(l.kv_a_norm);
    d.w_uk = up.bf16(to_bf16(l.w_uk));
    d.w_uv = up.bf16(to_bf16(l.w_uv));
    d.o_proj = up.single({&l.o_proj});
    d.is_moe = l.is_moe;
    const MlpWeights& dense = l.is_moe ? l.shared : l.dense;
    if (!l.is_moe || l.has_shared) {
        d.gate_up = up.single({&dense.gate, &dense.up});
        d.down = up.single({&dense.down});
    }
    if (l.is_moe) {
        d.router = up.bf16(l.router);
        d.router_bias = up.f32(l.router_bias);
        // Expert parallelism leaves the other ranks' experts empty (shard_weights): upload the held run only.
        const auto held = [](const MlpWeights& e) { return e.gate.weight.rank() > 0; };
        const auto first = std::find_if(l.experts.begin(), l.experts.end(), held);
        const auto last = std::find_if_not(first, l.experts.end(), held);
        K2_CHECK(first != l.experts.end() && std::none_of(last, l.experts.end(), held),
                 "CUDA model: a rank's routed experts must be one contiguous, non-empty range");
        const auto num = static_cast<int64_t>(last - first);
        d.experts.num_experts = static_cast<int>(num);
        d.experts.first_expert = static_cast<int>(first - l.experts.begin());
        d.experts.gate_up = up.linear({&first->gate, &first->up}, num);
        d.experts.down = up.linear({&first->down}, num);
        size_t gw = 0, gs = 0, dw = 0, ds = 0;
        for (auto e = first; e != last; ++e) {
            up.fill(d.experts.gate_up, {&e->gate, &e->up}, gw, gs);
            up.fill(d.experts.down, {&e->down}, dw, ds);
        }
    }
    return d;
}

}  // namespace

DeviceWeights upload_weights(const DeepseekV3Weights& host, const ModelConfig& config) {
    DeviceWeights d;
    d.num_bytes = total_bytes(host);
    Uploader uploader(d.num_bytes);
    LayerUploader up(uploader);
    d.embed = up.bf16(host.embed_tokens);
    for (size_t i = 0; i < host.layers.size(); ++i) {
        d.layers.push_back(upload_layer(up, host.layers[i], config));
        uploader.finish_part(fmt::format("layer {}/{}", i + 1, host.layers.size()));
    }
    d.final_norm = up.bf16(host.final_norm);
    K2_CHECK(host.lm_head.weight.dtype() != DType::F8_E4M3, "CUDA model: an FP8 lm_head is not supported");
    d.lm_head = up.bf16(host.lm_head.weight);
    uploader.finish();
    return d;
}

}  // namespace k2::cuda_model
