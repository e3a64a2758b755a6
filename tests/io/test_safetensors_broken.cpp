// Broken checkpoints: each case copies the tiny fixture into a temp folder, corrupts one thing, and
// checks that validation fails with one line naming the file and the tensor (and never crashes).
#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "io_test_util.h"
#include "model/weight_schema.h"

namespace k2 {
namespace {

using test::RawShard;
using test::TempDir;

constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
constexpr const char* kShard2 = "model-00002-of-00002.safetensors";
constexpr const char* kQaProj = "model.layers.0.self_attn.q_a_proj.weight";  // [128, 256] F8_E4M3 in shard 1

// validate_checkpoint's message ("" when valid); check_checkpoint must also report without throwing.
std::string validation_error(const fs::path& dir) {
    std::string message;
    try {
        const Checkpoint ckpt = Checkpoint::open(dir);
        const ModelConfig config = load_model_config(dir);
        CheckpointReport report;
        EXPECT_NO_THROW(report = check_checkpoint(ckpt, config));
        validate_checkpoint(ckpt, config);
        EXPECT_TRUE(report.errors.empty());
    } catch (const Error& e) {
        message = e.message();
    }
    EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
    return message;
}

class BrokenCheckpoint : public ::testing::Test {
protected:
    void SetUp() override { m_dir = test::copy_fixture("tiny-kimi-k2", m_tmp.path()); }
    fs::path shard(const char* name) const { return m_dir / name; }

