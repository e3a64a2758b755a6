// The executor's control messages (AllocateKv, WorkerStatus, StepResult): round trips, a frame written by hand from
// the documented layout, malformed frames rejected, a mutation sweep; the ZeroMQ channel's wake(); and the rank sets
// of a parallel job (which ranks a node hosts, which are remote) against vLLM's layout rule written out here.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <random>
#include <thread>

#include "core/error.h"
#include "dist/control_channel.h"
#include "dist/control_message.h"
#include "dist/logits_shm.h"
#include "executor/parallel_job.h"
#include "multiprocess.h"

namespace k2::dist {
namespace {

void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& needle) {
    try {
        decode_control_message(bytes);
        ADD_FAILURE() << "accepted a malformed frame (expected: " << needle << ")";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find(needle), std::string::npos) << e.message();
    }
}

StepResult sample_result() {
    StepResult r;
    r.step_id = 42;
    r.dp_rank = 1;
    r.rows = 2;
    r.cols = 3;
    r.logits = {1.5f, -2.25f, 0.0f, -0.0f, 3.0e38f, -INFINITY};
    return r;
}

TEST(ExecutorMessages, RoundTrip) {
    EXPECT_EQ(std::get<AllocateKv>(decode_control_message(encode_control_message(AllocateKv{77}))).num_blocks, 77);
    const WorkerStatus st = std::get<WorkerStatus>(
        decode_control_message(encode_control_message(WorkerStatus{3, false, "loading x: no such file"})));
    EXPECT_EQ(st.rank, 3);
    EXPECT_FALSE(st.loaded);
    EXPECT_EQ(st.error, "loading x: no such file");
    EXPECT_TRUE(
        std::get<WorkerStatus>(decode_control_message(encode_control_message(WorkerStatus{1, true, ""}))).loaded);
    const StepResult in = sample_result();
    const StepResult out = std::get<StepResult>(decode_control_message(encode_control_message(in)));
    EXPECT_EQ(out.step_id, 42u);
    EXPECT_EQ(out.dp_rank, 1);
    EXPECT_EQ(out.rows, 2);
    EXPECT_EQ(out.cols, 3);
    ASSERT_EQ(out.logits.size(), in.logits.size());
    EXPECT_EQ(std::memcmp(out.logits.data(), in.logits.data(), in.logits.size() * sizeof(float)), 0);  // bit exact
    // A step whose sequences all stopped mid-prefill returns no rows.
    const StepResult none =
        std::get<StepResult>(decode_control_message(encode_control_message(StepResult{5, 2, 0, 8, {}})));
    EXPECT_EQ(none.rows, 0);
    EXPECT_EQ(none.cols, 8);
    // Logits left in shared memory: only the shape travels; a message that carries values as well is refused.
    StepResult shm{6, 1, 16, 163840, {}, true};
    const StepResult shm_back = std::get<StepResult>(decode_control_message(encode_control_message(shm)));
    EXPECT_TRUE(shm_back.in_shared_memory);
    EXPECT_EQ(shm_back.rows, 16);
    EXPECT_TRUE(shm_back.logits.empty());
    shm.logits = {1.0f};
    EXPECT_THROW(encode_control_message(shm), Error);
    EXPECT_TRUE(none.logits.empty());
}

