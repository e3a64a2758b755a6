// The MoE prefill's expert GEMMs on several streams at once (cuda::run_fp8_grouped_gemm_prefill_lanes): the lanes'
// cuBLASLt runners, streams, events and scratch, made once per model. K2_MOE_PREFILL_LANES sets the lane count
// (default 4; 1 keeps every expert on the model's stream).
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/moe_ops.h"
#include "io/model_config.h"

namespace k2::cuda_model {

class MoePrefillLanes {
public:
    // max_tokens: the step's token capacity, which bounds one expert's rows.
    MoePrefillLanes(int num_lanes, const ModelConfig& config, int64_t max_tokens);
    ~MoePrefillLanes();
    MoePrefillLanes(const MoePrefillLanes&) = delete;
    MoePrefillLanes& operator=(const MoePrefillLanes&) = delete;

    static int lanes_from_env();
    void run(const cuda::Fp8GroupedGemmParams& params, const int32_t* host_offsets, cudaStream_t stream);

private:
    std::vector<std::unique_ptr<cuda::Fp8GemmRunner>> m_runners;
    std::vector<cudaStream_t> m_streams;
    std::vector<cudaEvent_t> m_done;
    cudaEvent_t m_fork = nullptr;
    cuda::DeviceBuffer m_scales;   // [lanes, max(hidden, inter) / 128, max_tokens + 16] f32
    cuda::DeviceBuffer m_scratch;  // [lanes, max_tokens + 16, max(2 * inter, hidden)] bf16
    std::vector<cuda::Fp8PrefillLane> m_lanes;
};

}  // namespace k2::cuda_model
