// Gloo collectives across real processes (world sizes 2 and 4) against sums computed here in one process.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "dist/gloo_communicator.h"
#include "multiprocess.h"

namespace k2::dist {
namespace {

using testing::run_ranks;

// Rank r's i-th input element: irregular, non-integer values so a wrong slice or a missing rank shows.
float input_value(int rank, size_t i) { return static_cast<float>(std::sin(1.3 * rank + 0.017 * i) + 0.1 * rank); }

// Elements rank `from` sends to rank `to` in the all-to-all-v test (zero for some pairs on purpose).
int64_t a2a_count(int from, int to) { return (from + 2 * to) % 3 + (from == to ? 1 : 0); }
float a2a_value(int from, int to, int64_t j) { return static_cast<float>(from * 1000 + to * 100 + j); }

std::unique_ptr<GlooCommunicator> make_comm(int rank, int world, int port) {
    GlooOptions options;
    options.rank = rank;
    options.world_size = world;
    options.master_addr = "127.0.0.1";
    options.master_port = port;
    options.timeout = std::chrono::milliseconds(20000);
    return std::make_unique<GlooCommunicator>(options);
}

void check_close(float got, double want, const char* what, size_t i) {
    K2_CHECK(std::fabs(got - want) <= 1e-5 * (1.0 + std::fabs(want)), "{}[{}] = {}, expected {}", what, i, got, want);
}

void all_reduce_case(Communicator& comm, size_t count) {
    std::vector<float> buf(count);  // [count]
    for (size_t i = 0; i < count; ++i) {
        buf[i] = input_value(comm.rank(), i);
    }
    comm.all_reduce_sum(buf);
    for (size_t i = 0; i < count; ++i) {
        double want = 0.0;
        for (int r = 0; r < comm.size(); ++r) {
            want += input_value(r, i);
        }
        check_close(buf[i], want, "all_reduce", i);
    }
}

void bf16_all_reduce_case(Communicator& comm) {
    std::vector<uint16_t> buf(129);  // [129] small integers: exact in bf16, so sums must be exact too
    for (size_t i = 0; i < buf.size(); ++i) {
        buf[i] = float_to_bf16(static_cast<float>((comm.rank() + 1) * static_cast<int>(i % 7) - 3));
    }
    comm.all_reduce_sum_bf16(buf);
    for (size_t i = 0; i < buf.size(); ++i) {
        float want = 0.0f;
        for (int r = 0; r < comm.size(); ++r) {
            want += static_cast<float>((r + 1) * static_cast<int>(i % 7) - 3);
        }
        K2_CHECK(bf16_to_float(buf[i]) == want, "bf16 all_reduce[{}] = {}, expected {}", i, bf16_to_float(buf[i]), want);
    }
}

void all_gather_case(Communicator& comm) {
    const size_t count = 37;
    std::vector<float> send(count);                // [count]
    std::vector<float> recv(count * comm.size());  // [size, count]
    for (size_t i = 0; i < count; ++i) {
        send[i] = input_value(comm.rank(), i);
    }
    comm.all_gather(send.data(), recv.data(), count, DType::F32);
    for (int r = 0; r < comm.size(); ++r) {
        for (size_t i = 0; i < count; ++i) {
            K2_CHECK(recv[r * count + i] == input_value(r, i), "all_gather: slice {} element {} wrong", r, i);
        }
    }
}

void reduce_scatter_case(Communicator& comm) {
    const size_t count = 53;
    const int world = comm.size();
    std::vector<float> send(count * world);  // [size, count]
    for (size_t i = 0; i < send.size(); ++i) {
        send[i] = input_value(comm.rank(), i);
    }
    std::vector<float> recv(count);  // [count]
    comm.reduce_scatter_sum(send.data(), recv.data(), count, DType::F32);
    for (size_t i = 0; i < count; ++i) {
        double want = 0.0;
        for (int r = 0; r < world; ++r) {
            want += input_value(r, comm.rank() * count + i);
        }
        check_close(recv[i], want, "reduce_scatter", i);
    }
}

// gap > 0 leaves holes between the per-rank runs, exercising non-packed displacements.
void all_to_all_v_case(Communicator& comm, int64_t gap) {
    const int world = comm.size();
    const int me = comm.rank();
    std::vector<int64_t> send_counts(world), send_displs(world), recv_counts(world), recv_displs(world);
    int64_t send_total = 0;
    int64_t recv_total = 0;
    for (int r = 0; r < world; ++r) {
        send_counts[r] = a2a_count(me, r);
        send_displs[r] = send_total;
        send_total += send_counts[r] + gap;
        recv_counts[r] = a2a_count(r, me);
        recv_displs[r] = recv_total;
        recv_total += recv_counts[r] + gap;
    }
    std::vector<float> send(send_total, -1.0f);  // [send_total]
    std::vector<float> recv(recv_total, -7.0f);  // [recv_total]
    for (int r = 0; r < world; ++r) {
        for (int64_t j = 0; j < send_counts[r]; ++j) {
            send[send_displs[r] + j] = a2a_value(me, r, j);
        }
    }
    comm.all_to_all_v(send.data(), send_counts, send_displs, recv.data(), recv_counts, recv_displs, DType::F32);
    for (int r = 0; r < world; ++r) {
        for (int64_t j = 0; j < recv_counts[r]; ++j) {
            K2_CHECK(recv[recv_displs[r] + j] == a2a_value(r, me, j), "all_to_all_v: from rank {} element {} = {}",
                     r, j, recv[recv_displs[r] + j]);
        }
        for (int64_t j = 0; j < gap; ++j) {
            K2_CHECK(recv[recv_displs[r] + recv_counts[r] + j] == -7.0f, "all_to_all_v wrote into a gap");
        }
    }
}

void send_recv_broadcast_case(Communicator& comm) {
    const int world = comm.size();
    const int me = comm.rank();
    std::vector<float> out(17, static_cast<float>(me));  // [17]
    std::vector<float> in(17, -1.0f);                    // [17]
    const int next = (me + 1) % world;
    const int prev = (me + world - 1) % world;
    if (me % 2 == 0) {
        comm.send(out.data(), out.size(), DType::F32, next);
        comm.recv(in.data(), in.size(), DType::F32, prev);
    } else {
        comm.recv(in.data(), in.size(), DType::F32, prev);
        comm.send(out.data(), out.size(), DType::F32, next);
    }
    K2_CHECK(in[16] == static_cast<float>(prev), "recv from rank {} gave {}", prev, in[16]);
    std::vector<int32_t> bcast(9, me == world - 1 ? 42 : me);  // [9]
    comm.broadcast(bcast.data(), bcast.size(), DType::I32, world - 1);
    K2_CHECK(bcast[8] == 42, "broadcast from rank {} gave {}", world - 1, bcast[8]);
    comm.barrier();
}

void comm_sum_check(Communicator& comm, std::vector<float> x, float want) {
    comm.all_reduce_sum(x);
    K2_CHECK(x[4] == want, "{}-rank group: sum {} expected {}", comm.size(), x[4], want);
}

class GlooCollectives : public ::testing::TestWithParam<int> {};

TEST_P(GlooCollectives, MatchSingleProcessReference) {
    const int world = GetParam();
    const std::string failures = run_ranks(world, [world](int rank, int port) {
        auto comm = make_comm(rank, world, port);
        K2_CHECK(comm->rank() == rank && comm->size() == world, "rank/size mismatch");
        all_reduce_case(*comm, 1000);
        all_reduce_case(*comm, 300001);  // several Gloo segments, not a multiple of the world size
        bf16_all_reduce_case(*comm);
        all_gather_case(*comm);
        reduce_scatter_case(*comm);
        all_to_all_v_case(*comm, 0);
        all_to_all_v_case(*comm, 3);
        send_recv_broadcast_case(*comm);
    });
    EXPECT_EQ(failures, "");
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, GlooCollectives, ::testing::Values(2, 4));

// A peer that dies mid-collective must surface as k2::Error on the survivors, not a hang.
TEST(GlooCollectives, DeadPeerRaisesInsteadOfHanging) {
    const std::string failures = run_ranks(2, [](int rank, int port) {
        auto comm = make_comm(rank, 2, port);
        comm->barrier();
        if (rank == 1) {
            _exit(0);
        }
        std::vector<float> buf(64, 1.0f);
        try {
            comm->all_reduce_sum(buf);
        } catch (const Error& e) {
            K2_CHECK(std::string(e.what()).find("gloo") != std::string::npos, "unexpected error: {}", e.what());
            return;
        }
        K2_FAIL("all_reduce with a dead peer returned normally");
    });
    EXPECT_EQ(failures, "");
}

// Subgroups over the world's store: TP pairs {0,1},{2,3} and DP pairs {0,2},{1,3} of a world of 4, each group's
// all-reduce summing only its members.
TEST(GlooCollectives, SubgroupsShareTheWorldStore) {
    const std::string failures = run_ranks(4, [](int rank, int port) {
        auto world = make_comm(rank, 4, port);
        GlooOptions tp;
        tp.rank = rank % 2;
        tp.world_size = 2;
        tp.prefix = fmt::format("tp{}", rank / 2);
        tp.store = world->store();
        GlooCommunicator tp_comm(tp);
        GlooOptions dp = tp;
        dp.rank = rank / 2;
        dp.prefix = fmt::format("dp{}", rank % 2);
        GlooCommunicator dp_comm(dp);
        std::vector<float> x(5, static_cast<float>(1 << rank));  // rank r contributes bit r
        comm_sum_check(tp_comm, x, static_cast<float>((1 << (rank / 2 * 2)) + (1 << (rank / 2 * 2 + 1))));
        comm_sum_check(dp_comm, x, static_cast<float>((1 << (rank % 2)) + (1 << (rank % 2 + 2))));
        comm_sum_check(*world, x, 15.0f);
    });
    EXPECT_EQ(failures, "");
}

TEST(SingleCommunicator, CollectivesAreIdentity) {
    SingleCommunicator comm;
    all_reduce_case(comm, 100);
    bf16_all_reduce_case(comm);
    all_gather_case(comm);
    reduce_scatter_case(comm);
    all_to_all_v_case(comm, 0);
    all_to_all_v_case(comm, 2);
    std::vector<float> x(3, 1.0f);
    EXPECT_THROW(comm.send(x.data(), 3, DType::F32, 1), Error);
    EXPECT_THROW(comm.all_reduce_sum(x.data(), 3, DType::I32), Error);
}

}  // namespace
}  // namespace k2::dist
