// BlockPool: the fixed set of KV block ids with reference counts, an LRU free list and the map from
// prefix hashes to cached full blocks (vLLM v1 block_pool.py). Plain C++, no device memory: the model
// owns the storage the ids index. Not thread-safe (the engine's step thread owns it).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

namespace k2 {

using BlockHash = uint64_t;

class BlockPool {
public:
    explicit BlockPool(int num_blocks);

    int num_blocks() const { return static_cast<int>(m_blocks.size()); }
    // Blocks with ref count 0 (some may still hold cached prefixes, evicted on reuse).
    int num_free_blocks() const { return m_num_free; }
    double usage() const;  // fraction of blocks referenced by a request

    // Pops `count` blocks from the head of the free list (least recently freed first), evicting their
    // cached hashes, and gives each a ref count of 1. Precondition: count <= num_free_blocks().
    std::vector<int32_t> allocate(int count);
    // Takes a reference on cached blocks found by a prefix lookup (removing free ones from the free list).
    void touch(std::span<const int32_t> block_ids);
    // Drops one reference per block; blocks reaching 0 go to the tail of the free list in the given order
    // (callers pass a request's blocks last-first, so its prefix is evicted last).
    void release(std::span<const int32_t> block_ids);

    std::optional<int32_t> cached_block(BlockHash hash) const;
    // Registers a full, computed block under its chained hash. A hash already cached by another block is
    // kept there (the duplicate stays uncached and is reused like any free block).
    void cache_block(int32_t block_id, BlockHash hash);
    int ref_count(int32_t block_id) const { return m_blocks[static_cast<size_t>(block_id)].ref_count; }
    int num_cached_blocks() const { return static_cast<int>(m_hash_to_block.size()); }
    // Drops every cached hash (e.g. after the KV storage was reallocated). Free blocks stay free.
    void reset_prefix_cache();

private:
    static constexpr int32_t kNone = -1;
    struct Block {
        int ref_count = 0;
        std::optional<BlockHash> hash;
        int32_t prev = kNone;  // free-list links, valid while ref_count == 0
        int32_t next = kNone;
    };

    void push_free_tail(int32_t block_id);
    void unlink_free(int32_t block_id);
    void evict_hash(int32_t block_id);

    std::vector<Block> m_blocks;
    int32_t m_free_head = kNone;
    int32_t m_free_tail = kNone;
    int m_num_free = 0;
    std::unordered_map<BlockHash, int32_t> m_hash_to_block;
};

}  // namespace k2
