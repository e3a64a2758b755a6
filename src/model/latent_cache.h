// LatentKvCache: the paged MLA latent cache of one model, [num_layers][num_blocks][block_size][entry_dim] with
// entry_dim = kv_lora_rank + qk_rope_head_dim (normed c_kv | roped k_pe), in F32, BF16 or FP8 e4m3 storage.
#pragma once

#include <cstdint>
#include <memory>

#include "backend/cpu/attention.h"
#include "core/dtype.h"

namespace k2 {

class LatentKvCache {
public:
    LatentKvCache(int num_layers, int64_t entry_dim, int64_t block_size, DType dtype);

    size_t bytes_per_block() const;  // over all layers
    void allocate(int num_blocks);   // contents undefined
    int num_blocks() const { return m_num_blocks; }
    int64_t block_size() const { return m_block_size; }
    // The cache of one layer: [num_blocks * block_size, entry_dim].
    cpu::LatentCacheView layer(int layer_idx) const;

private:
    int m_num_layers;
    int64_t m_entry_dim;
    int64_t m_block_size;
    DType m_dtype;
    int m_num_blocks = 0;
    std::unique_ptr<uint8_t[]> m_data;
};

}  // namespace k2
