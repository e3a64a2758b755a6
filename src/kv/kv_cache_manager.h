// KvCacheManager: per-sequence block tables over a BlockPool, and prefix caching with chained hashes of
// full kKvBlockSize-token blocks (vLLM v1 kv_cache_manager.py). Not thread-safe (step thread only).
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "kv/block_pool.h"

namespace k2 {

// Hash of block i = XXH3-64(token ids of block i, seed = hash of block i-1); block 0's seed is fixed.
// Only full blocks are hashed.
std::vector<BlockHash> hash_full_blocks(std::span<const int32_t> tokens, int block_size);

// Cached blocks matching a prefix of a sequence's tokens.
struct PrefixHit {
    std::vector<int32_t> block_ids;
    int num_tokens = 0;  // block_ids.size() * block_size
};

class KvCacheManager {
public:
    KvCacheManager(int num_blocks, int block_size, bool enable_prefix_caching);

    int block_size() const { return m_block_size; }
    int num_blocks() const { return m_pool.num_blocks(); }
    int num_free_blocks() const { return m_pool.num_free_blocks(); }
    double usage() const { return m_pool.usage(); }
    int num_seqs() const { return static_cast<int>(m_seqs.size()); }
    const BlockPool& pool() const { return m_pool; }
    bool prefix_caching() const { return m_enable_prefix_caching; }

    // The longest chain of cached full blocks that prefixes `tokens`, leaving at least one token to compute
    // (a full hit recomputes the last token, so the step still has a row to sample from).
    PrefixHit find_prefix(std::span<const int32_t> tokens) const;
    // Makes `seq_id` hold enough blocks for `num_total_tokens` tokens. On the sequence's first call `hit`
    // (may be null) gives the cached prefix blocks it starts with. Returns false, changing nothing, when
    // the pool has too few free blocks.
    bool allocate(uint64_t seq_id, int num_total_tokens, const PrefixHit* hit);
    // Registers the sequence's full blocks within tokens[0, num_computed_tokens) in the prefix cache.
    void cache_blocks(uint64_t seq_id, std::span<const int32_t> tokens, int num_computed_tokens);
    // Releases the sequence's blocks (idempotent); cached blocks stay reusable until evicted.
    void free(uint64_t seq_id);
    // The sequence's physical block ids in logical order (empty for an unknown sequence).
    std::span<const int32_t> block_table(uint64_t seq_id) const;

private:
    struct SeqBlocks {
        std::vector<int32_t> block_ids;
        std::vector<BlockHash> hashes;  // of the first hashes.size() blocks, all registered or tried
    };

    BlockPool m_pool;
    int m_block_size;
    bool m_enable_prefix_caching;
    std::unordered_map<uint64_t, SeqBlocks> m_seqs;
};

}  // namespace k2
