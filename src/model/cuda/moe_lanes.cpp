#include "model/cuda/moe_lanes.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace k2::cuda_model {

int MoePrefillLanes::lanes_from_env() {
    const char* value = std::getenv("K2_MOE_PREFILL_LANES");
    if (value == nullptr) {
        return 4;
    }
    const int lanes = std::atoi(value);
    K2_CHECK(lanes >= 1 && lanes <= 16, "K2_MOE_PREFILL_LANES must be 1..16, got '{}'", value);
    return lanes;
}

MoePrefillLanes::MoePrefillLanes(int num_lanes, const ModelConfig& c, int64_t max_tokens) {
    const int64_t rows = max_tokens + 16;
    const int64_t scale_floats = std::max(c.hidden_size, c.moe_intermediate_size) / 128 * rows;
    const int64_t scratch_elems = rows * std::max(2 * c.moe_intermediate_size, c.hidden_size);
    m_scales = cuda::DeviceBuffer(static_cast<size_t>(num_lanes * scale_floats) * 4);
    m_scratch = cuda::DeviceBuffer(static_cast<size_t>(num_lanes * scratch_elems) * 2);
    CUDA_CHECK(cudaEventCreateWithFlags(&m_fork, cudaEventDisableTiming));
    for (int j = 0; j < num_lanes; ++j) {
        m_runners.push_back(std::make_unique<cuda::Fp8GemmRunner>());
        cudaStream_t stream = nullptr;
        CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        m_streams.push_back(stream);
        cudaEvent_t done = nullptr;
        CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
        m_done.push_back(done);
        cuda::Fp8PrefillLane lane;
        lane.runner = m_runners.back().get();
        lane.stream = stream;
        lane.done = done;
        lane.padded_scales = m_scales.as<float>() + j * scale_floats;
        lane.y_scratch = m_scratch.as<uint16_t>() + j * scratch_elems;
        m_lanes.push_back(lane);
    }
}

MoePrefillLanes::~MoePrefillLanes() {
    for (cudaStream_t s : m_streams) {
        cudaStreamDestroy(s);
    }
    for (cudaEvent_t e : m_done) {
        cudaEventDestroy(e);
    }
    if (m_fork != nullptr) {
        cudaEventDestroy(m_fork);
    }
}

void MoePrefillLanes::run(const cuda::Fp8GroupedGemmParams& p, const int32_t* host_offsets, cudaStream_t stream) {
    cuda::run_fp8_grouped_gemm_prefill_lanes(m_lanes, p, host_offsets, stream, m_fork);
}

}  // namespace k2::cuda_model
