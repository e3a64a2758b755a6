// P2pAllReduce (one-shot all-reduce over peer memory) on real GPUs, one forked process per rank, against sums
// computed on the host (fp32 in rank order, one rounding: the documented contract, computed without the kernel).
// Without 2 CUDA devices every multi-rank test reports SKIPPED with the reason (ctest shows skipped, not passed).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <random>
#include <string>
#include <thread>
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

constexpr size_t kLimitBytes = 512 * 1024;  // the one-shot limit under test (the default)
constexpr size_t kGuard = 40;               // poisoned elements after each output that must stay poisoned
constexpr int kWorld = 2;

template <typename T>
constexpr DType dtype_of() {
    return sizeof(T) == 2 ? DType::BF16 : DType::F32;
}

template <typename T>
uint32_t bits_of(T value) {
    uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <typename T>
uint32_t poison_bits() {  // what DeviceArray bytes of 0xFF read back as
    return sizeof(T) == 2 ? 0xffffu : 0xffffffffu;
}

float to_float(uint16_t bf16) {
    return bf16_to_float(bf16);
}
float to_float(float f) {
    return f;
}

// Rank r's input pool; the same on every rank (seeded by r, plus `salt` for a second pool), so each rank can
// compute every rank's contribution. BF16 in [-4, 4) and F32 in [-100, 100): sums stay far from overflow.
template <typename T>
std::vector<T> make_pool(int rank, size_t n, unsigned salt = 0) {
    std::mt19937 gen(1234u + 77u * static_cast<unsigned>(rank) + 1000u * salt);
    std::vector<T> pool(n);
    if constexpr (sizeof(T) == 2) {
        std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
        for (T& x : pool)
            x = float_to_bf16(dist(gen));
    } else {
        std::uniform_real_distribution<float> dist(-100.0f, 100.0f);
        for (T& x : pool)
            x = dist(gen);
    }
    return pool;
}

// The contract: fp32 accumulation in rank order 0..n-1, one rounding to the element type at the end.
template <typename T>
std::vector<T> reference_sum(int world, size_t n, unsigned salt = 0) {
    std::vector<std::vector<T>> pools;
    for (int r = 0; r < world; ++r)
        pools.push_back(make_pool<T>(r, n, salt));
    std::vector<T> sum(n);
    for (size_t i = 0; i < n; ++i) {
        float acc = to_float(pools[0][i]);
        for (int r = 1; r < world; ++r)
            acc += to_float(pools[r][i]);
        if constexpr (sizeof(T) == 2) {
            sum[i] = float_to_bf16(acc);
        } else {
            sum[i] = acc;
        }
    }
    return sum;
}

// One call's layout: in = pool + in_offset (or, in place, a copy of it at out + out_offset).
struct Case {
    size_t count = 0;
    size_t in_offset = 0;
    size_t out_offset = 0;
    bool in_place = false;
};

uint64_t fnv1a(uint64_t hash, const void* data, size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < bytes; ++i)
        hash = (hash ^ p[i]) * 1099511628211ull;
    return hash;
}

// Checks out[0, out_offset) and the guard after the result are still poisoned and the result equals the
// reference bit for bit. `host` holds out[0, out_offset + count + kGuard).
template <typename T>
void check_output(const std::vector<T>& host, const std::vector<T>& want, const Case& c, const std::string& what) {
    for (size_t i = 0; i < host.size(); ++i) {
        const bool inside = i >= c.out_offset && i < c.out_offset + c.count;
        if (!inside) {
            K2_CHECK(bits_of(host[i]) == poison_bits<T>(), "{} count {}: element {} outside the output was written",
                     what, c.count, i);
            continue;
        }
        const T expected = want[c.in_offset + (i - c.out_offset)];
        K2_CHECK(bits_of(host[i]) == bits_of(expected),
                 "{} count {} (in +{}, out +{}, in place {}): out[{}] = {} want {}", what, c.count, c.in_offset,
                 c.out_offset, c.in_place, i - c.out_offset, to_float(host[i]), to_float(expected));
    }
}