// docs/parallelism.md: StepResult (7) = u64 step_id | i32 dp_rank | i32 rows | i32 cols | u32[] logits bits |
// u8 in_shared_memory.
TEST(ExecutorMessages, DecodesTheDocumentedLayout) {
    const std::vector<uint8_t> frame = {'K', '2', 'C',  'M',  2, 0, 7, 0,    33, 0, 0, 0,  // v2, StepResult, 33 bytes
                                        9,   0,   0,    0,    0, 0, 0, 0,                  // step 9
                                        1,   0,   0,    0,                                 // dp_rank 1
                                        1,   0,   0,    0,    2, 0, 0, 0,                  // [1, 2]
                                        2,   0,   0,    0,                                 // two values
                                        0,   0,   0x80, 0x3f, 0, 0, 0, 0xc0,               // 1.0f, -2.0f
                                        0};                                                // in the message
    const StepResult r = std::get<StepResult>(decode_control_message(frame));
    EXPECT_EQ(r.step_id, 9u);
    EXPECT_EQ(r.dp_rank, 1);
    EXPECT_EQ(r.logits, (std::vector<float>{1.0f, -2.0f}));
    EXPECT_EQ(encode_control_message(r), frame);
    const std::vector<uint8_t> allocate = {'K', '2', 'C', 'M', 2, 0, 5, 0, 4, 0, 0, 0, 0x10, 0x27, 0, 0};
    EXPECT_EQ(std::get<AllocateKv>(decode_control_message(allocate)).num_blocks, 10000);
}

TEST(ExecutorMessages, RejectsMalformedFrames) {
    std::vector<uint8_t> bad = encode_control_message(sample_result());
    bad[12 + 12] = 3;  // rows 3 with 6 values for 3 columns
    expect_rejected(bad, "6 logits for shape [3, 3]");
    bad = encode_control_message(sample_result());
    bad[12 + 8 + 3] = 0x80;  // dp_rank negative
    expect_rejected(bad, "dp_rank");
    expect_rejected({'K', '2', 'C', 'M', 2, 0, 5, 0, 4, 0, 0, 0, 0, 0, 0, 0}, "num_blocks must be positive");
    std::vector<uint8_t> status = encode_control_message(WorkerStatus{1, true, ""});
    status[12 + 4] = 2;
    expect_rejected(status, "loaded must be 0 or 1");
    StepResult wrong = sample_result();
    wrong.rows = 5;
    EXPECT_THROW(encode_control_message(wrong), Error);
}

TEST(ExecutorMessages, MutatedFramesOnlyThrowK2Error) {
    std::mt19937 rng(99);
    const std::vector<std::vector<uint8_t>> seeds = {encode_control_message(sample_result()),
                                                     encode_control_message(WorkerStatus{2, false, "boom"}),
                                                     encode_control_message(AllocateKv{12})};
    for (int iter = 0; iter < 20000; ++iter) {
        std::vector<uint8_t> bytes = seeds[iter % seeds.size()];
        for (int e = 0, edits = 1 + static_cast<int>(rng() % 4); e < edits && !bytes.empty(); ++e) {
            const size_t pos = rng() % bytes.size();
            switch (rng() % 3) {
                case 0:
                    bytes[pos] = static_cast<uint8_t>(rng());
                    break;
                case 1:
                    bytes.resize(pos);
                    break;
                default:
                    bytes.insert(bytes.begin() + static_cast<std::ptrdiff_t>(pos), static_cast<uint8_t>(rng()));
            }
        }
        try {
            decode_control_message(bytes);
        } catch (const Error&) {
        }
    }
}

TEST(ControlChannel, WakeEndsAReceiveEarly) {
    ControlServer server("127.0.0.1", testing::free_port());
    std::thread waker([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        server.wake();
    });
    const auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(server.receive(std::chrono::seconds(10)).has_value());
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
    waker.join();
}

