// time_us (ops_common.h): the one timing loop of the op benchmarks (test_backend_ops --perf, the wgmma GEMM bench).
#include <algorithm>
#include <functional>
#include <vector>

#include "backend/cuda/cuda_check.h"
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

}  // namespace k2::ops_test
