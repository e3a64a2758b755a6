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

std::vector<int64_t> parse_shape(const std::string& name, const json& entry, DType dtype, uint64_t& nbytes,
                                 const std::string& label) {
    const auto shape_it = entry.find("shape");
    K2_CHECK(shape_it != entry.end() && shape_it->is_array(), "{}: tensor '{}': missing or non-array shape", label,
             name);
    std::vector<int64_t> shape;
    uint64_t bytes = dtype_size(dtype);
    for (const json& d : *shape_it) {
        K2_CHECK(d.is_number_unsigned(), "{}: tensor '{}': shape entries must be non-negative integers", label,
                 name);
        const uint64_t dim = d.get<uint64_t>();
        // Byte counts above 2^62 cannot describe a real file; the bound also keeps int64 shapes exact.
        K2_CHECK(!__builtin_mul_overflow(bytes, dim, &bytes) && bytes <= (uint64_t{1} << 62),
                 "{}: tensor '{}': shape overflows", label, name);
        shape.push_back(static_cast<int64_t>(dim));
    }
    nbytes = bytes;
    return shape;
}

TensorInfo parse_entry(const std::string& name, const json& entry, const std::string& label) {
    K2_CHECK(entry.is_object(), "{}: tensor '{}': header entry is not an object", label, name);
    TensorInfo info;
    info.name = name;
    const auto dtype_it = entry.find("dtype");
    K2_CHECK(dtype_it != entry.end() && dtype_it->is_string(), "{}: tensor '{}': missing or non-string dtype", label,
             name);
    const auto dtype = dtype_from_name(dtype_it->get<std::string>());
    K2_CHECK(dtype.has_value(), "{}: tensor '{}': unknown dtype '{}'", label, name, dtype_it->get<std::string>());
    info.dtype = *dtype;
    uint64_t expected = 0;
    info.shape = parse_shape(name, entry, info.dtype, expected, label);

    const auto off_it = entry.find("data_offsets");
    K2_CHECK(off_it != entry.end() && off_it->is_array() && off_it->size() == 2 &&
                 (*off_it)[0].is_number_unsigned() && (*off_it)[1].is_number_unsigned(),
             "{}: tensor '{}': data_offsets must be two non-negative integers", label, name);
    info.begin = (*off_it)[0].get<uint64_t>();
    info.end = (*off_it)[1].get<uint64_t>();
    K2_CHECK(info.begin <= info.end, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", label, name,
             info.begin, info.end);
    // info.end <= data_bytes is checked in offset order by check_tiling, to name the first tensor cut.
    K2_CHECK(info.end - info.begin == expected,
             "{}: tensor '{}': {} bytes in data_offsets but shape x dtype needs {}", label, name,
             info.end - info.begin, expected);
    return info;
}

// The reference reader requires the buffers to tile the data area: sorted by offset, each begins
// where the previous ended, and the last ends at the end of the file.
void check_tiling(const std::vector<TensorInfo>& infos, uint64_t data_bytes, const std::string& label) {
    std::vector<const TensorInfo*> by_offset;
    by_offset.reserve(infos.size());
    for (const TensorInfo& info : infos) {
        by_offset.push_back(&info);
    }
    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
        return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    uint64_t position = 0;
    const TensorInfo* previous = nullptr;
    // Range first, in file order: of a truncated shard this names the first tensor that is cut.
    for (const TensorInfo* info : by_offset) {
        K2_CHECK(info->end <= data_bytes,
                 "{}: tensor '{}': data_offsets [{}, {}] run past the end of the {}-byte data area (file truncated "
                 "or offsets out of range)",
                 label, info->name, info->begin, info->end, data_bytes);
    }
    for (const TensorInfo* info : by_offset) {
        K2_CHECK(info->begin >= position, "{}: tensors '{}' and '{}' overlap (bytes [{}, {}) and [{}, {}))", label,
                 previous != nullptr ? previous->name : "", info->name, previous != nullptr ? previous->begin : 0,
                 position, info->begin, info->end);
        K2_CHECK(info->begin == position, "{}: tensor '{}': gap of {} unused bytes before its data_offsets [{}, {}]",
                 label, info->name, info->begin - position, info->begin, info->end);
        position = info->end;
        previous = info;
    }
    K2_CHECK(position == data_bytes, "{}: {} trailing bytes after the last tensor{} (data area {} bytes)", label,
             data_bytes - position, previous != nullptr ? fmt::format(" '{}'", previous->name) : "", data_bytes);
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
        infos.push_back(parse_entry(name, entry, label));
    }
    check_tiling(infos, data_bytes, label);
    return infos;
}

SafetensorsLayout parse_safetensors_file(const uint8_t* bytes, size_t size, const std::string& label) {
    K2_CHECK(size >= 8, "{}: truncated: {} bytes, a safetensors file needs at least 8", label, size);
    SafetensorsLayout layout;
    std::memcpy(&layout.header_bytes, bytes, 8);  // little-endian hosts only (x86-64, arm64)
    K2_CHECK(layout.header_bytes <= kMaxHeaderBytes, "{}: header length {} exceeds the 100 MB limit", label,
             layout.header_bytes);
    K2_CHECK(layout.header_bytes <= size - 8, "{}: truncated: header length {} runs past the end of the {}-byte file",
             label, layout.header_bytes, size);
    layout.data_offset = 8 + layout.header_bytes;
    layout.data_bytes = size - layout.data_offset;
    const std::string_view header(reinterpret_cast<const char*>(bytes + 8), layout.header_bytes);
    K2_CHECK(!header.empty() && header.front() == '{', "{}: header does not start with '{{'", label);
    layout.tensors = parse_safetensors_header(header, layout.data_bytes, label);
    // Already validated by parse_safetensors_header, so this parse cannot fail.
    const json parsed = json::parse(header, nullptr, false, false);
    const auto meta = parsed.find("__metadata__");
    if (meta != parsed.end()) {
        for (const auto& [key, value] : meta->items()) {
            layout.metadata[key] = value.get<std::string>();
        }
    }
    return layout;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
    auto file = std::make_shared<SafetensorsFile>();
    file->m_path = path;
    file->m_file = std::make_shared<MappedFile>(path);
    SafetensorsLayout layout = parse_safetensors_file(file->m_file->data(), file->m_file->size(), path.string());
    for (TensorInfo& info : layout.tensors) {
        file->m_tensors.emplace(info.name, std::move(info));
    }
    file->m_metadata = std::move(layout.metadata);
    file->m_data_area = file->m_file->data() + layout.data_offset;
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
    K2_CHECK(std::filesystem::is_directory(model_dir), "{}: not a directory", model_dir.string());
    const auto index_path = model_dir / "model.safetensors.index.json";
    const auto single_path = model_dir / "model.safetensors";
    if (std::filesystem::exists(index_path)) {
        ckpt.m_source = index_path;
        std::ifstream in(index_path);
        K2_CHECK(in.good(), "{}: cannot read", index_path.string());
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
        ckpt.m_source = single_path;
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
