// Control messages: round trips, hand-built frames decoded byte by byte, malformed frames rejected with an
// error, a deterministic mutation sweep, and the ZeroMQ channel dropping garbage without crashing.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "dist/control_channel.h"
#include "dist/control_message.h"
#include "multiprocess.h"

namespace k2::dist {
namespace {

StepPlan sample_plan() {
    StepPlan plan;
    plan.step_id = 0x0102030405060708ull;
    plan.is_dummy = false;
    ForwardBatch& b = plan.batch;  // two sequences: 3 prefill tokens + 1 decode token
    b.token_ids = {11, 12, 13, 99};
    b.positions = {0, 1, 2, 40};
    b.query_start = {0, 3, 4};
    b.seq_lens = {3, 41};
    b.max_blocks_per_seq = 3;
    b.block_tables = {5, -1, -1, 7, 8, 9};
    b.slot_mapping = {80, 81, 82, (int64_t{9} << 32) + 8};
    b.logits_indices = {2, 3};
    b.dp_num_tokens = {4, 6};
    b.dp_decode_only = true;
    return plan;
}

TEST(ControlMessage, RoundTripsEveryType) {
    const StepPlan plan = sample_plan();
    const StepPlan back = std::get<StepPlan>(decode_control_message(encode_control_message(plan)));
    EXPECT_EQ(back.step_id, plan.step_id);
    EXPECT_EQ(back.is_dummy, plan.is_dummy);
    EXPECT_EQ(back.batch.token_ids, plan.batch.token_ids);
    EXPECT_EQ(back.batch.positions, plan.batch.positions);
    EXPECT_EQ(back.batch.query_start, plan.batch.query_start);
    EXPECT_EQ(back.batch.seq_lens, plan.batch.seq_lens);
    EXPECT_EQ(back.batch.max_blocks_per_seq, plan.batch.max_blocks_per_seq);
    EXPECT_EQ(back.batch.block_tables, plan.batch.block_tables);
    EXPECT_EQ(back.batch.slot_mapping, plan.batch.slot_mapping);
    EXPECT_EQ(back.batch.logits_indices, plan.batch.logits_indices);
    EXPECT_EQ(back.batch.dp_num_tokens, (std::vector<int32_t>{4, 6}));
    EXPECT_EQ(back.batch.dp_padded_tokens(), 6);
    EXPECT_TRUE(back.batch.dp_decode_only);

    StepPlan dummy;  // an idle DP replica still learns the replicas' token counts (GPU expert exchange)
    dummy.is_dummy = true;
    dummy.batch.dp_num_tokens = {16, 0};
    const StepPlan dummy_back = std::get<StepPlan>(decode_control_message(encode_control_message(dummy)));
    EXPECT_TRUE(dummy_back.is_dummy);
    EXPECT_EQ(dummy_back.batch.dp_num_tokens, (std::vector<int32_t>{16, 0}));
    EXPECT_FALSE(dummy_back.batch.dp_decode_only);

    EXPECT_EQ(std::get<Shutdown>(decode_control_message(encode_control_message(Shutdown{"bye"}))).reason, "bye");
    const Heartbeat hb = std::get<Heartbeat>(decode_control_message(encode_control_message(Heartbeat{3, 4242, 17})));
    EXPECT_EQ(hb.rank, 3);
    EXPECT_EQ(hb.pid, 4242);
    EXPECT_EQ(hb.step_id, 17u);
    const RankFailed f = std::get<RankFailed>(
        decode_control_message(encode_control_message(RankFailed{2, 1234, "exited with signal 9"})));
    EXPECT_EQ(f.rank, 2);
    EXPECT_EQ(f.pid, 1234);
    EXPECT_EQ(f.reason, "exited with signal 9");
}

// The layout documented in control_message.h, written out by hand (not by our encoder).
TEST(ControlMessage, DecodesTheDocumentedLayout) {
    const std::vector<uint8_t> frame = {'K', '2', 'C', 'M', 2, 0, 3, 0, 16, 0, 0, 0,  // header: v2, Heartbeat, 16
                                        2, 0, 0, 0,                                  // rank 2
                                        0x39, 0x30, 0, 0,                            // pid 12345
                                        7, 0, 0, 0, 0, 0, 0, 1};                     // step 2^56 + 7
    const Heartbeat hb = std::get<Heartbeat>(decode_control_message(frame));
    EXPECT_EQ(hb.rank, 2);
    EXPECT_EQ(hb.pid, 12345);
    EXPECT_EQ(hb.step_id, (uint64_t{1} << 56) + 7);
    EXPECT_EQ(encode_control_message(hb), frame);
}

void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& needle) {
    try {
        decode_control_message(bytes);
        ADD_FAILURE() << "accepted a malformed frame (expected: " << needle << ")";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find(needle), std::string::npos) << e.message();
    }
}

