// NcclCommunicator on real GPUs. Without a CUDA device every test is reported as SKIPPED (ctest shows it as
// skipped, never as passed); the two-rank test also needs two GPUs.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <numeric>
#include <vector>

#include "core/error.h"
#include "cuda_ranks.h"
#include "dist/gloo_communicator.h"
#include "dist/nccl_communicator.h"
#include "multiprocess.h"

namespace k2::dist {
namespace {

template <typename T>
struct DeviceVector {
    explicit DeviceVector(const std::vector<T>& host) : size(host.size()) {
        K2_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(1, size) * sizeof(T)) == cudaSuccess,
                 "cudaMalloc");
        K2_CHECK(cudaMemcpy(ptr, host.data(), size * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess, "H2D");
    }
    ~DeviceVector() { cudaFree(ptr); }
    std::vector<T> to_host() const {
        std::vector<T> host(size);
        K2_CHECK(cudaMemcpy(host.data(), ptr, size * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess, "D2H");
        return host;
    }
    T* ptr = nullptr;
    size_t size;
};

// Same checks on one rank (world size 1) and on every rank of a larger group.
void run_checks(NcclCommunicator& comm) {
    const int world = comm.size();
    const int me = comm.rank();
    std::vector<float> x(1000);  // [1000]
    for (size_t i = 0; i < x.size(); ++i)
        x[i] = static_cast<float>(me + 1) * 0.5f + static_cast<float>(i % 13);
    DeviceVector<float> d_x(x);
    comm.all_reduce_sum(d_x.ptr, x.size(), DType::F32);
    comm.synchronize();
    const std::vector<float> sum = d_x.to_host();
    for (size_t i = 0; i < x.size(); ++i) {
        float want = 0.0f;
        for (int r = 0; r < world; ++r)
            want += static_cast<float>(r + 1) * 0.5f + static_cast<float>(i % 13);
        K2_CHECK(sum[i] == want, "nccl all_reduce[{}] = {} want {}", i, sum[i], want);
    }
    std::vector<uint16_t> b(64, float_to_bf16(static_cast<float>(me + 1)));  // [64] bf16
    DeviceVector<uint16_t> d_b(b);
    comm.all_reduce_sum(d_b.ptr, b.size(), DType::BF16);
    comm.synchronize();
    K2_CHECK(bf16_to_float(d_b.to_host()[63]) == static_cast<float>(world * (world + 1) / 2), "bf16 all_reduce");

    DeviceVector<float> d_send(std::vector<float>(8, static_cast<float>(me)));
    DeviceVector<float> d_gather(std::vector<float>(8 * world, -1.0f));  // [world, 8]
    comm.all_gather(d_send.ptr, d_gather.ptr, 8, DType::F32);
    comm.synchronize();
    const std::vector<float> gathered = d_gather.to_host();
    for (int r = 0; r < world; ++r)
        K2_CHECK(gathered[r * 8 + 7] == static_cast<float>(r), "all_gather slice {}", r);

    DeviceVector<float> d_rs_in(std::vector<float>(4 * world, 1.0f));  // [world, 4]
    DeviceVector<float> d_rs_out(std::vector<float>(4, 0.0f));         // [4]
    comm.reduce_scatter_sum(d_rs_in.ptr, d_rs_out.ptr, 4, DType::F32);
    comm.synchronize();
    K2_CHECK(d_rs_out.to_host()[3] == static_cast<float>(world), "reduce_scatter");

    // all_to_all_v: one element to every rank, value = sender * 10 + receiver.
    std::vector<float> a2a(world);
    std::vector<int64_t> counts(world, 1), displs(world);
    std::iota(displs.begin(), displs.end(), 0);
    for (int r = 0; r < world; ++r)
        a2a[r] = static_cast<float>(me * 10 + r);
    DeviceVector<float> d_a2a_in(a2a);
    DeviceVector<float> d_a2a_out(std::vector<float>(world, -1.0f));
    comm.all_to_all_v(d_a2a_in.ptr, counts, displs, d_a2a_out.ptr, counts, displs, DType::F32);
    comm.synchronize();
    const std::vector<float> got = d_a2a_out.to_host();
    for (int r = 0; r < world; ++r)
        K2_CHECK(got[r] == static_cast<float>(r * 10 + me), "all_to_all_v from {}", r);

    DeviceVector<int32_t> d_bc(std::vector<int32_t>(5, me == 0 ? 7 : -1));
    comm.broadcast(d_bc.ptr, 5, DType::I32, 0);
    comm.barrier();
    K2_CHECK(d_bc.to_host()[4] == 7, "broadcast");
}

TEST(NcclCommunicator, SingleGpu) {
    if (testing::cuda_device_count_in_child() < 1) {
        GTEST_SKIP() << "no CUDA device: NCCL tests run on the GPU machine";
    }
    const std::string failures = testing::run_ranks(1, [](int, int) {
        SingleCommunicator bootstrap;
        NcclCommunicator comm(bootstrap, 0);
        K2_CHECK(comm.rank() == 0 && comm.size() == 1, "rank/size");
        run_checks(comm);
    });
    EXPECT_EQ(failures, "");
}

TEST(NcclCommunicator, TwoGpusOverGlooBootstrap) {
    const int devices = testing::cuda_device_count_in_child();
    if (devices < 2) {
        GTEST_SKIP() << devices << " CUDA device(s): the two-rank NCCL test needs 2 GPUs";
    }
    const std::string failures = testing::run_ranks(2, [](int rank, int port) {
        GlooOptions options;
        options.rank = rank;
        options.world_size = 2;
        options.master_port = port;
        GlooCommunicator bootstrap(options);
        NcclCommunicator comm(bootstrap, rank);
        run_checks(comm);
    });
    EXPECT_EQ(failures, "");
}

}  // namespace
}  // namespace k2::dist
