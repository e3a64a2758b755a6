// Chat templates: jinja2's goldens byte for byte, and errors that name the template line.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../unit/test_paths.h"
#include "core/error.h"
#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer.h"

namespace k2 {
namespace {

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

TEST(ChatTemplate, GoldensMatchJinja2ByteForByte) {
    std::ifstream in(fixture_path("chat_templates/goldens.json"));
    auto goldens = nlohmann::ordered_json::parse(in);
    auto tok = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    size_t checked = 0;
    for (const auto& c : goldens["cases"]) {
        const std::string name = c["template"].get<std::string>();
        const std::string source = read_file(fixture_path("chat_templates/" + name));
        ASSERT_FALSE(source.empty()) << name;
        nlohmann::ordered_json request = c["input"];
        if (request["tools"].is_null()) request.erase("tools");
        ASSERT_TRUE(c["rendered"].is_string()) << "golden " << c["case"] << " is an error case";
        EXPECT_EQ(tok->apply_chat_template(request, source, name), c["rendered"].get<std::string>())
            << name << " / " << c["case"];
        ++checked;
    }
    EXPECT_EQ(checked, 16u);
}

TEST(ChatTemplate, TinyCheckpointFallsBackToKimiTemplate) {
    auto tok = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    ASSERT_TRUE(tok->has_chat_template());
    std::ifstream in(fixture_path("chat_templates/goldens.json"));
    auto goldens = nlohmann::ordered_json::parse(in);
    for (const auto& c : goldens["cases"]) {
        if (c["template"] != "kimi-k2-instruct-0905.jinja" || c["case"] != "user_only") continue;
        nlohmann::json request = nlohmann::json::parse(c["input"].dump());
        EXPECT_EQ(tok->apply_chat_template(request), c["rendered"].get<std::string>());
    }
}

TEST(ChatTemplate, SyntaxErrorNamesLine) {
    try {
        jinja::Template t("line one\n{% if x %}\n{{ x + }}\n{% endif %}", "broken.jinja");
        FAIL() << "expected a syntax error";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("broken.jinja:3"), std::string::npos) << e.message();
    }
    try {
        jinja::Template t("a\nb\n{% for x in y %}", "unclosed.jinja");
        FAIL() << "expected a syntax error";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("unclosed.jinja:"), std::string::npos) << e.message();
        EXPECT_NE(e.message().find("endfor"), std::string::npos) << e.message();
    }
}

// Found by fuzz_chat_template: `x[]` used to build a subscript with no index and crash at render time.
TEST(ChatTemplate, EmptySubscriptIsASyntaxError) {
    try {
        jinja::Template t("{{ tools[] | length }}", "empty.jinja");
        FAIL() << "expected a syntax error";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("empty subscript"), std::string::npos) << e.message();
        EXPECT_NE(e.message().find("empty.jinja:1"), std::string::npos) << e.message();
    }
}

TEST(ChatTemplate, RaiseExceptionNamesLineAndMessage) {
    jinja::Template t("ok\n\n{% if messages | length == 0 %}{{ raise_exception('need messages') }}{% endif %}",
                      "strict.jinja");
    try {
        t.render({{"messages", nlohmann::ordered_json::array()}});
        FAIL() << "expected raise_exception to throw";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("strict.jinja:3"), std::string::npos) << e.message();
        EXPECT_NE(e.message().find("need messages"), std::string::npos) << e.message();
    }
}

TEST(ChatTemplate, UndefinedAttributeOfUndefinedIsAnError) {
    jinja::Template t("{{ a.b.c }}", "undef.jinja");
    EXPECT_THROW(t.render(nlohmann::ordered_json::object()), Error);
}

}  // namespace
}  // namespace k2
