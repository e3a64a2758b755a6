// DeviceSampler: the CUDA model's side of sampling on the GPU (ForwardBatch::device_sampling). Per step it uploads
// the rows' modes, temperatures, filters (top-k / top-p / min-p) and uniforms, samples each logits pass's rows on the
// stream right after the lm_head (backend/cuda/sampling.h), and downloads only their tokens; rows marked Host still
// have their logits downloaded by the model. The tokens reach the host with the step (collect() synchronizes the
// stream).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "model/forward_batch.h"

namespace k2::cuda_model {

class DeviceSampler {
public:
    DeviceSampler();

    // The step's rows ([num_logits]; empty: the host samples everything). Enqueues their upload on `stream`.
    void begin_step(std::span<const DeviceSampleRow> rows, cudaStream_t stream);
    bool active() const { return !m_modes.empty(); }
    // Whether rows [r0, r0 + n) hold one the host samples (its logits must be downloaded).
    bool any_host(int64_t r0, int64_t n) const;
    // Samples rows [r0, r0 + n) from logits [n, vocab] (device, row stride vocab) and enqueues their tokens' download.
    void sample(const float* logits, int64_t r0, int64_t n, int64_t vocab, cudaStream_t stream);
    // After the stream has synchronized: [num_logits] tokens, -1 for Host rows; empty when the step had none.
    std::vector<int32_t> finish_step();

private:
    std::vector<int32_t> m_modes;    // [rows] cuda::SampleMode of the step
    std::vector<uint8_t> m_staging;  // the step's rows packed for one upload (begin_step)
    cuda::DeviceBuffer m_d_rows;     // [rows] filters, f64 uniforms, f32 inverse temperatures, i32 modes
    cuda::DeviceBuffer m_d_tokens;
    std::shared_ptr<int32_t> m_host_tokens;  // [capacity] pinned: the download target
    int64_t m_host_capacity = 0;
};

}  // namespace k2::cuda_model