    TempDir m_tmp;
    fs::path m_dir;
};

TEST_F(BrokenCheckpoint, IntactFixtureIsValid) {
    EXPECT_EQ(validation_error(m_dir), "");
}

TEST_F(BrokenCheckpoint, TruncatedShard) {
    const RawShard raw = RawShard::load(shard(kShard2));
    const std::string last = raw.first_cut_tensor(raw.data.size() - 1000);
    ASSERT_FALSE(last.empty());
    fs::resize_file(shard(kShard2), fs::file_size(shard(kShard2)) - 1000);
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard2), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + last + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, TruncatedInsideHeader) {
    fs::resize_file(shard(kShard1), 100);
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
    EXPECT_NE(msg.find("past the end"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.embed_tokens.weight"), std::string::npos) << msg;  // a tensor the index puts there
}

TEST_F(BrokenCheckpoint, HeaderLengthPastTheEnd) {
    std::string bytes = test::read_file(shard(kShard1));
    const uint64_t n = bytes.size();  // one header byte more than the file can hold
    std::memcpy(bytes.data(), &n, 8);
    test::write_file(shard(kShard1), bytes);
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
    EXPECT_NE(msg.find("header length"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, HeaderOverTheLimit) {
    std::string bytes = test::read_file(shard(kShard1));
    const uint64_t n = 0xffffffffffffull;
    std::memcpy(bytes.data(), &n, 8);
    test::write_file(shard(kShard1), bytes);
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
    EXPECT_NE(msg.find("100 MB"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, OverlappingOffsets) {
    RawShard raw = RawShard::load(shard(kShard1));
    const std::string other = "model.layers.0.self_attn.q_a_proj.weight_scale_inv";
    // Move q_a_proj one byte back, into whatever precedes it.
    auto& off = raw.header[kQaProj]["data_offsets"];
    ASSERT_GT(off[0].get<uint64_t>(), 0u);
    off = {off[0].get<uint64_t>() - 1, off[1].get<uint64_t>() - 1};
    raw.save(shard(kShard1));
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
    EXPECT_NE(msg.find(kQaProj), std::string::npos) << msg;
    EXPECT_NE(msg.find("overlap"), std::string::npos) << msg;
    (void)other;
}

TEST_F(BrokenCheckpoint, OutOfRangeOffsets) {
    RawShard raw = RawShard::load(shard(kShard1));
    const uint64_t size = raw.data.size();
    raw.header[kQaProj]["data_offsets"] = {size, size + 128 * 256};
    raw.save(shard(kShard1));
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
    EXPECT_NE(msg.find(kQaProj), std::string::npos) << msg;
    EXPECT_NE(msg.find("past the end"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, OffsetsDisagreeWithShape) {
    RawShard raw = RawShard::load(shard(kShard1));
    raw.header[kQaProj]["shape"] = {128, 255};
    raw.save(shard(kShard1));
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kQaProj), std::string::npos) << msg;
    EXPECT_NE(msg.find("shape x dtype needs"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, UnknownDtype) {
    RawShard raw = RawShard::load(shard(kShard1));
    raw.header[kQaProj]["dtype"] = "F8_E4M3FNUZ";
    raw.save(shard(kShard1));
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
    EXPECT_NE(msg.find(kQaProj), std::string::npos) << msg;
    EXPECT_NE(msg.find("unknown dtype 'F8_E4M3FNUZ'"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, TrailingBytes) {
    test::write_file(shard(kShard2), test::read_file(shard(kShard2)) + "garbage!");
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard2), std::string::npos) << msg;
    EXPECT_NE(msg.find("trailing bytes"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, HeaderNotJson) {
    std::string bytes = test::read_file(shard(kShard1));
    bytes[20] = '\x01';
    test::write_file(shard(kShard1), bytes);
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
    EXPECT_NE(msg.find("JSON"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, MissingTensor) {
    nlohmann::json index = test::read_json(m_dir / "model.safetensors.index.json");
    const std::string name = "model.layers.1.mlp.gate.weight";
    ASSERT_EQ(index["weight_map"].erase(name), 1u);
    test::write_json(m_dir / "model.safetensors.index.json", index);
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing tensor '" + name + "'"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, TensorInIndexButNotInShard) {
    nlohmann::json index = test::read_json(m_dir / "model.safetensors.index.json");
    index["weight_map"][kQaProj] = kShard2;
    test::write_json(m_dir / "model.safetensors.index.json", index);
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard2), std::string::npos) << msg;
    EXPECT_NE(msg.find(kQaProj), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, ShapeContradictsHeaderEdit) {
    RawShard raw = RawShard::load(shard(kShard1));
    raw.header[kQaProj]["shape"] = {256, 128};  // same bytes, transposed
    raw.save(shard(kShard1));
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
    EXPECT_NE(msg.find(kQaProj), std::string::npos) << msg;
    EXPECT_NE(msg.find("shape [256, 128] contradicts"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected [128, 256]"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, ShapeContradictsConfig) {
    nlohmann::json config = test::read_json(m_dir / "config.json");
    config["moe_intermediate_size"] = 64;  // the experts on disk have 128
    test::write_json(m_dir / "config.json", config);
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.layers.1.mlp.experts.0.gate_proj.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected [64, 256]"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, Fp8WeightWithoutScale) {
    nlohmann::json index = test::read_json(m_dir / "model.safetensors.index.json");
    ASSERT_EQ(index["weight_map"].erase(std::string(kQaProj) + "_scale_inv"), 1u);
    test::write_json(m_dir / "model.safetensors.index.json", index);
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
    EXPECT_NE(msg.find("FP8 weight '" + std::string(kQaProj) + "' has no scale tensor"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, ScaleOfWrongShape) {
    RawShard raw = RawShard::load(shard(kShard1));
    const std::string scale = std::string(kQaProj) + "_scale_inv";
    raw.header[scale]["shape"] = {2, 1};  // [ceil(128/128), ceil(256/128)] = [1, 2]
    raw.save(shard(kShard1));
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(scale), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected [1, 2]"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, WrongDtype) {
    RawShard raw = RawShard::load(shard(kShard1));
    raw.header[kQaProj]["dtype"] = "U8";
    raw.save(shard(kShard1));
    const std::string msg = validation_error(m_dir);
    EXPECT_NE(msg.find(kQaProj), std::string::npos) << msg;
    EXPECT_NE(msg.find("dtype U8, expected F8_E4M3"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, ShardNamedInIndexIsMissing) {
    fs::remove(shard(kShard2));
    std::string msg;
    try {
        (void)Checkpoint::open(m_dir);
    } catch (const Error& e) {
        msg = e.message();
    }
    EXPECT_NE(msg.find(kShard2), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, CheckReportsEveryProblem) {
    RawShard raw = RawShard::load(shard(kShard1));
    raw.header[kQaProj]["dtype"] = "BOGUS";
    raw.save(shard(kShard1));
    fs::resize_file(shard(kShard2), fs::file_size(shard(kShard2)) / 2);
    const CheckpointReport report = check_checkpoint(Checkpoint::open(m_dir), load_model_config(m_dir));
    ASSERT_EQ(report.errors.size(), 2u);  // one per broken shard, not one per tensor in it
    EXPECT_NE(report.errors[0].find(kShard1), std::string::npos) << report.errors[0];
    EXPECT_NE(report.errors[1].find(kShard2), std::string::npos) << report.errors[1];
}

TEST(SafetensorsHeader, RejectsMalformedEntries) {
    const auto fails = [](const std::string& header, uint64_t data_bytes, const std::string& expect) {
        try {
            (void)parse_safetensors_header(header, data_bytes, "x.safetensors");
        } catch (const Error& e) {
            EXPECT_NE(e.message().find(expect), std::string::npos) << e.message();
            EXPECT_NE(e.message().find("x.safetensors"), std::string::npos) << e.message();
            return;
        }
        ADD_FAILURE() << "accepted: " << header;
    };
    fails(R"([1, 2])", 0, "not a JSON object");
    fails(R"({"t": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", 0, "overflows");
    fails(R"({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4, "non-negative");
    fails(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", 4, "end before");
    fails(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4, "data_offsets");
    fails(R"({"t": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]}})", 4, "dtype");
    fails(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8, "gap");
    fails(R"({"__metadata__": {"k": 1}})", 0, "__metadata__");
}

TEST(SafetensorsHeader, AcceptsScalarsAndEmptyTensors) {
    const auto infos = parse_safetensors_header(
        R"({"__metadata__": {"format": "pt"}, "s": {"dtype": "BF16", "shape": [], "data_offsets": [0, 2]},
            "e": {"dtype": "F32", "shape": [0, 7], "data_offsets": [2, 2]}})",
        2, "x");
    ASSERT_EQ(infos.size(), 2u);
}

// The seed corpus of the safetensors fuzz target, classified by the reference reader (Python
// safetensors 0.8 `deserialize`): exactly these files are accepted; everything else must be rejected.
TEST(SafetensorsFile, AgreesWithTheReferenceReaderOnTheSeedCorpus) {
    const std::set<std::string> accepted = {"empty_header", "valid_fp8_with_scale", "valid_scalar_and_empty",
                                            "valid_two_tensors"};
    size_t files = 0;
    for (const auto& entry : fs::directory_iterator(source_dir() / "tests/fuzz/corpus/safetensors")) {
        const std::string bytes = test::read_file(entry.path());
        const std::string name = entry.path().filename().string();
        bool ok = true;
        try {
            (void)parse_safetensors_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
        } catch (const Error& e) {
            ok = false;
            EXPECT_NE(e.message().find(name), std::string::npos) << e.message();
        }
        EXPECT_EQ(ok, accepted.count(name) == 1) << name;
        ++files;
    }
    EXPECT_GE(files, 13u);
}

}  // namespace
}  // namespace k2
