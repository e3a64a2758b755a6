// Embedding lookup, the CPU reference.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace k2::cpu {

// out[t, :] = table[ids[t], :] as fp32. table: [vocab, hidden] F32 / BF16 / F16; ids: [num_tokens];
// out: [num_tokens, hidden]. Throws k2::Error for an id outside [0, vocab).
void embedding(const Tensor& table, const int32_t* ids, int64_t num_tokens, float* out);

}  // namespace k2::cpu
