#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

namespace k2 {

using json = nlohmann::json;

// The file mapping; unmapped when the last tensor view that uses it is gone.
class MappedFile {
public:
    explicit MappedFile(const std::filesystem::path& path) {
        m_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        K2_CHECK(m_fd >= 0, "{}: cannot open: {}", path.string(), std::strerror(errno));
        struct stat st {};
        if (::fstat(m_fd, &st) != 0) {
            ::close(m_fd);
            K2_FAIL("{}: cannot stat: {}", path.string(), std::strerror(errno));
        }
        m_size = static_cast<size_t>(st.st_size);
        if (m_size > 0) {
            void* p = ::mmap(nullptr, m_size, PROT_READ, MAP_PRIVATE, m_fd, 0);
            if (p == MAP_FAILED) {
                ::close(m_fd);
                K2_FAIL("{}: cannot mmap: {}", path.string(), std::strerror(errno));
            }
            m_data = static_cast<const uint8_t*>(p);
        }
    }
    ~MappedFile() {
        if (m_data != nullptr) {
            ::munmap(const_cast<uint8_t*>(m_data), m_size);
        }
        ::close(m_fd);
    }
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return m_data; }
    size_t size() const { return m_size; }

private:
    int m_fd = -1;
    const uint8_t* m_data = nullptr;
    size_t m_size = 0;
};

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference reader's limit

TensorInfo parse_entry(const std::string& name, const json& entry, uint64_t data_bytes, const std::string& label) {
    K2_CHECK(entry.is_object(), "{}: tensor '{}': header entry is not an object", label, name);
    TensorInfo info;
    info.name = name;
    const auto dtype_it = entry.find("dtype");
    K2_CHECK(dtype_it != entry.end() && dtype_it->is_string(), "{}: tensor '{}': missing or non-string dtype", label,
             name);
    const auto dtype = dtype_from_name(dtype_it->get<std::string>());
    K2_CHECK(dtype.has_value(), "{}: tensor '{}': unknown dtype '{}'", label, name, dtype_it->get<std::string>());
    info.dtype = *dtype;

    const auto shape_it = entry.find("shape");
    K2_CHECK(shape_it != entry.end() && shape_it->is_array(), "{}: tensor '{}': missing or non-array shape", label,
             name);
    uint64_t numel = 1;
    for (const json& d : *shape_it) {
        K2_CHECK(d.is_number_unsigned(), "{}: tensor '{}': shape entries must be non-negative integers", label,
                 name);
        const uint64_t dim = d.get<uint64_t>();
        K2_CHECK(dim == 0 || numel <= (uint64_t{1} << 62) / dim, "{}: tensor '{}': shape overflows", label, name);
        numel *= dim;
        info.shape.push_back(static_cast<int64_t>(dim));
    }

    const auto off_it = entry.find("data_offsets");
    K2_CHECK(off_it != entry.end() && off_it->is_array() && off_it->size() == 2 &&
                 (*off_it)[0].is_number_unsigned() && (*off_it)[1].is_number_unsigned(),
             "{}: tensor '{}': data_offsets must be two non-negative integers", label, name);
    info.begin = (*off_it)[0].get<uint64_t>();
    info.end = (*off_it)[1].get<uint64_t>();
    K2_CHECK(info.begin <= info.end && info.end <= data_bytes,
             "{}: tensor '{}': data_offsets [{}, {}] outside the data area of {} bytes", label, name, info.begin,
             info.end, data_bytes);
    const uint64_t expected = numel * dtype_size(info.dtype);
    K2_CHECK(info.end - info.begin == expected,
             "{}: tensor '{}': {} bytes in data_offsets but shape x dtype needs {}", label, name,
             info.end - info.begin, expected);
    return info;
}

}  // namespace