// Sizes 1..1100 (all tails and partial chunks), then every 997th size up to the limit, the grid-stride and
// power-of-two boundaries, the Kimi-K2 decode sizes, the limit itself and two sizes over it (NCCL).
template <typename T>
std::vector<Case> sweep_cases() {
    const size_t limit = kLimitBytes / sizeof(T);
    const size_t lanes = 16 / sizeof(T);
    std::vector<size_t> sizes;
    for (size_t n = 1; n <= 1100; ++n)
        sizes.push_back(n);
    for (size_t n = 1101; n <= limit; n += 997)
        sizes.push_back(n);
    const size_t grid_elems = 32 * 512 * lanes;  // one grid-stride round of the kernel
    for (size_t base : {grid_elems, 2 * grid_elems, size_t{1} << 12, size_t{1} << 15, size_t{1} << 17}) {
        for (size_t d : {size_t{0}, size_t{1}, lanes - 1, lanes, lanes + 1}) {
            if (base - d >= 1 && base - d <= limit)
                sizes.push_back(base - d);
            if (base + d <= limit)
                sizes.push_back(base + d);
        }
    }
    for (size_t batch = 1; 7168 * batch <= limit; ++batch)
        sizes.push_back(7168 * batch);
    sizes.push_back(limit - 1);
    sizes.push_back(limit);
    sizes.push_back(limit + 1);
    sizes.push_back(limit + lanes + 3);
    std::vector<Case> cases;
    for (size_t n : sizes) {
        Case c;
        c.count = n;
        c.in_offset = n % 5 == 1 ? 3 : 0;  // misaligned input: the kernel's element-wise staging path
        c.out_offset = n % 7 == 2 ? 1 : 0;
        c.in_place = n % 4 == 3;
        cases.push_back(c);
    }
    return cases;
}

// Runs the cases one at a time (poison, call, read back, check); returns a hash of all outputs.
template <typename T>
uint64_t run_sweep(P2pAllReduce& ar, int rank) {
    const std::vector<Case> cases = sweep_cases<T>();
    const size_t pool_size = kLimitBytes / sizeof(T) + 64;
    const std::vector<T> want = reference_sum<T>(kWorld, pool_size);
    DeviceArray<T> pool(pool_size);  // [pool_size] this rank's input
    pool.upload(make_pool<T>(rank, pool_size));
    DeviceArray<T> out(pool_size + kGuard);  // [out_offset + count + kGuard] poisoned around the result
    cudaStream_t stream = ar.stream();
    uint64_t hash = 1469598103934665603ull;
    for (const Case& c : cases) {
        const size_t span = c.out_offset + c.count + kGuard;
        K2_TEST_CUDA(cudaMemsetAsync(out.get(), 0xff, span * sizeof(T), stream));
        T* dst = out.get() + c.out_offset;
        const T* src = pool.get() + c.in_offset;
        if (c.in_place) {
            K2_TEST_CUDA(cudaMemcpyAsync(dst, src, c.count * sizeof(T), cudaMemcpyDeviceToDevice, stream));
            src = dst;
        }
        ar.all_reduce_sum(src, dst, c.count, dtype_of<T>());
        ar.synchronize();
        const std::vector<T> host = out.download(0, span);
        check_output(host, want, c, ar.is_one_shot(c.count, dtype_of<T>()) ? "one-shot" : "nccl fallback");
        hash = fnv1a(hash, host.data() + c.out_offset, c.count * sizeof(T));
    }
    return hash;
}

struct Ranks {
    explicit Ranks(int rank, int port, bool with_nccl = true, P2pAllReduceOptions options = {})
        : bootstrap(gloo_options(rank, port)) {
        if (with_nccl) {
            nccl = std::make_unique<NcclCommunicator>(bootstrap, rank);
        }
        options.max_bytes = kLimitBytes;
        ar = std::make_unique<P2pAllReduce>(bootstrap, rank, nccl.get(), options);
    }
    ~Ranks() {
        // Peers may still read this rank's staging buffer until their last call is done. Skipped while a failure
        // unwinds: the peer may never come.
        if (std::uncaught_exceptions() == 0) {
            try {
                ar->synchronize();
                bootstrap.barrier();
            } catch (const std::exception& e) {
                std::fprintf(stderr, "rank %d teardown: %s\n", ar->rank(), e.what());
            }
        }
    }
    static GlooOptions gloo_options(int rank, int port) {
        GlooOptions options;
        options.rank = rank;
        options.world_size = kWorld;
        options.master_port = port;
        return options;
    }
    GlooCommunicator bootstrap;
    std::unique_ptr<NcclCommunicator> nccl;
    std::unique_ptr<P2pAllReduce> ar;
};

// Both ranks' output hashes must agree (the sums are bitwise identical on every rank).
void check_same_on_all_ranks(Communicator& bootstrap, uint64_t hash, const std::string& what) {
    std::vector<uint64_t> hashes(bootstrap.size());
    bootstrap.all_gather(&hash, hashes.data(), 1, DType::U64);
    for (int r = 0; r < bootstrap.size(); ++r) {
        K2_CHECK(hashes[r] == hash, "{}: rank {} output hash {:x} differs from rank {}'s {:x}", what, r, hashes[r],
                 bootstrap.rank(), hash);
    }
}

