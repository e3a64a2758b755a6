// Helpers for the checkpoint tests: temp folders, fixture copies, and raw safetensors edits made
// with nlohmann::json (independent of the reader under test).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "test_paths.h"

namespace k2 {
namespace fs = std::filesystem;
}  // namespace k2

namespace k2::test {

// A fresh folder under the temp dir, removed with its contents at the end of the test.
class TempDir {
public:
    TempDir() {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        m_path = fs::temp_directory_path() /
                 fmt::format("k2_io_{}_{}_{}", info != nullptr ? info->name() : "test", ::getpid(), counter()++);
        fs::remove_all(m_path);
        fs::create_directories(m_path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(m_path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const fs::path& path() const { return m_path; }

private:
    static int& counter() {
        static int n = 0;
        return n;
    }
    fs::path m_path;
};

inline fs::path copy_fixture(const std::string& name, const fs::path& dest) {
    const fs::path out = dest / name;
    fs::copy(fixture_path(name), out, fs::copy_options::recursive);
    return out;
}

inline std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline void write_file(const fs::path& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
}

// A safetensors file split into its header JSON and data area.
struct RawShard {
    nlohmann::json header;
    std::string data;

    static RawShard load(const fs::path& path) {
        const std::string bytes = read_file(path);
        uint64_t n = 0;
        std::memcpy(&n, bytes.data(), 8);
        return {nlohmann::json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
    }
    void save(const fs::path& path) const {
        const std::string text = header.dump();
        const uint64_t n = text.size();
        std::string bytes(reinterpret_cast<const char*>(&n), 8);
        write_file(path, bytes + text + data);
    }
    // The first tensor (in file order) whose data a truncation to `data_bytes` cuts.
    std::string first_cut_tensor(uint64_t data_bytes) const {
        std::string name;
        uint64_t begin = UINT64_MAX;
        for (const auto& [key, value] : header.items()) {
            if (key != "__metadata__" && value["data_offsets"][1].get<uint64_t>() > data_bytes &&
                value["data_offsets"][0].get<uint64_t>() < begin) {
                begin = value["data_offsets"][0].get<uint64_t>();
                name = key;
            }
        }
        return name;
    }
};

inline nlohmann::json read_json(const fs::path& path) {
    return nlohmann::json::parse(read_file(path));
}
inline void write_json(const fs::path& path, const nlohmann::json& j) {
    write_file(path, j.dump(1));
}

}  // namespace k2::test
