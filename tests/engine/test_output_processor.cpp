// OutputProcessor: stop strings matched across token boundaries, held back while a partial match is
// possible, excluded from the output unless include_stop_str_in_output.
#include <gtest/gtest.h>

#include <map>

#include "engine/output_processor.h"

namespace k2 {
namespace {

// Token id i decodes to pieces[i].
class PieceStream final : public TextStream {
public:
    explicit PieceStream(std::vector<std::string> pieces) : m_pieces(std::move(pieces)) {}
    std::string push(int32_t token_id) override { return m_pieces.at(static_cast<size_t>(token_id)); }
    std::string flush() override { return {}; }

private:
    std::vector<std::string> m_pieces;
};

struct TextRun {
    std::vector<std::string> deltas;
    std::optional<std::string> stop;
    std::string joined() const {
        std::string all;
        for (const auto& d : deltas) all += d;
        return all;
    }
};

TextRun run(const std::vector<std::string>& pieces, std::vector<std::string> stops, bool include = false,
        bool check_stop = true) {
    OutputProcessor processor(std::make_unique<PieceStream>(pieces), std::move(stops), include);
    TextRun result;
    for (size_t i = 0; i < pieces.size(); ++i) {
        TextUpdate update = processor.add_token(static_cast<int32_t>(i), false, check_stop, false);
        result.deltas.push_back(update.text_delta);
        if (update.stop_string.has_value()) {
            result.stop = update.stop_string;
            return result;
        }
    }
    result.deltas.push_back(processor.finish());
    return result;
}

TEST(OutputProcessor, StopStringSplitAcrossTokens) {
    const TextRun r = run({"The ", "qu", "ick", " brown"}, {"quick"});
    ASSERT_TRUE(r.stop.has_value());
    EXPECT_EQ(*r.stop, "quick");
    EXPECT_EQ(r.joined(), "The ");
    EXPECT_EQ(r.deltas, (std::vector<std::string>{"The ", "", ""}));  // "qu" was held back, never sent
}

TEST(OutputProcessor, StopStringAcrossThreeTokens) {
    const TextRun r = run({"x", "<", "/", "s>", "tail"}, {"</s>"});
    ASSERT_TRUE(r.stop.has_value());
    EXPECT_EQ(r.joined(), "x");
}

TEST(OutputProcessor, PartialMatchIsReleasedWhenItFails) {
    const TextRun r = run({"a", "b", "x"}, {"abc"});
    EXPECT_FALSE(r.stop.has_value());
    EXPECT_EQ(r.deltas, (std::vector<std::string>{"", "", "abx", ""}));
}

TEST(OutputProcessor, HeldTextIsFlushedAtTheEnd) {
    const TextRun r = run({"a", "b"}, {"abc"});
    EXPECT_FALSE(r.stop.has_value());
    EXPECT_EQ(r.deltas, (std::vector<std::string>{"", "", "ab"}));
}

TEST(OutputProcessor, TextAfterTheStopInTheSameTokenIsDropped) {
    const TextRun r = run({"foo STOP bar"}, {"STOP"});
    ASSERT_TRUE(r.stop.has_value());
    EXPECT_EQ(r.joined(), "foo ");
}

TEST(OutputProcessor, IncludeStopStrInOutput) {
    const TextRun r = run({"Hello ", "wor", "ld!", " more"}, {"world"}, true);
    ASSERT_TRUE(r.stop.has_value());
    EXPECT_EQ(r.joined(), "Hello world");
}

TEST(OutputProcessor, EarliestStopWins) {
    const TextRun r = run({"a", "bcdef"}, {"def", "bc"});
    ASSERT_TRUE(r.stop.has_value());
    EXPECT_EQ(*r.stop, "bc");
    EXPECT_EQ(r.joined(), "a");
}

TEST(OutputProcessor, NoStopCheckBeforeMinTokens) {
    const TextRun r = run({"ab", "c"}, {"ab"}, false, false);
    EXPECT_FALSE(r.stop.has_value());
    EXPECT_EQ(r.joined(), "abc");
}

TEST(OutputProcessor, MultiByteStopString) {
    const TextRun r = run({"caf", "\xc3\xa9", " ok"}, {"\xc3\xa9 o"});
    ASSERT_TRUE(r.stop.has_value());
    EXPECT_EQ(r.joined(), "caf");
}

TEST(OutputProcessor, SkippedStopTokenText) {
    OutputProcessor processor(std::make_unique<PieceStream>(std::vector<std::string>{"hi", "<eos>"}), {}, false);
    EXPECT_EQ(processor.add_token(0, false, true, false).text_delta, "hi");
    EXPECT_EQ(processor.add_token(1, true, true, true).text_delta, "");
    EXPECT_EQ(processor.text(), "hi");
}

TEST(OutputProcessor, NoTokenizerNoText) {
    OutputProcessor processor(nullptr, {}, false);
    EXPECT_EQ(processor.add_token(3, false, true, false).text_delta, "");
    EXPECT_EQ(processor.finish(), "");
}

}  // namespace
}  // namespace k2