TEST(ControlMessage, RejectsMalformedFrames) {
    const std::vector<uint8_t> good = encode_control_message(sample_plan());
    expect_rejected({}, "shorter than");
    expect_rejected({'K', '2'}, "shorter than");
    std::vector<uint8_t> bad = good;
    bad[0] = 'X';
    expect_rejected(bad, "bad magic");
    bad = good;
    bad[4] = 1;  // the encoding before dp_num_tokens
    expect_rejected(bad, "version 1");
    bad = good;
    bad[6] = 99;
    expect_rejected(bad, "unknown type 99");
    bad = good;
    bad.pop_back();
    expect_rejected(bad, "payload bytes");
    bad = good;
    bad.push_back(0);
    expect_rejected(bad, "payload bytes");
    // A huge element count must be caught before allocating: token_ids count at payload offset 9.
    bad = good;
    bad[12 + 9 + 3] = 0x7f;
    expect_rejected(bad, "claims");
    // is_dummy must be 0 or 1.
    bad = good;
    bad[12 + 8] = 5;
    expect_rejected(bad, "is_dummy");
    // Shape invariants of the batch: a logits index outside the tokens.
    StepPlan plan = sample_plan();
    plan.batch.logits_indices = {4};
    expect_rejected(encode_control_message(plan), "logits index 4");
    plan = sample_plan();
    plan.batch.positions.pop_back();
    expect_rejected(encode_control_message(plan), "positions");
    plan = sample_plan();
    plan.batch.query_start = {0, 4, 3};
    expect_rejected(encode_control_message(plan), "query_start");
    // Trailing bytes inside the declared payload.
    std::vector<uint8_t> padded = encode_control_message(Shutdown{"x"});
    padded.push_back(0);
    padded[8] = static_cast<uint8_t>(padded[8] + 1);
    expect_rejected(padded, "trailing");
}

// A deterministic mutation sweep (what the libFuzzer target does at scale): any byte string either decodes or
// throws k2::Error; nothing else escapes and nothing crashes.
TEST(ControlMessage, MutatedFramesOnlyThrowK2Error) {
    std::mt19937 rng(1234);
    const std::vector<std::vector<uint8_t>> seeds = {encode_control_message(sample_plan()),
                                                     encode_control_message(RankFailed{1, 2, "oops"}),
                                                     encode_control_message(Heartbeat{0, 1, 2})};
    int decoded = 0;
    for (int iter = 0; iter < 20000; ++iter) {
        std::vector<uint8_t> bytes = seeds[iter % seeds.size()];
        const int edits = 1 + static_cast<int>(rng() % 4);
        for (int e = 0; e < edits; ++e) {
            const size_t pos = rng() % bytes.size();
            switch (rng() % 3) {
                case 0: bytes[pos] = static_cast<uint8_t>(rng()); break;
                case 1: bytes.resize(pos); break;
                default: bytes.insert(bytes.begin() + static_cast<std::ptrdiff_t>(pos), static_cast<uint8_t>(rng()));
            }
            if (bytes.empty()) {
                break;
            }
        }
        try {
            decode_control_message(bytes);
            ++decoded;
        } catch (const Error&) {
        }
    }
    EXPECT_LT(decoded, 20000);
}

TEST(ControlChannel, DeliversTypedMessagesAndDropsGarbage) {
    const int port = testing::free_port();
    ControlServer server("127.0.0.1", port);
    ControlClient client("127.0.0.1", port, 3);
    client.send_raw({'n', 'o', 't', ' ', 'a', ' ', 'f', 'r', 'a', 'm', 'e'});
    client.send(Heartbeat{3, 77, 5});
    const std::optional<ReceivedMessage> got = server.receive(std::chrono::seconds(5));
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->rank, 3);
    EXPECT_EQ(std::get<Heartbeat>(got->message).pid, 77);

    server.send_to(3, sample_plan());
    const std::optional<ControlMessage> plan = client.receive(std::chrono::seconds(5));
    ASSERT_TRUE(plan.has_value());
    EXPECT_EQ(std::get<StepPlan>(*plan).batch.token_ids, sample_plan().batch.token_ids);
    EXPECT_FALSE(server.receive(std::chrono::milliseconds(50)).has_value());
}

TEST(ControlChannel, RefusesToBindAnAddressThatIsNotOurs) {
    EXPECT_THROW(ControlServer("192.0.2.1", testing::free_port()), Error);  // TEST-NET-1, not configured here
}

}  // namespace
}  // namespace k2::dist
