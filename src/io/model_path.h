// MODEL arguments: a local directory, or a Hugging Face hub id (`org/name`) resolved offline from
// the local HF cache. k2 never downloads; when the files are absent the error says where it looked.
#pragma once

#include <filesystem>
#include <string>

namespace k2 {

// The hub cache root, as huggingface_hub computes it: $HF_HUB_CACHE, else $HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
std::filesystem::path hf_hub_cache_dir();

// `arg` is a directory: returned as is. `arg` is `org/name`: the snapshot folder
// <cache>/models--org--name/snapshots/<commit>, where <cache> is `download_dir` when given (vLLM's
// --download-dir) or hf_hub_cache_dir(), and <commit> is refs/<revision> (default "main") or the
// revision itself when it names a snapshot (a commit hash). Throws k2::Error otherwise.
std::filesystem::path resolve_model_path(const std::string& arg, const std::string& revision = "",
                                         const std::string& download_dir = "");

}  // namespace k2
