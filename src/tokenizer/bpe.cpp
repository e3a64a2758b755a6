#include "tokenizer/bpe.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <queue>

#include "core/error.h"

namespace k2 {
namespace {

int base64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

bool base64_decode(std::string_view in, std::string& out) {
    out.clear();
    uint32_t acc = 0;
    int bits = 0;
    for (char c : in) {
        if (c == '=') break;
        int v = base64_value(c);
        if (v < 0) return false;
        acc = (acc << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xff));
        }
    }
    return true;
}

inline uint64_t hash_bytes(std::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

}  // namespace

BpeRanks BpeRanks::load(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    K2_CHECK(in.good(), "{}: cannot open BPE rank file", path.string());
    std::vector<std::pair<std::string, uint32_t>> entries;
    std::string line;
    std::string bytes;
    size_t line_no = 0;
    while (std::getline(in, line)) {
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        size_t space = line.find(' ');
        K2_CHECK(space != std::string::npos, "{}:{}: expected `BASE64 RANK`", path.string(), line_no);
        K2_CHECK(base64_decode(std::string_view(line).substr(0, space), bytes) && !bytes.empty(),
                 "{}:{}: invalid base64 token", path.string(), line_no);
        std::string_view rank_text = std::string_view(line).substr(space + 1);
        uint64_t rank = 0;
        K2_CHECK(!rank_text.empty() && rank_text.size() < 10, "{}:{}: invalid rank", path.string(), line_no);
        for (char c : rank_text) {
            K2_CHECK(c >= '0' && c <= '9', "{}:{}: invalid rank", path.string(), line_no);
            rank = rank * 10 + static_cast<uint64_t>(c - '0');
        }
        entries.emplace_back(bytes, static_cast<uint32_t>(rank));
    }
    K2_CHECK(!entries.empty(), "{}: no BPE ranks", path.string());

    BpeRanks ranks;
    uint32_t max_rank = 0;
    for (const auto& e : entries) max_rank = std::max(max_rank, e.second);
    ranks.m_token_bytes.resize(static_cast<size_t>(max_rank) + 1);
    size_t capacity = 1;
    while (capacity < entries.size() * 2) capacity <<= 1;
    size_t total_bytes = 0;
    for (const auto& e : entries) total_bytes += e.first.size();
    ranks.m_blob.reserve(total_bytes);
    ranks.m_slots.assign(capacity, Slot{});
    ranks.m_mask = capacity - 1;
    ranks.m_pair_rank.assign(65536, kNoRank);
    std::fill(std::begin(ranks.m_byte_rank), std::end(ranks.m_byte_rank), kNoRank);
    for (auto& [token, rank] : entries) {
        K2_CHECK(ranks.m_token_bytes[rank].empty(), "{}: rank {} appears twice", path.string(), rank);
        ranks.m_token_bytes[rank] = std::move(token);
        ranks.insert(ranks.m_token_bytes[rank], rank);
    }
    return ranks;
}

void BpeRanks::insert(std::string_view bytes, uint32_t rank) {
    if (bytes.size() == 1) m_byte_rank[static_cast<uint8_t>(bytes[0])] = rank;
    if (bytes.size() == 2) {
        m_pair_rank[static_cast<size_t>(static_cast<uint8_t>(bytes[0])) << 8 | static_cast<uint8_t>(bytes[1])] = rank;
    }
    uint64_t h = hash_bytes(bytes);
    const size_t offset = m_blob.size();
    K2_CHECK(offset < (size_t{1} << 24), "BPE vocabulary larger than 16 MiB of token bytes");
    const uint32_t len = bytes.size() < kLongToken ? static_cast<uint32_t>(bytes.size()) : kLongToken;
    m_blob.append(bytes);
    for (uint64_t i = h & m_mask;; i = (i + 1) & m_mask) {
        Slot& slot = m_slots[i];
        if (slot.rank == kNoRank) {
            slot = Slot{h, rank, len << 24 | static_cast<uint32_t>(offset)};
            return;
        }
        K2_CHECK(!slot_matches(slot, h, bytes), "BPE token of rank {} is duplicated", rank);
    }
}

bool BpeRanks::slot_matches(const Slot& slot, uint64_t hash, std::string_view bytes) const {
    if (slot.hash != hash) return false;
    const uint32_t len = slot.where >> 24;
    if (len == kLongToken) return m_token_bytes[slot.rank] == bytes;
    return len == bytes.size() && std::memcmp(m_blob.data() + (slot.where & 0xffffff), bytes.data(), len) == 0;
}

uint32_t BpeRanks::rank(std::string_view bytes) const {
    if (bytes.size() == 1) return m_byte_rank[static_cast<uint8_t>(bytes[0])];
    if (bytes.size() == 2) {
        return m_pair_rank[static_cast<size_t>(static_cast<uint8_t>(bytes[0])) << 8 | static_cast<uint8_t>(bytes[1])];
    }
    uint64_t h = hash_bytes(bytes);
    for (uint64_t i = h & m_mask;; i = (i + 1) & m_mask) {
        const Slot& slot = m_slots[i];
        if (slot.rank == kNoRank) return kNoRank;
        if (slot_matches(slot, h, bytes)) return slot.rank;
    }
}

