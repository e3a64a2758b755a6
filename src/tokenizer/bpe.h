// Byte-pair encoding over a tiktoken rank table: a flat open-addressing map from token bytes to rank
// (rank = token id = merge priority) and tiktoken's merge loop (lowest-rank adjacent pair first).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace k2 {

class BpeRanks {
public:
    static constexpr uint32_t kNoRank = UINT32_MAX;

    // Parses a tiktoken.model file: `BASE64(bytes) RANK` per line, blank lines skipped.
    static BpeRanks load(const std::filesystem::path& path);

    uint32_t rank(std::string_view bytes) const;  // kNoRank when the bytes are not a token
    int32_t num_tokens() const { return static_cast<int32_t>(m_token_bytes.size()); }  // max rank + 1
    const std::string& token_bytes(int32_t rank) const { return m_token_bytes[static_cast<size_t>(rank)]; }

    // Appends the tokens of one pre-tokenized piece to `out` (whole-piece lookup first, then merging).
    // `scratch` is reused between calls so that the common path allocates nothing.
    void encode_piece(std::string_view piece, std::vector<int32_t>& out, std::vector<uint64_t>& scratch) const;

private:
    // 16 bytes: the probe compares the hash, then the bytes in m_blob (one cache miss for a hit).
    struct Slot {
        uint64_t hash = 0;
        uint32_t rank = kNoRank;  // kNoRank: empty slot
        uint32_t where = 0;       // length (8 bits, 255 = look in m_token_bytes) << 24 | offset in m_blob
    };
    static constexpr uint32_t kLongToken = 255;
    bool slot_matches(const Slot& slot, uint64_t hash, std::string_view bytes) const;
    void insert(std::string_view bytes, uint32_t rank);
    void merge_long(std::string_view piece, std::vector<int32_t>& out) const;

    std::vector<std::string> m_token_bytes;  // by rank; empty for ranks the file skips
    std::string m_blob;                      // every token's bytes, back to back
    std::vector<Slot> m_slots;               // power-of-two size, linear probing
    uint64_t m_mask = 0;
    std::vector<uint32_t> m_pair_rank;  // [65536]: rank of every two-byte token, the hottest lookup
    uint32_t m_byte_rank[256] = {};
};

}  // namespace k2