class P2pAllReduceTwoGpus : public ::testing::Test {
protected:
    void SetUp() override {
        const int devices = testing::cuda_device_count_in_child();
        if (devices < kWorld) {
            GTEST_SKIP() << devices << " CUDA device(s): the peer-memory all-reduce tests need 2 GPUs";
        }
    }
};

TEST_F(P2pAllReduceTwoGpus, EverySizeUpToTheLimitBf16AndF32) {
    const std::string failures = k2::dist::testing::run_ranks(
        kWorld,
        [](int rank, int port) {
            Ranks ranks(rank, port);
            check_same_on_all_ranks(ranks.bootstrap, run_sweep<uint16_t>(*ranks.ar, rank), "bf16 sweep");
            check_same_on_all_ranks(ranks.bootstrap, run_sweep<float>(*ranks.ar, rank), "f32 sweep");
        },
        std::chrono::seconds(180));
    EXPECT_EQ(failures, "");
}

// A stream callback that sleeps: one rank arrives late at some barriers, so the other waits, and ranks drift up
// to one call apart (the case the signed epoch comparison and the two staging halves exist for).
void CUDART_CB sleep_callback(void* micros) {
    usleep(static_cast<useconds_t>(reinterpret_cast<uintptr_t>(micros)));
}

struct MixedCall {
    bool bf16 = true;
    Case c;
    size_t slot = 0;  // byte offset of the call's output slot in the output arena
};

// The same sequence on every rank (fixed seed). Slots start at every element-aligned offset modulo 16 bytes, so
// both the vector and the element-wise stores run.
std::vector<MixedCall> plan_mixed_calls(int num_calls, size_t pool_size, size_t* arena_bytes) {
    const std::vector<size_t> sizes = {1, 3, 8, 9, 1000, 4095, 7168, 14336, 28672, 57344, 114688, 131073};
    std::mt19937 gen(99);
    std::vector<MixedCall> calls;
    *arena_bytes = 0;
    for (int k = 0; k < num_calls; ++k) {
        MixedCall call;
        call.bf16 = gen() % 3 != 0;
        const size_t elem = call.bf16 ? 2 : 4;
        call.c.count = std::min(sizes[gen() % sizes.size()], kLimitBytes / elem);
        call.c.in_offset = gen() % (pool_size - call.c.count);
        call.slot = (*arena_bytes + 15) / 16 * 16 + elem * (gen() % (16 / elem));
        *arena_bytes = call.slot + (call.c.count + kGuard) * elem;
        calls.push_back(call);
    }
    return calls;
}

// Enqueues every call without a host sync; some calls are preceded by a sleep on one rank's stream.
void enqueue_mixed_calls(P2pAllReduce& ar, int rank, const std::vector<MixedCall>& calls, const uint16_t* pool_bf16,
                         const float* pool_f32, char* arena) {
    for (size_t k = 0; k < calls.size(); ++k) {
        const MixedCall& call = calls[k];
        if ((k % 97 == 0 && rank == 1) || (k % 131 == 0 && rank == 0)) {
            K2_TEST_CUDA(cudaLaunchHostFunc(ar.stream(), sleep_callback, reinterpret_cast<void*>(200)));
        }
        if (call.bf16) {
            ar.all_reduce_sum(pool_bf16 + call.c.in_offset, arena + call.slot, call.c.count, DType::BF16);
        } else {
            ar.all_reduce_sum(pool_f32 + call.c.in_offset, arena + call.slot, call.c.count, DType::F32);
        }
    }
}

