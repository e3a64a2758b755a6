// safetensors reader over mmap, and a checkpoint directory (single file or sharded through
// model.safetensors.index.json). Nothing is copied: tensors are views into the mapped files, so a
// 959 GiB checkpoint costs address space, not RAM. Every header field is validated before use.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace k2 {

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;  // outermost first
    uint64_t begin = 0;          // byte offsets relative to the data area (after the header)
    uint64_t end = 0;
};

// Parses and validates a header JSON against a data area of `data_bytes` bytes. `label` names the
// file in error messages. Throws k2::Error with a one-line message naming the file and tensor.
// As the reference reader, it requires the tensors to tile the data area exactly: no overlap, no gap,
// no trailing bytes (a truncated shard therefore fails here, naming the tensor that runs past the end).
std::vector<TensorInfo> parse_safetensors_header(std::string_view header_json, uint64_t data_bytes,
                                                 const std::string& label);

// The validated layout of a whole safetensors file.
struct SafetensorsLayout {
    uint64_t header_bytes = 0;  // N, the JSON length
    uint64_t data_offset = 0;   // 8 + N: where the data area starts in the file
    uint64_t data_bytes = 0;
    std::vector<TensorInfo> tensors;  // in header (name) order
    std::map<std::string, std::string> metadata;
};

// Validates a complete file image (e.g. a mapping): length prefix, header limit and JSON, every
// entry. Reads nothing past bytes[size - 1]. Used by SafetensorsFile::open and the fuzz target.
SafetensorsLayout parse_safetensors_file(const uint8_t* bytes, size_t size, const std::string& label);

class MappedFile;

class SafetensorsFile {
public:
    static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);

    const std::filesystem::path& path() const { return m_path; }
    const std::map<std::string, TensorInfo>& tensors() const { return m_tensors; }
    const std::map<std::string, std::string>& metadata() const { return m_metadata; }
    bool contains(const std::string& name) const { return m_tensors.count(name) != 0; }
    // A view of the tensor's bytes in the mapping; it keeps the mapping alive.
    Tensor tensor(const std::string& name) const;

private:
    std::filesystem::path m_path;
    std::shared_ptr<MappedFile> m_file;
    const uint8_t* m_data_area = nullptr;
    std::map<std::string, TensorInfo> m_tensors;
    std::map<std::string, std::string> m_metadata;
};

// A model directory's weights. Shards are opened lazily, on first access to one of their tensors.
class Checkpoint {
public:
    static Checkpoint open(const std::filesystem::path& model_dir);

    const std::filesystem::path& dir() const { return m_dir; }
    std::vector<std::string> names() const;  // sorted
    bool contains(const std::string& name) const { return m_file_of.count(name) != 0; }
    const std::string& file_of(const std::string& name) const;  // shard file name
    const TensorInfo& info(const std::string& name) const;
    Tensor get(const std::string& name) const;
    std::vector<std::string> shard_files() const;
    // The file that lists the tensors: model.safetensors.index.json, or model.safetensors.
    const std::filesystem::path& source_file() const { return m_source; }
    // Opens (once) and validates a shard; throws k2::Error naming the file on a broken one.
    const SafetensorsFile& shard(const std::string& file) const;

private:
    std::filesystem::path m_source;

    std::filesystem::path m_dir;
    std::map<std::string, std::string> m_file_of;  // tensor name -> shard file name
    mutable std::map<std::string, std::shared_ptr<SafetensorsFile>> m_shards;
};

}  // namespace k2
