#include "model/cuda/device_sampler.h"

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/sampling.h"
#include "model/cuda/cuda_workspace.h"

namespace k2::cuda_model {

DeviceSampler::DeviceSampler() = default;

namespace {

// The packed rows' layout in one buffer (each part stays aligned): [rows] SampleFilter (32 B), [rows] f64 uniforms,
// [rows] f32 inverse temperatures, [rows] i32 modes.
static_assert(static_cast<int32_t>(RowSampling::Filtered) == static_cast<int32_t>(cuda::SampleMode::Filtered));
constexpr size_t kFilterBytes = sizeof(cuda::SampleFilter);
static_assert(kFilterBytes % 8 == 0);
constexpr size_t kRowBytes = kFilterBytes + 8 + 4 + 4;
size_t uniform_offset(size_t rows) {
    return rows * kFilterBytes;
}
size_t inv_temperature_offset(size_t rows) {
    return rows * (kFilterBytes + 8);
}
size_t mode_offset(size_t rows) {
    return rows * (kFilterBytes + 12);
}

}  // namespace

// One upload per step: the rows' filters, uniforms, temperatures and modes packed back to back into one device buffer.
void DeviceSampler::begin_step(std::span<const DeviceSampleRow> rows, cudaStream_t stream) {
    m_modes.clear();
    if (rows.empty()) {
        return;
    }
    const size_t n = rows.size();
    m_staging.resize(n * kRowBytes);
    auto* filter = reinterpret_cast<cuda::SampleFilter*>(m_staging.data());
    auto* uniform = reinterpret_cast<double*>(m_staging.data() + uniform_offset(n));
    auto* inv_temperature = reinterpret_cast<float*>(m_staging.data() + inv_temperature_offset(n));
    auto* mode = reinterpret_cast<int32_t*>(m_staging.data() + mode_offset(n));
    for (size_t r = 0; r < n; ++r) {
        const DeviceSampleRow& row = rows[r];
        filter[r] = cuda::SampleFilter{row.temperature, row.top_p, row.min_p, row.top_k, 0};
        uniform[r] = row.uniform;
        inv_temperature[r] = row.inv_temperature;
        mode[r] = static_cast<int32_t>(row.mode);  // RowSampling and cuda::SampleMode share their values
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
    const uint8_t* base = m_d_rows.as<uint8_t>();
    // No Filtered row in this pass: a null filter spares the filter kernel's launch.
    const bool any_filtered = std::any_of(m_modes.begin() + r0, m_modes.begin() + r0 + n, [](int32_t mode) {
        return mode == static_cast<int32_t>(RowSampling::Filtered);
    });
    p.filter = any_filtered ? reinterpret_cast<const cuda::SampleFilter*>(base) + r0 : nullptr;
    p.uniform = reinterpret_cast<const double*>(base + uniform_offset(rows)) + r0;
    p.inv_temperature = reinterpret_cast<const float*>(base + inv_temperature_offset(rows)) + r0;
    p.mode = reinterpret_cast<const int32_t*>(base + mode_offset(rows)) + r0;
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
