// `k2 tokenize MODEL` / `k2 detokenize MODEL`: line-oriented JSON filters over stdin, one process for many
// inputs (the differential tests against tiktoken run thousands of strings through one process).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace k2::cli {
namespace {

struct TokenizeOptions {
    std::string model;
    std::string pattern;
    bool no_special = false;
    bool skip_special = false;
    bool stream = false;
    std::string bench_file;
    int bench_repeat = 3;
};

// `--bench FILE`: single-thread encode throughput over a JSONL file of documents (parsing excluded),
// best of `repeat` passes; prints one JSON object (bench/tokenizer_bench.py compares it with tiktoken).
void run_bench(const Tokenizer& tokenizer, const TokenizeOptions& opt) {
    std::ifstream in(opt.bench_file, std::ios::binary);
    K2_CHECK(in.good(), "{}: cannot open", opt.bench_file);
    std::vector<std::string> docs;
    std::string line;
    size_t bytes = 0;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        auto text = nlohmann::json::parse(line);
        K2_CHECK(text.is_string(), "{}: every line must be a JSON string", opt.bench_file);
        docs.push_back(text.get<std::string>());
        bytes += docs.back().size();
    }
    double best = 1e30;
    uint64_t tokens = 0, checksum = 0;
    for (int pass = 0; pass < std::max(1, opt.bench_repeat); ++pass) {
        tokens = 0;
        checksum = 0;
        auto start = std::chrono::steady_clock::now();
        for (const auto& doc : docs) {
            auto ids = tokenizer.encode(doc, !opt.no_special);
            tokens += ids.size();
            for (int32_t id : ids) checksum = checksum * 1000003u + static_cast<uint64_t>(id);
        }
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        best = std::min(best, seconds);
    }
    nlohmann::json result = {{"docs", docs.size()},  {"bytes", bytes},     {"tokens", tokens},
                             {"checksum", checksum}, {"seconds", best},    {"mb_per_s", bytes / best / 1e6}};
    std::printf("%s\n", result.dump().c_str());
}

void run_tokenize(const TokenizeOptions& opt) {
    auto tokenizer = Tokenizer::load(opt.model, opt.pattern);
    if (!opt.bench_file.empty()) {
        run_bench(*tokenizer, opt);
        return;
    }
    std::string line;
    size_t line_no = 0;
    std::string out;
    while (std::getline(std::cin, line)) {
        ++line_no;
        nlohmann::json text;
        try {
            text = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
            K2_FAIL("stdin line {}: not JSON: {}", line_no, e.what());
        }
        K2_CHECK(text.is_string(), "stdin line {}: expected a JSON string", line_no);
        std::vector<int32_t> ids = tokenizer->encode(text.get_ref<const std::string&>(), !opt.no_special);
        out.clear();
        out += '[';
        for (size_t k = 0; k < ids.size(); ++k) {
            if (k > 0) out += ", ";
            out += std::to_string(ids[k]);
        }
        out += "]\n";
        std::fwrite(out.data(), 1, out.size(), stdout);
    }
    std::fflush(stdout);
}

std::vector<int32_t> parse_ids(const std::string& line, size_t line_no) {
    nlohmann::json ids;
    try {
        ids = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
        K2_FAIL("stdin line {}: not JSON: {}", line_no, e.what());
    }
    K2_CHECK(ids.is_array(), "stdin line {}: expected a JSON array of token ids", line_no);
    std::vector<int32_t> out;
    for (const auto& id : ids) {
        K2_CHECK(id.is_number_integer(), "stdin line {}: token ids must be integers", line_no);
        out.push_back(id.get<int32_t>());
    }
    return out;
}

// Decoded bytes as a JSON string; invalid UTF-8 becomes U+FFFD as Python's decode("utf-8", "replace").
std::string json_text(const std::string& bytes) {
    std::string valid;
    utf8::decode_replace(bytes, valid, /*final=*/true);
    return nlohmann::json(valid).dump();
}

void run_detokenize(const TokenizeOptions& opt) {
    auto tokenizer = Tokenizer::load(opt.model, opt.pattern);
    std::string line;
    size_t line_no = 0;
    while (std::getline(std::cin, line)) {
        ++line_no;
        std::vector<int32_t> ids = parse_ids(line, line_no);
        std::string out;
        if (opt.stream) {
            // One JSON array of the incremental detokenizer's deltas (the last one from flush()).
            nlohmann::json deltas = nlohmann::json::array();
            IncrementalDetokenizer detok(*tokenizer, opt.skip_special);
            for (int32_t id : ids) deltas.push_back(detok.push(id));
            deltas.push_back(detok.flush());
            out = deltas.dump();
        } else {
            out = json_text(tokenizer->decode(ids, opt.skip_special));
        }
        out += '\n';
        std::fwrite(out.data(), 1, out.size(), stdout);
    }
    std::fflush(stdout);
}

void add_pattern_option(CLI::App* cmd, TokenizeOptions& opt) {
    cmd->add_option("--pattern", opt.pattern,
                    "Pre-tokenizer: kimi, cl100k, o200k or a regex (default: tokenizer_config pat_str, else kimi)");
}

}  // namespace

void add_tokenize_commands(CLI::App& app) {
    auto opt = std::make_shared<TokenizeOptions>();
    CLI::App* tok = app.add_subcommand("tokenize", "Encode one JSON string per stdin line to a JSON id array");
    tok->add_option("model", opt->model, "Model directory (tiktoken.model + tokenizer_config.json) or rank file")
        ->required();
    tok->add_flag("--no-special", opt->no_special, "Encode special-token text as plain text");
    add_pattern_option(tok, *opt);
    tok->add_option("--bench", opt->bench_file, "Time encoding of a JSONL file of documents instead of reading stdin");
    tok->add_option("--repeat", opt->bench_repeat, "Passes over the --bench file (the best is reported)");
    tok->callback([opt] { run_tokenize(*opt); });

    auto dopt = std::make_shared<TokenizeOptions>();
    CLI::App* detok = app.add_subcommand("detokenize", "Decode one JSON id array per stdin line to a JSON string");
    detok->add_option("model", dopt->model, "Model directory or rank file")->required();
    detok->add_flag("--skip-special-tokens", dopt->skip_special, "Drop special tokens (tool-call tokens are kept)");
    detok->add_flag("--stream", dopt->stream, "Print the incremental detokenizer's deltas as a JSON array");
    add_pattern_option(detok, *dopt);
    detok->callback([dopt] { run_detokenize(*dopt); });
}

}  // namespace k2::cli