std::vector<TensorInfo> parse_safetensors_header(std::string_view header_json, uint64_t data_bytes,
                                                 const std::string& label) {
    json header;
    try {
        header = json::parse(header_json, nullptr, true, false);
    } catch (const json::exception& e) {
        K2_FAIL("{}: header is not valid JSON: {}", label, e.what());
    }
    K2_CHECK(header.is_object(), "{}: header is not a JSON object", label);
    std::vector<TensorInfo> infos;
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            K2_CHECK(entry.is_object(), "{}: __metadata__ is not an object", label);
            for (const auto& [key, value] : entry.items()) {
                K2_CHECK(value.is_string(), "{}: __metadata__ value for '{}' is not a string", label, key);
            }
            continue;
        }
        infos.push_back(parse_entry(name, entry, data_bytes, label));
    }
    std::vector<const TensorInfo*> by_offset;
    for (const TensorInfo& info : infos) {
        by_offset.push_back(&info);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        K2_CHECK(by_offset[i]->begin >= by_offset[i - 1]->end, "{}: tensors '{}' and '{}' overlap", label,
                 by_offset[i - 1]->name, by_offset[i]->name);
    }
    return infos;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
    auto file = std::make_shared<SafetensorsFile>();
    file->m_path = path;
    file->m_file = std::make_shared<MappedFile>(path);
    const std::string label = path.string();
    const size_t size = file->m_file->size();
    K2_CHECK(size >= 8, "{}: truncated: {} bytes, a safetensors file needs at least 8", label, size);
    uint64_t header_bytes = 0;
    std::memcpy(&header_bytes, file->m_file->data(), 8);  // little-endian hosts only (x86-64, arm64)
    K2_CHECK(header_bytes <= kMaxHeaderBytes, "{}: header length {} exceeds the 100 MB limit", label, header_bytes);
    K2_CHECK(header_bytes <= size - 8, "{}: header length {} runs past the end of the {}-byte file", label,
             header_bytes, size);
    const std::string_view header(reinterpret_cast<const char*>(file->m_file->data() + 8), header_bytes);
    const uint64_t data_bytes = size - 8 - header_bytes;
    for (TensorInfo& info : parse_safetensors_header(header, data_bytes, label)) {
        file->m_tensors.emplace(info.name, std::move(info));
    }
    const json parsed = json::parse(header, nullptr, false, false);
    if (parsed.contains("__metadata__")) {
        for (const auto& [key, value] : parsed["__metadata__"].items()) {
            file->m_metadata[key] = value.get<std::string>();
        }
    }
    file->m_data_area = file->m_file->data() + 8 + header_bytes;
    return file;
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
    const auto it = m_tensors.find(name);
    K2_CHECK(it != m_tensors.end(), "{}: no tensor '{}'", m_path.string(), name);
    const TensorInfo& info = it->second;
    void* data = const_cast<uint8_t*>(m_data_area + info.begin);
    return Tensor::view(info.dtype, info.shape, data, m_file);
}

Checkpoint Checkpoint::open(const std::filesystem::path& model_dir) {
    Checkpoint ckpt;
    ckpt.m_dir = model_dir;
    const auto index_path = model_dir / "model.safetensors.index.json";
    const auto single_path = model_dir / "model.safetensors";
    if (std::filesystem::exists(index_path)) {
        std::ifstream in(index_path);
        json index;
        try {
            index = json::parse(in);
        } catch (const json::exception& e) {
            K2_FAIL("{}: not valid JSON: {}", index_path.string(), e.what());
        }
        K2_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
                 "{}: missing object 'weight_map'", index_path.string());
        for (const auto& [name, file] : index["weight_map"].items()) {
            K2_CHECK(file.is_string(), "{}: weight_map['{}'] is not a string", index_path.string(), name);
            const std::string shard_name = file.get<std::string>();
            K2_CHECK(shard_name.find('/') == std::string::npos && shard_name != ".." && !shard_name.empty(),
                     "{}: weight_map['{}'] = '{}' is not a file name in the model folder", index_path.string(), name,
                     shard_name);
            ckpt.m_file_of[name] = shard_name;
        }
        for (const std::string& shard_name : ckpt.shard_files()) {
            const auto shard_path = model_dir / shard_name;
            K2_CHECK(std::filesystem::exists(shard_path), "{}: shard '{}' named in the index does not exist",
                     index_path.string(), shard_path.string());
        }
    } else if (std::filesystem::exists(single_path)) {
        auto file = SafetensorsFile::open(single_path);
        for (const auto& [name, info] : file->tensors()) {
            ckpt.m_file_of[name] = "model.safetensors";
        }
        ckpt.m_shards["model.safetensors"] = file;
    } else {
        K2_FAIL("{}: no model.safetensors.index.json or model.safetensors", model_dir.string());
    }
    return ckpt;
}

std::vector<std::string> Checkpoint::names() const {
    std::vector<std::string> out;
    out.reserve(m_file_of.size());
    for (const auto& [name, file] : m_file_of) {
        out.push_back(name);
    }
    return out;
}

std::vector<std::string> Checkpoint::shard_files() const {
    std::vector<std::string> files;
    for (const auto& [name, file] : m_file_of) {
        files.push_back(file);
    }
    std::sort(files.begin(), files.end());
    files.erase(std::unique(files.begin(), files.end()), files.end());
    return files;
}

const std::string& Checkpoint::file_of(const std::string& name) const {
    const auto it = m_file_of.find(name);
    K2_CHECK(it != m_file_of.end(), "{}: missing tensor '{}'", m_dir.string(), name);
    return it->second;
}

const SafetensorsFile& Checkpoint::shard(const std::string& file) const {
    auto& slot = m_shards[file];
    if (!slot) {
        slot = SafetensorsFile::open(m_dir / file);
    }
    return *slot;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
    const std::string& file = file_of(name);
    const SafetensorsFile& s = shard(file);
    const auto it = s.tensors().find(name);
    K2_CHECK(it != s.tensors().end(), "{}: tensor '{}' is in the index but not in the file",
             (m_dir / file).string(), name);
    return it->second;
}

Tensor Checkpoint::get(const std::string& name) const {
    (void)info(name);
    return shard(file_of(name)).tensor(name);
}

}  // namespace k2
