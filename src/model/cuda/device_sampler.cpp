#include "model/cuda/device_sampler.h"

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/sampling.h"
#include "model/cuda/cuda_workspace.h"

namespace k2::cuda_model {
namespace {

template <typename T>
void upload(cuda::DeviceBuffer& buf, const std::vector<T>& host, cudaStream_t stream) {
    ensure(buf, host.size() * sizeof(T));
    // Pageable source: CUDA stages it before returning, so the vector may change afterwards.
    CUDA_CHECK(cudaMemcpyAsync(buf.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
}

}  // namespace

DeviceSampler::DeviceSampler() = default;

void DeviceSampler::begin_step(std::span<const DeviceSampleRow> rows, cudaStream_t stream) {
    m_modes.clear();
    m_inv_temperature.clear();
    m_uniform.clear();
    for (const DeviceSampleRow& row : rows) {
        m_modes.push_back(static_cast<int32_t>(row.mode));  // RowSampling and cuda::SampleMode share their values
        m_inv_temperature.push_back(row.inv_temperature);
        m_uniform.push_back(row.uniform);
    }
    if (rows.empty()) {
        return;
    }
    upload(m_d_modes, m_modes, stream);
    upload(m_d_inv_temperature, m_inv_temperature, stream);
    upload(m_d_uniform, m_uniform, stream);
    ensure(m_d_tokens, rows.size() * 4);
    if (m_host_capacity < static_cast<int64_t>(rows.size())) {
        m_host_capacity = std::max<int64_t>(static_cast<int64_t>(rows.size()), 64);
        int32_t* ptr = nullptr;
        CUDA_CHECK(cudaHostAlloc(&ptr, static_cast<size_t>(m_host_capacity) * 4, cudaHostAllocDefault));
        m_host_tokens = std::shared_ptr<int32_t>(ptr, [](int32_t* p) { cudaFreeHost(p); });
    }
    std::fill_n(m_host_tokens.get(), rows.size(), -1);
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
    p.mode = m_d_modes.as<int32_t>() + r0;
    p.inv_temperature = m_d_inv_temperature.as<float>() + r0;
    p.uniform = m_d_uniform.as<double>() + r0;
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
