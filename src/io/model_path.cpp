#include "io/model_path.h"

#include <cstdlib>
#include <fstream>
#include <system_error>

#include "core/error.h"

namespace k2 {

namespace fs = std::filesystem;

namespace {

std::string env(const char* name) {
    const char* value = std::getenv(name);
    return value != nullptr ? std::string(value) : std::string();
}

// `org/name` with plain path components; anything else is treated as a local path.
bool looks_like_hub_id(const std::string& arg) {
    const size_t slash = arg.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == arg.size() ||
        arg.find('/', slash + 1) != std::string::npos) {
        return false;
    }
    const std::string org = arg.substr(0, slash);
    const std::string name = arg.substr(slash + 1);
    return org != "." && org != ".." && name != "." && name != ".." && arg.find('\\') == std::string::npos;
}

std::string read_ref(const fs::path& ref_file) {
    std::ifstream in(ref_file);
    std::string commit;
    std::getline(in, commit);
    while (!commit.empty() && (commit.back() == '\n' || commit.back() == '\r' || commit.back() == ' ')) {
        commit.pop_back();
    }
    return commit;
}

bool is_safe_component(const std::string& s) {
    return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos;
}

}  // namespace

fs::path hf_hub_cache_dir() {
    if (const std::string hub = env("HF_HUB_CACHE"); !hub.empty()) {
        return hub;
    }
    if (const std::string home = env("HF_HOME"); !home.empty()) {
        return fs::path(home) / "hub";
    }
    if (const std::string xdg = env("XDG_CACHE_HOME"); !xdg.empty()) {
        return fs::path(xdg) / "huggingface" / "hub";
    }
    return fs::path(env("HOME")) / ".cache" / "huggingface" / "hub";
}

fs::path resolve_model_path(const std::string& arg, const std::string& revision, const std::string& download_dir) {
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
        return fs::path(arg);
    }
    K2_CHECK(looks_like_hub_id(arg),
             "model '{}': no such directory (pass a folder with config.json and *.safetensors, or a hub id "
             "org/name present in the Hugging Face cache)",
             arg);
    const fs::path cache = download_dir.empty() ? hf_hub_cache_dir() : fs::path(download_dir);
    const std::string org = arg.substr(0, arg.find('/'));
    const std::string name = arg.substr(arg.find('/') + 1);
    const fs::path repo = cache / ("models--" + org + "--" + name);
    const std::string rev = revision.empty() ? "main" : revision;
    const std::string how = fmt::format(
        "k2 does not download; place the files with `huggingface-cli download {}{}{}`, or pass the model "
        "folder (config.json + *.safetensors) as MODEL",
        arg, revision.empty() ? "" : " --revision " + revision,
        download_dir.empty() ? "" : " --cache-dir " + download_dir);
    K2_CHECK(is_safe_component(rev), "model '{}': invalid revision '{}'", arg, rev);

    std::string commit;
    const fs::path ref_file = repo / "refs" / rev;
    if (fs::is_regular_file(ref_file, ec)) {
        commit = read_ref(ref_file);
        K2_CHECK(is_safe_component(commit), "model '{}': {} does not hold a commit hash", arg, ref_file.string());
    } else if (fs::is_directory(repo / "snapshots" / rev, ec)) {
        commit = rev;  // a commit hash given as --revision
    } else {
        K2_FAIL(
            "model '{}' (revision '{}') is not in the Hugging Face cache: looked for {} and {} (cache root {}, "
            "from {}); {}",
            arg, rev, ref_file.string(), (repo / "snapshots" / rev).string(), cache.string(),
            download_dir.empty() ? "$HF_HUB_CACHE / $HF_HOME/hub / ~/.cache/huggingface/hub" : "--download-dir", how);
    }
    const fs::path snapshot = repo / "snapshots" / commit;
    K2_CHECK(fs::is_directory(snapshot, ec), "model '{}': {} names commit {} but {} does not exist; {}", arg,
             ref_file.string(), commit, snapshot.string(), how);
    K2_CHECK(fs::exists(snapshot / "config.json", ec),
             "model '{}': snapshot {} has no config.json (incomplete "
             "download?); {}",
             arg, snapshot.string(), how);
    return snapshot;
}

}  // namespace k2
