#include "backend/cpu/embedding.h"

#include "backend/cpu/linear.h"

namespace k2::cpu {

void embedding(const Tensor& table, const int32_t* ids, int64_t num_tokens, float* out) {
    K2_CHECK(table.rank() == 2 && table.dtype() != DType::F8_E4M3,
             "embedding: table {} must be a 2-D F32/BF16/F16 tensor", table.shape_string());
    const int64_t vocab = table.dim(0);
    const int64_t hidden = table.dim(1);
    for (int64_t t = 0; t < num_tokens; ++t) {
        K2_CHECK(ids[t] >= 0 && ids[t] < vocab, "token id {} is outside the vocabulary [0, {})", ids[t], vocab);
        dequantize_row(table, nullptr, ids[t], out + t * hidden);
    }
}

}  // namespace k2::cpu
