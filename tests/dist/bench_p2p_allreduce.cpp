// TP all-reduce at Kimi-K2 decode sizes on 2 GPUs: the one-shot peer-memory all-reduce (P2pAllReduce) against
// NCCL's ncclAllReduce, same buffers, same stream, same run. Prints a Markdown table for docs/perf/multigpu.md.
//
//   bench_p2p_allreduce [--calls N] [--reps R]
//
// Per size and implementation: warm-up, then (a) CUDA graph: N in-place BF16 all-reduces captured in one graph,
// replayed R times back to back, CUDA events around each replay, per-call time = replay time / N; (b) eager: the
// same N calls launched from the host between two events, R times. The table gives the median over the R
// repetitions (and the minimum), on rank 0; rank 1's medians are printed below it. Buffers hold zeros (timing
// does not depend on values; the in-place sums stay finite); correctness is checked once per size beforehand on
// random data: one-shot vs NCCL bit for bit (with 2 ranks both are one fp32 add and one rounding), reported
// on stderr.
#include <nccl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "cuda_ranks.h"
#include "dist/gloo_communicator.h"
#include "dist/nccl_communicator.h"
#include "dist/p2p_allreduce.h"
#include "multiprocess.h"

namespace k2::dist {
namespace {

using testing::DeviceArray;

constexpr int kHidden = 7168;  // Kimi-K2 hidden size
constexpr int kBatches[] = {1, 2, 4, 8, 16};

struct Timing {
    double median_us = 0.0;
    double min_us = 0.0;
};

Timing summarize(std::vector<double> per_call_us) {
    std::sort(per_call_us.begin(), per_call_us.end());
    return {per_call_us[per_call_us.size() / 2], per_call_us.front()};
}

// R repetitions of `calls` back-to-back calls of fn (or of one graph of them), per-call microseconds.
Timing time_calls(const std::function<void()>& fn, cudaStream_t stream, Communicator& bootstrap, int calls, int reps,
                  bool graph) {
    for (int i = 0; i < 20; ++i)
        fn();  // warm-up (NCCL connects lazily on its first calls)
    K2_TEST_CUDA(cudaStreamSynchronize(stream));
    cudaGraphExec_t exec = nullptr;
    if (graph) {
        cudaGraph_t g = nullptr;
        K2_TEST_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < calls; ++i)
            fn();
        K2_TEST_CUDA(cudaStreamEndCapture(stream, &g));
        K2_TEST_CUDA(cudaGraphInstantiate(&exec, g, 0));
        K2_TEST_CUDA(cudaGraphDestroy(g));
        K2_TEST_CUDA(cudaGraphLaunch(exec, stream));  // warm-up replay (uploads the graph)
        K2_TEST_CUDA(cudaStreamSynchronize(stream));
    }
    std::vector<cudaEvent_t> events(reps + 1);
    for (cudaEvent_t& e : events)
        K2_TEST_CUDA(cudaEventCreate(&e));
    bootstrap.barrier();  // both ranks start enqueueing together
    K2_TEST_CUDA(cudaEventRecord(events[0], stream));
    for (int r = 0; r < reps; ++r) {
        if (graph) {
            K2_TEST_CUDA(cudaGraphLaunch(exec, stream));
        } else {
            for (int i = 0; i < calls; ++i)
                fn();
        }
        K2_TEST_CUDA(cudaEventRecord(events[r + 1], stream));
    }
    K2_TEST_CUDA(cudaStreamSynchronize(stream));
    std::vector<double> per_call_us;
    for (int r = 0; r < reps; ++r) {
        float ms = 0.0f;
        K2_TEST_CUDA(cudaEventElapsedTime(&ms, events[r], events[r + 1]));
        per_call_us.push_back(1000.0 * ms / calls);
    }
    for (cudaEvent_t& e : events)
        cudaEventDestroy(e);
    if (exec != nullptr)
        cudaGraphExecDestroy(exec);
    return summarize(per_call_us);
}

// Random BF16 on each rank, one-shot into one buffer and NCCL into another: the results must be equal bits.
void check_once(P2pAllReduce& ar, NcclCommunicator& nccl, size_t count, int rank) {
    std::mt19937 gen(7u + static_cast<unsigned>(rank));
    std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
    std::vector<uint16_t> x(count);
    for (uint16_t& v : x)
        v = float_to_bf16(dist(gen));
    DeviceArray<uint16_t> a(count);
    DeviceArray<uint16_t> b(count);
    a.upload(x);
    b.upload(x);
    ar.all_reduce_sum(a.get(), count, DType::BF16);
    nccl.all_reduce_sum(b.get(), count, DType::BF16);
    ar.synchronize();
    const std::vector<uint16_t> got = a.download(0, count);
    const std::vector<uint16_t> want = b.download(0, count);
    size_t differ = 0;
    for (size_t i = 0; i < count; ++i)
        differ += got[i] != want[i] ? 1 : 0;
    if (rank == 0) {  // reported, not fatal: the timing still runs (tests/dist/test_p2p_allreduce checks sums)
        std::fprintf(stderr, "check %zu elements: one-shot vs NCCL: %zu differ\n", count, differ);
    }
}

void print_header(int device) {
    cudaDeviceProp prop{};
    K2_TEST_CUDA(cudaGetDeviceProperties(&prop, device));
    int driver = 0;
    int runtime = 0;
    int nccl_version = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    ncclGetVersion(&nccl_version);
    int access = 0;
    int perf_rank = 0;
    int atomics = 0;
    cudaDeviceGetP2PAttribute(&access, cudaDevP2PAttrAccessSupported, 0, 1);
    cudaDeviceGetP2PAttribute(&perf_rank, cudaDevP2PAttrPerformanceRank, 0, 1);
    cudaDeviceGetP2PAttribute(&atomics, cudaDevP2PAttrNativeAtomicSupported, 0, 1);
    const std::time_t now = std::time(nullptr);
    char date[64];
    std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    const char* nvls = std::getenv("NCCL_NVLS_ENABLE");
    std::printf("date: %s\ncard: 2 x %s (%d SMs), driver %d, runtime %d, NCCL %d (NCCL_NVLS_ENABLE=%s)\n", date,
                prop.name, prop.multiProcessorCount, driver, runtime, nccl_version, nvls != nullptr ? nvls : "unset");
    std::printf("P2P 0->1: access %d, performance rank %d, native atomics %d\n", access, perf_rank, atomics);
}

void run_rank(int rank, int port, int calls, int reps) {
    GlooOptions options;
    options.rank = rank;
    options.world_size = 2;
    options.master_port = port;
    options.timeout = std::chrono::milliseconds(120000);
    GlooCommunicator bootstrap(options);
    NcclCommunicator nccl(bootstrap, rank);
    // Without peer access (the constructor says why) NCCL is still timed, so the run is never wasted.
    std::unique_ptr<P2pAllReduce> ar;
    try {
        ar = std::make_unique<P2pAllReduce>(bootstrap, rank, &nccl);
    } catch (const Error& e) {
        std::printf("rank %d: no one-shot all-reduce: %s\n", rank, e.what());
    }
    cudaStream_t stream = nccl.stream();
    if (ar) {
        ar->set_stream(stream);
    }
    if (rank == 0) {
        print_header(rank);
        std::printf("method: in-place BF16 sum; median (min) per call over %d repetitions of %d calls\n\n", reps,
                    calls);
        std::printf(
            "| batch | KB | one-shot, graph (us) | NCCL, graph (us) | one-shot, eager (us) | NCCL, eager (us) |\n");
        std::printf("|---:|---:|---:|---:|---:|---:|\n");
    }
    std::vector<double> medians;  // this rank's graph medians, one-shot and NCCL per size
    for (int batch : kBatches) {
        const size_t count = static_cast<size_t>(kHidden) * batch;
        if (ar) {
            check_once(*ar, nccl, count, rank);
        }
        DeviceArray<uint16_t> buf(count);  // [batch, hidden] bf16 zeros
        K2_TEST_CUDA(cudaMemset(buf.get(), 0, count * sizeof(uint16_t)));
        K2_TEST_CUDA(cudaDeviceSynchronize());
        const auto one_shot = [&] { ar->all_reduce_sum(buf.get(), count, DType::BF16); };
        const auto nccl_call = [&] { nccl.all_reduce_sum(buf.get(), count, DType::BF16); };
        const Timing p2p_graph = ar ? time_calls(one_shot, stream, bootstrap, calls, reps, true) : Timing{};
        const Timing nccl_graph = time_calls(nccl_call, stream, bootstrap, calls, reps, true);
        const Timing p2p_eager = ar ? time_calls(one_shot, stream, bootstrap, calls, reps, false) : Timing{};
        const Timing nccl_eager = time_calls(nccl_call, stream, bootstrap, calls, reps, false);
        medians.push_back(p2p_graph.median_us);
        medians.push_back(nccl_graph.median_us);
        if (rank == 0) {
            std::printf("| %d | %.0f | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) |\n", batch,
                        count * 2 / 1024.0, p2p_graph.median_us, p2p_graph.min_us, nccl_graph.median_us,
                        nccl_graph.min_us, p2p_eager.median_us, p2p_eager.min_us, nccl_eager.median_us,
                        nccl_eager.min_us);
            std::fflush(stdout);
        }
    }
    std::vector<double> all(medians.size() * 2);
    bootstrap.all_gather(medians.data(), all.data(), medians.size(), DType::F64);
    if (rank == 0) {
        std::printf("\nrank 1 graph medians (one-shot / NCCL, us):");
        for (size_t i = 0; i < medians.size(); i += 2)
            std::printf(" %.2f/%.2f", all[medians.size() + i], all[medians.size() + i + 1]);
        std::printf("\n");
    }
    nccl.synchronize();
    bootstrap.barrier();
}

}  // namespace
}  // namespace k2::dist

int main(int argc, char** argv) {
    int calls = 100;
    int reps = 30;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string flag = argv[i];
        if (flag == "--calls") {
            calls = std::atoi(argv[i + 1]);
        } else if (flag == "--reps") {
            reps = std::atoi(argv[i + 1]);
        } else {
            std::fprintf(stderr, "unknown flag %s (use --calls N --reps R)\n", argv[i]);
            return 2;
        }
    }
    if (calls < 1 || reps < 1) {
        std::fprintf(stderr, "--calls and --reps must be positive\n");
        return 2;
    }
    const int devices = k2::dist::testing::cuda_device_count_in_child();
    if (devices < 2) {
        std::fprintf(stderr, "bench_p2p_allreduce needs 2 CUDA devices, found %d\n", devices);
        return 1;
    }
    const std::string failures = k2::dist::testing::run_ranks(
        2, [&](int rank, int port) { k2::dist::run_rank(rank, port, calls, reps); }, std::chrono::seconds(300));
    if (!failures.empty()) {
        std::fprintf(stderr, "bench failed: %s\n", failures.c_str());
        return 1;
    }
    return 0;
}