// vLLM's order (TP innermost): rank = (dp * pp_size + pp) * tp_size + tp.
TEST(ParallelJob, NodeRankSets) {
    executor::ParallelJob job;
    job.config.tensor_parallel_size = 2;
    job.config.pipeline_parallel_size = 2;
    job.config.data_parallel_size = 3;
    job.dp_start = 0;
    job.dp_local = 1;
    EXPECT_EQ(job.replica_ranks(1), (std::vector<int>{4, 5, 6, 7}));
    EXPECT_EQ(job.local_ranks(), (std::vector<int>{0, 1, 2, 3}));
    EXPECT_EQ(job.remote_ranks(), (std::vector<int>{4, 5, 6, 7, 8, 9, 10, 11}));
    job.dp_start = 1;
    job.dp_local = 2;
    EXPECT_EQ(job.local_ranks(), (std::vector<int>{4, 5, 6, 7, 8, 9, 10, 11}));
    EXPECT_EQ(job.remote_ranks(), (std::vector<int>{0, 1, 2, 3}));
    job.dp_local = 3;
    EXPECT_THROW(job.validate(), Error);
    EXPECT_EQ(job.resolved_control_port(), job.master_port + 1);
    // TP/PP across nodes: equal blocks of consecutive ranks.
    job.dp_start = 0;
    job.dp_local = 3;
    job.nnodes = 3;
    job.node_rank = 1;
    EXPECT_NO_THROW(job.validate());
    EXPECT_EQ(job.local_ranks(), (std::vector<int>{4, 5, 6, 7}));
    EXPECT_EQ(job.remote_ranks(), (std::vector<int>{0, 1, 2, 3, 8, 9, 10, 11}));
    EXPECT_FALSE(job.hosts_rank_zero());
    job.nnodes = 5;
    EXPECT_THROW(job.validate(), Error);  // 12 ranks do not split over 5 nodes
    EXPECT_EQ(executor::describe_rank(job.config, 6),
              "rank 6 in world size 12 is assigned as DP rank 1, PP rank 1, TP rank 0, DCP rank 0, EP rank 0");
}

// The driver's segment is what a worker on the same host opens; the logits arrive bit exact, the segment grows with a
// larger step, a missing segment (another host) opens as null, and the name goes when the driver unlinks it.
TEST(LogitsShm, CarriesLogitsBetweenProcessesOfOneHost) {
    const std::string name = LogitsShm::name(getpid() % 50000 + 10000, 3);
    EXPECT_EQ(LogitsShm::open(name), nullptr);
    std::unique_ptr<LogitsShm> driver = LogitsShm::create(name);
    ASSERT_NE(driver, nullptr);
    std::vector<float> small = {1.5f, -0.0f, INFINITY, 3.0e38f};
    std::vector<float> large(200000);
    for (size_t i = 0; i < large.size(); ++i) {
        large[i] = static_cast<float>(i) * 0.25f - 7.0f;
    }
    const std::string failures = testing::run_ranks(1, [&](int, int) {
        std::unique_ptr<LogitsShm> worker = LogitsShm::open(name);
        K2_CHECK(worker != nullptr, "the worker did not find the driver's segment");
        K2_CHECK(worker->write(small) && worker->write(large), "the segment refused the logits");  // grows
    });
    ASSERT_EQ(failures, "");
    std::vector<float> got(large.size());
    driver->read(got);
    EXPECT_EQ(std::memcmp(got.data(), large.data(), large.size() * sizeof(float)), 0);
    std::vector<float> too_many(large.size() + 1);
    EXPECT_THROW(driver->read(too_many), Error);  // more than was written
    // A segment the host cannot grow (here: a 1 MiB file-size limit, as a small /dev/shm would) refuses the logits
    // instead of letting the copy die of SIGBUS; the worker then sends them in the message.
    const std::string refused = testing::run_ranks(1, [&](int, int) {
        std::signal(SIGXFSZ, SIG_IGN);
        const rlimit limit{1 << 20, 1 << 20};
        K2_CHECK(setrlimit(RLIMIT_FSIZE, &limit) == 0, "setrlimit failed");
        std::unique_ptr<LogitsShm> worker = LogitsShm::open(name);
        K2_CHECK(worker != nullptr && worker->write(small), "a small write was refused");
        K2_CHECK(!worker->write(std::vector<float>(1 << 19, 1.0f)), "2 MiB beyond a 1 MiB limit was accepted");
    });
    EXPECT_EQ(refused, "");
    driver->unlink();  // once the workers have it open: the name goes, the driver's mapping stays
    EXPECT_EQ(LogitsShm::open(name), nullptr);
    driver->read(got);
    EXPECT_EQ(got[1000], large[1000]);
}

}  // namespace
}  // namespace k2::dist