// 1500 calls without a host sync, BF16 and F32 mixed, each reading a different slice of the pool (so data left
// over from an earlier call shows as a wrong sum) into its own poisoned output slot; then every slot is checked.
TEST_F(P2pAllReduceTwoGpus, BackToBackCallsMixedSizesAndTypes) {
    const std::string failures = k2::dist::testing::run_ranks(
        kWorld,
        [](int rank, int port) {
            Ranks ranks(rank, port);
            const size_t pool_size = 3 * kLimitBytes / 2;  // elements
            const std::vector<uint16_t> want_bf16 = reference_sum<uint16_t>(kWorld, pool_size);
            const std::vector<float> want_f32 = reference_sum<float>(kWorld, pool_size);
            DeviceArray<uint16_t> pool_bf16(pool_size);
            DeviceArray<float> pool_f32(pool_size);
            pool_bf16.upload(make_pool<uint16_t>(rank, pool_size));
            pool_f32.upload(make_pool<float>(rank, pool_size));
            size_t arena_bytes = 0;
            const std::vector<MixedCall> calls = plan_mixed_calls(1500, pool_size, &arena_bytes);
            DeviceArray<char> arena(arena_bytes);
            K2_TEST_CUDA(cudaMemset(arena.get(), 0xff, arena_bytes));
            K2_TEST_CUDA(cudaDeviceSynchronize());  // the legacy-stream memset vs the communicator's own stream
            enqueue_mixed_calls(*ranks.ar, rank, calls, pool_bf16.get(), pool_f32.get(), arena.get());
            ranks.ar->synchronize();
            const std::vector<char> host = arena.download(0, arena_bytes);
            uint64_t hash = 1469598103934665603ull;
            for (size_t k = 0; k < calls.size(); ++k) {
                const MixedCall& call = calls[k];
                const std::string what = fmt::format("call {}", k);
                if (call.bf16) {
                    std::vector<uint16_t> out(call.c.count + kGuard);
                    std::memcpy(out.data(), host.data() + call.slot, out.size() * sizeof(uint16_t));
                    check_output(out, want_bf16, call.c, what);
                } else {
                    std::vector<float> out(call.c.count + kGuard);
                    std::memcpy(out.data(), host.data() + call.slot, out.size() * sizeof(float));
                    check_output(out, want_f32, call.c, what);
                }
                hash = fnv1a(hash, host.data() + call.slot, call.c.count * (call.bf16 ? 2 : 4));
            }
            check_same_on_all_ranks(ranks.bootstrap, hash, "back-to-back");
        },
        std::chrono::seconds(180));
    EXPECT_EQ(failures, "");
}

// Eight calls captured in one CUDA graph, replayed 30 times; between replays the host swaps the input for a
// second pool, so a replay that read the previous replay's staged data would show.
TEST_F(P2pAllReduceTwoGpus, CapturedInACudaGraph) {
    const std::string failures = k2::dist::testing::run_ranks(
        kWorld,
        [](int rank, int port) {
            Ranks ranks(rank, port);
            P2pAllReduce& ar = *ranks.ar;
            cudaStream_t stream = ar.stream();
            constexpr size_t kCount = 7168 * 4;  // bf16 elements per call
            constexpr int kCallsPerGraph = 8;
            const size_t pool_size = kCount * kCallsPerGraph;
            const std::vector<uint16_t> pools[2] = {make_pool<uint16_t>(rank, pool_size, 0),
                                                    make_pool<uint16_t>(rank, pool_size, 1)};
            const std::vector<uint16_t> wants[2] = {reference_sum<uint16_t>(kWorld, pool_size, 0),
                                                    reference_sum<uint16_t>(kWorld, pool_size, 1)};
            DeviceArray<uint16_t> input(pool_size);  // [8, kCount] what the graph reads
            DeviceArray<uint16_t> out(pool_size);    // [8, kCount]
            cudaGraph_t graph = nullptr;
            K2_TEST_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
            for (int k = 0; k < kCallsPerGraph; ++k) {
                ar.all_reduce_sum(input.get() + k * kCount, out.get() + k * kCount, kCount, DType::BF16);
            }
            K2_TEST_CUDA(cudaStreamEndCapture(stream, &graph));
            cudaGraphExec_t exec = nullptr;
            K2_TEST_CUDA(cudaGraphInstantiate(&exec, graph, 0));
            for (int replay = 0; replay < 30; ++replay) {
                input.upload(pools[replay % 2]);
                K2_TEST_CUDA(cudaMemset(out.get(), 0xff, pool_size * sizeof(uint16_t)));
                K2_TEST_CUDA(cudaDeviceSynchronize());
                K2_TEST_CUDA(cudaGraphLaunch(exec, stream));
                ar.synchronize();
                const std::vector<uint16_t> host = out.download(0, pool_size);
                Case whole;
                whole.count = pool_size;
                check_output(host, wants[replay % 2], whole, fmt::format("graph replay {}", replay));
            }
            cudaGraphExecDestroy(exec);
            cudaGraphDestroy(graph);
        },
        std::chrono::seconds(120));
    EXPECT_EQ(failures, "");
}

