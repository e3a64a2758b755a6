// time_us and copy_rate_gbs (ops_common.h): the one timing loop of the op benchmarks (test_backend_ops --perf and the
// kernels' own DISABLED_Perf cases) and the copy rate they are measured against.
#include <algorithm>
#include <functional>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_copy.h"
#include "ops_common.h"

namespace k2::ops_test {

namespace {

constexpr int kCallsPerGraph = 20;
constexpr int kReplays = 15;

}  // namespace

double time_us(const std::function<void(int, cudaStream_t)>& body, cudaStream_t stream) {
    body(0, stream);  // warm-up outside the graph: plans, module load
    CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < kCallsPerGraph; ++i)
        body(i, stream);
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t start = nullptr;
    cudaEvent_t stop = nullptr;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    std::vector<float> times;
    for (int r = 0; r < kReplays + 2; ++r) {
        CUDA_CHECK(cudaEventRecord(start, stream));
        CUDA_CHECK(cudaGraphLaunch(exec, stream));
        CUDA_CHECK(cudaEventRecord(stop, stream));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        if (r >= 2)
            times.push_back(ms);  // two warm-up replays
    }
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
    std::sort(times.begin(), times.end());
    return 1e3 * times[times.size() / 2] / kCallsPerGraph;
}

double copy_rate_gbs(cudaStream_t stream) {
    const size_t bytes = 1ull << 30;
    cuda::DeviceBuffer a(bytes);
    cuda::DeviceBuffer b(bytes);
    a.fill_bytes(1);
    const cuda::DeviceCopyParams params{a.data(), b.data(), static_cast<int64_t>(bytes)};
    const double us = time_us([&](int, cudaStream_t s) { cuda::launch_device_copy(params, s); }, stream);
    return 2.0 * bytes / us * 1e-3;  // bytes read + bytes written
}

}  // namespace k2::ops_test
