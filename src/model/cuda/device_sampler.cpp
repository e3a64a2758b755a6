#include "model/cuda/device_sampler.h"

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/sampling.h"
#include "model/cuda/cuda_workspace.h"

namespace k2::cuda_model {

DeviceSampler::DeviceSampler() = default;

// One upload per step: the rows' uniforms, temperatures and modes packed back to back ([rows] f64, then f32, then
// i32: each part stays aligned) into one device buffer.
void DeviceSampler::begin_step(std::span<const DeviceSampleRow> rows, cudaStream_t stream) {
    m_modes.clear();
    if (rows.empty()) {
        return;
    }
    const size_t n = rows.size();
    m_staging.resize(n * (8 + 4 + 4));
    auto* uniform = reinterpret_cast<double*>(m_staging.data());
    auto* inv_temperature = reinterpret_cast<float*>(m_staging.data() + n * 8);
    auto* mode = reinterpret_cast<int32_t*>(m_staging.data() + n * 12);
    for (size_t r = 0; r < n; ++r) {
        uniform[r] = rows[r].uniform;
        inv_temperature[r] = rows[r].inv_temperature;
        mode[r] = static_cast<int32_t>(rows[r].mode);  // RowSampling and cuda::SampleMode share their values
        m_modes.push_back(mode[r]);
    }
    ensure(m_d_rows, m_staging.size());
    // Pageable source: CUDA stages it before returning, so the staging vector may change afterwards.
    CUDA_CHECK(cudaMemcpyAsync(m_d_rows.data(), m_staging.data(), m_staging.size(), cudaMemcpyHostToDevice, stream));
    ensure(m_d_tokens, n * 4);
    if (m_host_capacity < static_cast<int64_t>(n)) {
        m_host_capacity = std::max<int64_t>(static_cast<int64_t>(n), 64);
        int32_t* ptr = nullptr;
        CUDA_CHECK(cudaHostAlloc(&ptr, static_cast<size_t>(m_host_capacity) * 4, cudaHostAllocDefault));
        m_host_tokens = std::shared_ptr<int32_t>(ptr, [](int32_t* p) { cudaFreeHost(p); });
    }
}

bool DeviceSampler::any_host(int64_t r0, int64_t n) const {
    if (m_modes.empty()) {
        return true;
    }
    return std::any_of(m_modes.begin() + r0, m_modes.begin() + r0 + n,
                       [](int32_t mode) { return mode == static_cast<int32_t>(RowSampling::Host); });
}

void DeviceSampler::sample(const float* logits, int64_t r0, int64_t n, int64_t vocab, cudaStream_t stream) {
    cuda::SampleRowsParams p;
    p.logits = logits;
    const auto rows = m_modes.size();
    p.uniform = m_d_rows.as<double>() + r0;
    p.inv_temperature = reinterpret_cast<const float*>(m_d_rows.as<uint8_t>() + rows * 8) + r0;
    p.mode = reinterpret_cast<const int32_t*>(m_d_rows.as<uint8_t>() + rows * 12) + r0;
    p.tokens = m_d_tokens.as<int32_t>() + r0;
    p.rows = n;
    p.vocab = vocab;
    p.stride = vocab;
    cuda::launch_sample_rows(p, stream);
    // Host rows' slots come back as the kernel left them (untouched device memory): finish_step masks them.
    CUDA_CHECK(cudaMemcpyAsync(m_host_tokens.get() + r0, p.tokens, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost,
                               stream));
}

std::vector<int32_t> DeviceSampler::finish_step() {
    std::vector<int32_t> tokens;
    if (m_modes.empty()) {
        return tokens;
    }
    tokens.assign(m_host_tokens.get(), m_host_tokens.get() + m_modes.size());
    for (size_t r = 0; r < m_modes.size(); ++r) {
        if (m_modes[r] == static_cast<int32_t>(RowSampling::Host)) {
            tokens[r] = -1;
        }
    }
    m_modes.clear();
    return tokens;
}

}  // namespace k2::cuda_model