// Ranks as threads of one process (peer pointers used directly after cudaDeviceEnablePeerAccess, no IPC).
TEST_F(P2pAllReduceTwoGpus, RanksAsThreadsOfOneProcess) {
    const std::string failures = k2::dist::testing::run_ranks(1, [](int, int port) {
        std::string errors[kWorld];
        std::vector<std::thread> threads;
        for (int rank = 0; rank < kWorld; ++rank) {
            threads.emplace_back([&errors, rank, port] {
                try {
                    K2_TEST_CUDA(cudaSetDevice(rank));
                    GlooCommunicator bootstrap(Ranks::gloo_options(rank, port));
                    P2pAllReduce ar(bootstrap, rank, nullptr);
                    const size_t pool_size = kLimitBytes / sizeof(uint16_t) + 64;
                    const std::vector<uint16_t> want = reference_sum<uint16_t>(kWorld, pool_size);
                    DeviceArray<uint16_t> pool(pool_size);
                    pool.upload(make_pool<uint16_t>(rank, pool_size));
                    DeviceArray<uint16_t> out(pool_size + kGuard);
                    for (size_t count : {size_t{1}, size_t{9}, size_t{7168}, size_t{114688}, kLimitBytes / 2}) {
                        K2_TEST_CUDA(cudaMemsetAsync(out.get(), 0xff, (count + kGuard) * 2, ar.stream()));
                        ar.all_reduce_sum(pool.get(), out.get(), count, DType::BF16);
                        ar.synchronize();
                        Case c;
                        c.count = count;
                        check_output(out.download(0, count + kGuard), want, c, "threads");
                    }
                    bootstrap.barrier();
                } catch (const std::exception& e) {
                    errors[rank] = e.what();
                }
            });
        }
        for (std::thread& t : threads)
            t.join();
        for (int rank = 0; rank < kWorld; ++rank) {
            K2_CHECK(errors[rank].empty(), "thread rank {}: {}", rank, errors[rank]);
        }
    });
    EXPECT_EQ(failures, "");
}

// A rank that never makes the call: the other rank's kernel must trap after the timeout and synchronize() must
// throw, instead of hanging.
TEST_F(P2pAllReduceTwoGpus, MissingPeerTimesOutWithAnError) {
    const std::string failures = k2::dist::testing::run_ranks(
        kWorld,
        [](int rank, int port) {
            GlooCommunicator bootstrap(Ranks::gloo_options(rank, port));
            P2pAllReduceOptions options;
            options.timeout = std::chrono::milliseconds(1000);
            P2pAllReduce ar(bootstrap, rank, nullptr, options);
            if (rank == 0) {
                DeviceArray<float> buf(100);
                K2_TEST_CUDA(cudaMemset(buf.get(), 0, 100 * sizeof(float)));
                K2_TEST_CUDA(cudaDeviceSynchronize());
                bool threw = false;
                try {
                    ar.all_reduce_sum(buf.get(), 100, DType::F32);
                    ar.synchronize();
                } catch (const Error& e) {
                    threw = std::string(e.what()).find("P2pAllReduce") != std::string::npos;
                }
                K2_CHECK(threw, "a call without its peer did not fail with a P2pAllReduce error");
            }
            bootstrap.barrier();  // rank 1 keeps its memory mapped until rank 0 is done
        },
        std::chrono::seconds(60));
    EXPECT_EQ(failures, "");
}

TEST(P2pAllReduceOneGpu, SingleRankCopiesAndRejectsOtherTypes) {
    if (testing::cuda_device_count_in_child() < 1) {
        GTEST_SKIP() << "no CUDA device: the peer-memory all-reduce tests run on the GPU machine";
    }
    const std::string failures = k2::dist::testing::run_ranks(1, [](int, int) {
        SingleCommunicator bootstrap;
        P2pAllReduce ar(bootstrap, 0, nullptr);
        K2_CHECK(!ar.is_one_shot(10, DType::BF16), "a single rank has nothing to reduce over peers");
        const std::vector<float> x = make_pool<float>(0, 1000);
        DeviceArray<float> in(1000);
        DeviceArray<float> out(1000);
        in.upload(x);
        ar.all_reduce_sum(in.get(), out.get(), 1000, DType::F32);
        ar.synchronize();
        K2_CHECK(out.download(0, 1000) == x, "world size 1: out must equal in");
        bool threw = false;
        try {
            ar.all_reduce_sum(in.get(), out.get(), 10, DType::I32);
        } catch (const Error& e) {
            threw = std::string(e.what()).find("not I32") != std::string::npos;
        }
        K2_CHECK(threw, "I32 must be rejected with a message naming the type");
    });
    EXPECT_EQ(failures, "");
}

}  // namespace
}  // namespace k2::dist
