// Block pool and KV cache manager: ref counts, LRU eviction order, chained prefix hashes.
#include <gtest/gtest.h>

#include <numeric>

#include "core/error.h"
#include "kv/block_pool.h"
#include "kv/kv_cache_manager.h"

namespace k2 {
namespace {

std::vector<int32_t> iota_tokens(int count, int32_t start = 0) {
    std::vector<int32_t> tokens(static_cast<size_t>(count));
    std::iota(tokens.begin(), tokens.end(), start);
    return tokens;
}

TEST(BlockPool, AllocatesFromHeadAndFreesToTail) {
    BlockPool pool(4);
    EXPECT_EQ(pool.num_free_blocks(), 4);
    const auto first = pool.allocate(2);
    EXPECT_EQ(first, (std::vector<int32_t>{0, 1}));
    EXPECT_EQ(pool.num_free_blocks(), 2);
    EXPECT_DOUBLE_EQ(pool.usage(), 0.5);
    pool.release(std::vector<int32_t>{1, 0});
    // Free list is now 2, 3, 1, 0: least recently freed first.
    EXPECT_EQ(pool.allocate(4), (std::vector<int32_t>{2, 3, 1, 0}));
    EXPECT_EQ(pool.num_free_blocks(), 0);
    EXPECT_THROW(pool.allocate(1), Error);
}

TEST(BlockPool, TouchTakesCachedBlocksOffTheFreeList) {
    BlockPool pool(3);
    const auto blocks = pool.allocate(1);
    pool.cache_block(blocks[0], 42);
    pool.release(blocks);
    EXPECT_EQ(pool.num_free_blocks(), 3);
    ASSERT_EQ(pool.cached_block(42), blocks[0]);
    pool.touch(blocks);
    EXPECT_EQ(pool.ref_count(blocks[0]), 1);
    EXPECT_EQ(pool.num_free_blocks(), 2);
    pool.touch(blocks);
    EXPECT_EQ(pool.ref_count(blocks[0]), 2);
    pool.release(blocks);
    pool.release(blocks);
    EXPECT_EQ(pool.num_free_blocks(), 3);
    EXPECT_THROW(pool.release(blocks), Error);
}

TEST(BlockPool, ReuseEvictsTheHash) {
    BlockPool pool(1);
    auto blocks = pool.allocate(1);
    pool.cache_block(blocks[0], 7);
    pool.release(blocks);
    EXPECT_TRUE(pool.cached_block(7).has_value());
    blocks = pool.allocate(1);
    EXPECT_FALSE(pool.cached_block(7).has_value());
    EXPECT_EQ(pool.num_cached_blocks(), 0);
}

TEST(BlockHashes, ChainedOverFullBlocksOnly) {
    const auto tokens = iota_tokens(200);
    const auto hashes = hash_full_blocks(tokens, 64);
    ASSERT_EQ(hashes.size(), 3u);
    // Same block content after a different prefix hashes differently (the chain).
    auto other = tokens;
    other[0] = 999;
    const auto other_hashes = hash_full_blocks(other, 64);
    EXPECT_NE(hashes[1], other_hashes[1]);
    // A shared prefix gives the same hashes.
    const auto prefix_hashes = hash_full_blocks(std::span(tokens).first(130), 64);
    EXPECT_EQ(prefix_hashes, std::vector<BlockHash>(hashes.begin(), hashes.begin() + 2));
}

TEST(KvCacheManager, PrefixHitAfterCaching) {
    KvCacheManager kv(8, 64, true);
    const auto tokens = iota_tokens(200);
    EXPECT_EQ(kv.find_prefix(tokens).num_tokens, 0);
    ASSERT_TRUE(kv.allocate(1, 200, nullptr));
    EXPECT_EQ(kv.block_table(1).size(), 4u);
    kv.cache_blocks(1, tokens, 200);
    kv.free(1);
    EXPECT_EQ(kv.num_free_blocks(), 8);

    auto longer = tokens;
    longer.push_back(5);
    const PrefixHit hit = kv.find_prefix(longer);
    EXPECT_EQ(hit.num_tokens, 192);
    ASSERT_TRUE(kv.allocate(2, 201, &hit));
    EXPECT_EQ(std::vector<int32_t>(kv.block_table(2).begin(), kv.block_table(2).begin() + 3), hit.block_ids);
    EXPECT_EQ(kv.num_free_blocks(), 4);
}

TEST(KvCacheManager, FullHitLeavesTheLastTokenToCompute) {
    KvCacheManager kv(8, 64, true);
    const auto tokens = iota_tokens(128);
    ASSERT_TRUE(kv.allocate(1, 128, nullptr));
    kv.cache_blocks(1, tokens, 128);
    EXPECT_EQ(kv.find_prefix(tokens).num_tokens, 64);
    EXPECT_EQ(kv.find_prefix(iota_tokens(129)).num_tokens, 128);
}

TEST(KvCacheManager, FailedAllocationChangesNothing) {
    KvCacheManager kv(3, 64, true);
    ASSERT_TRUE(kv.allocate(1, 100, nullptr));
    EXPECT_FALSE(kv.allocate(2, 129, nullptr));
    EXPECT_EQ(kv.num_free_blocks(), 1);
    EXPECT_TRUE(kv.block_table(2).empty());
    // Growing a sequence block by block.
    EXPECT_TRUE(kv.allocate(1, 128, nullptr));
    EXPECT_EQ(kv.num_free_blocks(), 1);
    EXPECT_TRUE(kv.allocate(1, 129, nullptr));
    EXPECT_EQ(kv.num_free_blocks(), 0);
    EXPECT_FALSE(kv.allocate(1, 193, nullptr));
    kv.free(1);
    kv.free(1);
    EXPECT_EQ(kv.num_free_blocks(), 3);
}

TEST(KvCacheManager, CountsFreeCachedHitBlocksAgainstTheBudget) {
    KvCacheManager kv(2, 64, true);
    const auto tokens = iota_tokens(65);
    ASSERT_TRUE(kv.allocate(1, 65, nullptr));
    kv.cache_blocks(1, tokens, 65);
    kv.free(1);
    const PrefixHit hit = kv.find_prefix(tokens);
    ASSERT_EQ(hit.num_tokens, 64);
    // The hit block is free but cached: taking it plus one new block uses both free blocks.
    ASSERT_TRUE(kv.allocate(2, 65, &hit));
    EXPECT_EQ(kv.num_free_blocks(), 0);
    kv.free(2);
    const PrefixHit again = kv.find_prefix(tokens);
    EXPECT_FALSE(kv.allocate(3, 129 + 64, &again));
    EXPECT_EQ(kv.num_free_blocks(), 2);
}

TEST(KvCacheManager, DisabledPrefixCachingNeverHits) {
    KvCacheManager kv(4, 64, false);
    const auto tokens = iota_tokens(130);
    ASSERT_TRUE(kv.allocate(1, 130, nullptr));
    kv.cache_blocks(1, tokens, 130);
    kv.free(1);
    EXPECT_EQ(kv.find_prefix(tokens).num_tokens, 0);
}

}  // namespace
}  // namespace k2
