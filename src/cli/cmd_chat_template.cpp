// `k2 chat-template MODEL`: renders an OpenAI chat request (stdin) with the checkpoint's chat template.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace k2::cli {
namespace {

struct ChatTemplateOptions {
    std::string model;
    std::string template_file;
    bool jsonl = false;
};

std::string render(const Tokenizer& tokenizer, const nlohmann::ordered_json& request, const std::string& source,
                   const std::string& source_name) {
    if (source.empty()) return tokenizer.apply_chat_template_ordered(request);
    return tokenizer.apply_chat_template(request, source, source_name);
}

void run_chat_template(const ChatTemplateOptions& opt) {
    auto tokenizer = Tokenizer::load(opt.model);
    std::string source;
    if (!opt.template_file.empty()) {
        std::ifstream in(opt.template_file, std::ios::binary);
        K2_CHECK(in.good(), "{}: cannot open template", opt.template_file);
        std::ostringstream ss;
        ss << in.rdbuf();
        source = ss.str();
    }
    if (!opt.jsonl) {
        std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
        nlohmann::ordered_json request;
        try {
            request = nlohmann::ordered_json::parse(input);
        } catch (const nlohmann::json::exception& e) {
            K2_FAIL("stdin: not a JSON chat request: {}", e.what());
        }
        std::string prompt = render(*tokenizer, request, source, opt.template_file);
        std::fwrite(prompt.data(), 1, prompt.size(), stdout);
        return;
    }
    // One request per line; one JSON line out each: {"prompt": ...} or {"error": ...}.
    std::string line;
    while (std::getline(std::cin, line)) {
        nlohmann::ordered_json result;
        try {
            auto request = nlohmann::ordered_json::parse(line);
            result["prompt"] = render(*tokenizer, request, source, opt.template_file);
        } catch (const nlohmann::json::exception& e) {
            result["error"] = std::string("invalid JSON: ") + e.what();
        } catch (const Error& e) {
            result["error"] = e.message();
        }
        std::string out = result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
        std::fwrite(out.data(), 1, out.size(), stdout);
    }
    std::fflush(stdout);
}

}  // namespace

void add_chat_template_command(CLI::App& app) {
    auto opt = std::make_shared<ChatTemplateOptions>();
    CLI::App* cmd = app.add_subcommand("chat-template", "Render an OpenAI chat request (stdin) with the chat template");
    cmd->add_option("model", opt->model, "Model directory")->required();
    cmd->add_option("--template", opt->template_file, "Jinja template file to use instead of the checkpoint's");
    cmd->add_flag("--jsonl", opt->jsonl, "One request per stdin line; prints {\"prompt\"|\"error\": ...} per line");
    cmd->callback([opt] { run_chat_template(*opt); });
}

}  // namespace k2::cli
