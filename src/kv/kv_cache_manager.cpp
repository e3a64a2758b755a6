#include "kv/kv_cache_manager.h"

#include <xxhash.h>

#include <algorithm>

#include "core/error.h"

namespace k2 {
namespace {

// Seed of the first block's hash (vLLM's NONE_HASH). Fixed, so hashes are reproducible across runs.
constexpr BlockHash kRootHash = 0x6b32'6b76'6361'6368ull;

BlockHash hash_block(BlockHash parent, std::span<const int32_t> block_tokens) {
    return XXH3_64bits_withSeed(block_tokens.data(), block_tokens.size_bytes(), parent);
}

}  // namespace

std::vector<BlockHash> hash_full_blocks(std::span<const int32_t> tokens, int block_size) {
    const size_t num_full = tokens.size() / static_cast<size_t>(block_size);
    std::vector<BlockHash> hashes;
    hashes.reserve(num_full);
    BlockHash parent = kRootHash;
    for (size_t block_idx = 0; block_idx < num_full; ++block_idx) {
        parent = hash_block(parent, tokens.subspan(block_idx * static_cast<size_t>(block_size),
                                                   static_cast<size_t>(block_size)));
        hashes.push_back(parent);
    }
    return hashes;
}

KvCacheManager::KvCacheManager(int num_blocks, int block_size, bool enable_prefix_caching)
    : m_pool(num_blocks), m_block_size(block_size), m_enable_prefix_caching(enable_prefix_caching) {
    K2_CHECK(block_size > 0, "KV block size must be positive, got {}", block_size);
}

PrefixHit KvCacheManager::find_prefix(std::span<const int32_t> tokens) const {
    PrefixHit hit;
    if (!m_enable_prefix_caching || tokens.empty()) return hit;
    // NOTE: at most (num_tokens - 1) tokens may come from the cache so one is left to compute.
    const auto max_cached_tokens = tokens.size() - 1;
    const auto hashes = hash_full_blocks(tokens.first(max_cached_tokens), m_block_size);
    for (const BlockHash hash : hashes) {
        const auto block_id = m_pool.cached_block(hash);
        if (!block_id.has_value()) break;
        hit.block_ids.push_back(*block_id);
    }
    hit.num_tokens = static_cast<int>(hit.block_ids.size()) * m_block_size;
    return hit;
}

bool KvCacheManager::allocate(uint64_t seq_id, int num_total_tokens, const PrefixHit* hit) {
    auto it = m_seqs.find(seq_id);
    const bool is_new = it == m_seqs.end();
    const std::span<const int32_t> hit_blocks =
        (is_new && hit != nullptr) ? std::span<const int32_t>(hit->block_ids) : std::span<const int32_t>();
    const int num_held = is_new ? 0 : static_cast<int>(it->second.block_ids.size());
    const int num_needed = (num_total_tokens + m_block_size - 1) / m_block_size;
    const int num_new_blocks = std::max(0, num_needed - num_held - static_cast<int>(hit_blocks.size()));
    // Hit blocks nobody references sit in the free list: taking them uses up free blocks too.
    const auto num_free_hits = std::count_if(hit_blocks.begin(), hit_blocks.end(),
                                             [&](int32_t block_id) { return m_pool.ref_count(block_id) == 0; });
    if (num_new_blocks + static_cast<int>(num_free_hits) > m_pool.num_free_blocks()) return false;

    if (is_new) it = m_seqs.emplace(seq_id, SeqBlocks{}).first;
    SeqBlocks& seq = it->second;
    if (!hit_blocks.empty()) {
        m_pool.touch(hit_blocks);
        seq.block_ids.assign(hit_blocks.begin(), hit_blocks.end());
    }
    const auto new_blocks = m_pool.allocate(num_new_blocks);
    seq.block_ids.insert(seq.block_ids.end(), new_blocks.begin(), new_blocks.end());
    return true;
}

void KvCacheManager::cache_blocks(uint64_t seq_id, std::span<const int32_t> tokens, int num_computed_tokens) {
    if (!m_enable_prefix_caching) return;
    const auto it = m_seqs.find(seq_id);
    if (it == m_seqs.end()) return;
    SeqBlocks& seq = it->second;
    const size_t num_full = std::min(static_cast<size_t>(num_computed_tokens / m_block_size), seq.block_ids.size());
    BlockHash parent = seq.hashes.empty() ? kRootHash : seq.hashes.back();
    for (size_t block_idx = seq.hashes.size(); block_idx < num_full; ++block_idx) {
        parent = hash_block(parent, tokens.subspan(block_idx * static_cast<size_t>(m_block_size),
                                                   static_cast<size_t>(m_block_size)));
        seq.hashes.push_back(parent);
        m_pool.cache_block(seq.block_ids[block_idx], parent);
    }
}

void KvCacheManager::free(uint64_t seq_id) {
    const auto it = m_seqs.find(seq_id);
    if (it == m_seqs.end()) return;
    // Last blocks first, so the free list evicts a sequence's tail before its (more shareable) head.
    std::vector<int32_t> reversed(it->second.block_ids.rbegin(), it->second.block_ids.rend());
    m_pool.release(reversed);
    m_seqs.erase(it);
}

std::span<const int32_t> KvCacheManager::block_table(uint64_t seq_id) const {
    const auto it = m_seqs.find(seq_id);
    if (it == m_seqs.end()) return {};
    return it->second.block_ids;
}

}  // namespace k2
