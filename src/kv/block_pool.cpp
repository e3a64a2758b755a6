#include "kv/block_pool.h"

#include "core/error.h"

namespace k2 {

BlockPool::BlockPool(int num_blocks) : m_blocks(static_cast<size_t>(num_blocks)) {
    K2_CHECK(num_blocks > 0, "the KV cache needs at least one block, got {}", num_blocks);
    for (int32_t block_id = 0; block_id < num_blocks; ++block_id) push_free_tail(block_id);
}

double BlockPool::usage() const {
    return 1.0 - static_cast<double>(m_num_free) / static_cast<double>(m_blocks.size());
}

std::vector<int32_t> BlockPool::allocate(int count) {
    K2_CHECK(count <= m_num_free, "allocating {} KV blocks with only {} free", count, m_num_free);
    std::vector<int32_t> block_ids;
    block_ids.reserve(static_cast<size_t>(count));
    for (int i = 0; i < count; ++i) {
        const int32_t block_id = m_free_head;
        unlink_free(block_id);
        evict_hash(block_id);
        m_blocks[static_cast<size_t>(block_id)].ref_count = 1;
        block_ids.push_back(block_id);
    }
    return block_ids;
}

void BlockPool::touch(std::span<const int32_t> block_ids) {
    for (const int32_t block_id : block_ids) {
        Block& block = m_blocks[static_cast<size_t>(block_id)];
        if (block.ref_count == 0) unlink_free(block_id);
        ++block.ref_count;
    }
}

void BlockPool::release(std::span<const int32_t> block_ids) {
    for (const int32_t block_id : block_ids) {
        Block& block = m_blocks[static_cast<size_t>(block_id)];
        K2_CHECK(block.ref_count > 0, "releasing free KV block {}", block_id);
        if (--block.ref_count == 0) push_free_tail(block_id);
    }
}

std::optional<int32_t> BlockPool::cached_block(BlockHash hash) const {
    const auto it = m_hash_to_block.find(hash);
    if (it == m_hash_to_block.end()) return std::nullopt;
    return it->second;
}

void BlockPool::cache_block(int32_t block_id, BlockHash hash) {
    Block& block = m_blocks[static_cast<size_t>(block_id)];
    if (block.hash.has_value()) return;
    if (m_hash_to_block.emplace(hash, block_id).second) block.hash = hash;
}

void BlockPool::reset_prefix_cache() {
    for (Block& block : m_blocks) block.hash.reset();
    m_hash_to_block.clear();
}

void BlockPool::push_free_tail(int32_t block_id) {
    Block& block = m_blocks[static_cast<size_t>(block_id)];
    block.prev = m_free_tail;
    block.next = kNone;
    if (m_free_tail != kNone) {
        m_blocks[static_cast<size_t>(m_free_tail)].next = block_id;
    } else {
        m_free_head = block_id;
    }
    m_free_tail = block_id;
    ++m_num_free;
}

void BlockPool::unlink_free(int32_t block_id) {
    Block& block = m_blocks[static_cast<size_t>(block_id)];
    if (block.prev != kNone) {
        m_blocks[static_cast<size_t>(block.prev)].next = block.next;
    } else {
        m_free_head = block.next;
    }
    if (block.next != kNone) {
        m_blocks[static_cast<size_t>(block.next)].prev = block.prev;
    } else {
        m_free_tail = block.prev;
    }
    block.prev = kNone;
    block.next = kNone;
    --m_num_free;
}

void BlockPool::evict_hash(int32_t block_id) {
    Block& block = m_blocks[static_cast<size_t>(block_id)];
    if (!block.hash.has_value()) return;
    const auto it = m_hash_to_block.find(*block.hash);
    if (it != m_hash_to_block.end() && it->second == block_id) m_hash_to_block.erase(it);
    block.hash.reset();
}

}  // namespace k2