// tiktoken's _byte_pair_merge: parts are (start, rank of the merge of this part with the next one);
// repeatedly merge the leftmost lowest-rank pair. Quadratic, which is fast for the short pieces the
// pre-tokenizer produces; long pieces go to merge_long.
void BpeRanks::encode_piece(std::string_view piece, std::vector<int32_t>& out, std::vector<uint64_t>& scratch) const {
    if (piece.empty()) return;
    uint32_t whole = rank(piece);
    if (whole != kNoRank) {
        out.push_back(static_cast<int32_t>(whole));
        return;
    }
    if (piece.size() > 256) {
        merge_long(piece, out);
        return;
    }
    // Each part packs (start << 32 | rank) so the scan touches one array.
    auto& parts = scratch;
    parts.clear();
    const size_t n = piece.size();
    for (size_t i = 0; i + 1 < n; ++i) parts.push_back(uint64_t{i} << 32 | rank(piece.substr(i, 2)));
    parts.push_back(uint64_t{n - 1} << 32 | kNoRank);
    parts.push_back(uint64_t{n} << 32 | kNoRank);
    auto start = [&](size_t i) { return static_cast<size_t>(parts[i] >> 32); };
    auto set_rank = [&](size_t i, uint32_t r) { parts[i] = (parts[i] & ~uint64_t{0xffffffff}) | r; };
    auto get_rank = [&](size_t i) -> uint32_t {
        if (i + 3 < parts.size()) return rank(piece.substr(start(i), start(i + 3) - start(i)));
        return kNoRank;
    };
    for (;;) {
        uint32_t min_rank = kNoRank;
        size_t min_i = 0;
        for (size_t i = 0; i + 1 < parts.size(); ++i) {
            uint32_t r = static_cast<uint32_t>(parts[i]);
            if (r < min_rank) {
                min_rank = r;
                min_i = i;
            }
        }
        if (min_rank == kNoRank) break;
        if (min_i > 0) set_rank(min_i - 1, get_rank(min_i - 1));
        set_rank(min_i, get_rank(min_i));
        parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(min_i) + 1);
    }
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
        uint32_t r = rank(piece.substr(start(i), start(i + 1) - start(i)));
        K2_CHECK(r != kNoRank, "BPE: byte 0x{:02x} has no rank", static_cast<uint8_t>(piece[start(i)]));
        out.push_back(static_cast<int32_t>(r));
    }
}

// The same merge order with a heap and a linked list: O(n log n) for long pieces (e.g. whitespace runs).
// Ties between equal ranks resolve to the leftmost pair, as in the quadratic loop.
void BpeRanks::merge_long(std::string_view piece, std::vector<int32_t>& out) const {
    const size_t n = piece.size();
    std::vector<size_t> next(n), prev(n);
    std::vector<uint32_t> pair_rank(n, kNoRank);  // rank of merging part i with its successor
    std::vector<bool> alive(n, true);
    for (size_t i = 0; i < n; ++i) {
        next[i] = i + 1;
        prev[i] = i == 0 ? SIZE_MAX : i - 1;
    }
    auto end_of = [&](size_t i) { return next[i]; };
    auto merged_rank = [&](size_t i) -> uint32_t {
        if (next[i] >= n) return kNoRank;
        return rank(piece.substr(i, end_of(next[i]) - i));
    };
    using Entry = std::pair<uint64_t, size_t>;  // (rank << 32 | start, start); smaller first
    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
    for (size_t i = 0; i + 1 < n; ++i) {
        pair_rank[i] = merged_rank(i);
        if (pair_rank[i] != kNoRank) heap.push({uint64_t{pair_rank[i]} << 32 | i, i});
    }
    while (!heap.empty()) {
        auto [key, i] = heap.top();
        heap.pop();
        if (!alive[i] || pair_rank[i] != static_cast<uint32_t>(key >> 32)) continue;  // stale entry
        size_t j = next[i];
        alive[j] = false;
        next[i] = next[j];
        if (next[j] < n) prev[next[j]] = i;
        pair_rank[i] = merged_rank(i);
        if (pair_rank[i] != kNoRank) heap.push({uint64_t{pair_rank[i]} << 32 | i, i});
        if (prev[i] != SIZE_MAX) {
            size_t p = prev[i];
            pair_rank[p] = merged_rank(p);
            if (pair_rank[p] != kNoRank) heap.push({uint64_t{pair_rank[p]} << 32 | p, p});
        }
    }
    for (size_t i = 0; i < n; i = next[i]) {
        uint32_t r = rank(piece.substr(i, next[i] - i));
        K2_CHECK(r != kNoRank, "BPE: byte 0x{:02x} has no rank", static_cast<uint8_t>(piece[i]));
        out.push_back(static_cast<int32_t>(r));
    }
}

}  // namespace k2
