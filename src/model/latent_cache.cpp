#include "model/latent_cache.h"

#include "core/error.h"

namespace k2 {

LatentKvCache::LatentKvCache(int num_layers, int64_t entry_dim, int64_t block_size, DType dtype)
    : m_num_layers(num_layers), m_entry_dim(entry_dim), m_block_size(block_size), m_dtype(dtype) {
    K2_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F8_E4M3,
             "KV cache: unsupported storage dtype {}", dtype_name(dtype));
}

size_t LatentKvCache::bytes_per_block() const {
    return static_cast<size_t>(m_num_layers) * static_cast<size_t>(m_block_size * m_entry_dim) * dtype_size(m_dtype);
}

void LatentKvCache::allocate(int num_blocks) {
    K2_CHECK(num_blocks >= 0, "KV cache: negative block count {}", num_blocks);
    m_data.reset();  // free the old pool before taking the new one
    m_data.reset(new uint8_t[bytes_per_block() * static_cast<size_t>(num_blocks) + 1]);
    m_num_blocks = num_blocks;
}

cpu::LatentCacheView LatentKvCache::layer(int layer_idx) const {
    cpu::LatentCacheView view;
    const size_t layer_bytes =
        bytes_per_block() / static_cast<size_t>(m_num_layers) * static_cast<size_t>(m_num_blocks);
    view.data = m_data.get() + layer_bytes * static_cast<size_t>(layer_idx);
    view.dtype = m_dtype;
    view.num_slots = int64_t{m_num_blocks} * m_block_size;
    view.entry_dim = m_entry_dim;
    view.kv_scale = 1.0f;  // Kimi-K2 ships no k_scale: vLLM uses 1.0
    return view;
}

}  // namespace k2
