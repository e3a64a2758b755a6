#include "backend/cpu/ref_mla_prefill.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace k2::cpu {

void causal_attention(const CausalAttentionArgs& a) {
    K2_CHECK(a.num_seqs >= 0 && a.heads > 0 && a.d_qk > 0 && a.d_v > 0, "causal_attention: bad shape");
    for (int64_t s = 0; s < a.num_seqs; ++s) {
        const int64_t q0 = a.cu_seqlens_q[s];
        const int64_t q_len = a.cu_seqlens_q[s + 1] - q0;
        const int64_t k0 = a.cu_seqlens_k[s];
        const int64_t k_len = a.cu_seqlens_k[s + 1] - k0;
        K2_CHECK(q_len >= 0 && k_len >= q_len, "causal_attention: sequence {} has {} queries for {} keys", s, q_len,
                 k_len);
#pragma omp parallel for collapse(2) schedule(dynamic)
        for (int64_t i = 0; i < q_len; ++i) {
            for (int64_t h = 0; h < a.heads; ++h) {
                const int64_t len = k_len - q_len + i + 1;  // keys 0..position
                const float* q = a.q + ((q0 + i) * a.heads + h) * a.d_qk;
                std::vector<double> scores(static_cast<size_t>(len));
                double max_score = -INFINITY;
                for (int64_t j = 0; j < len; ++j) {
                    const float* k = a.k + ((k0 + j) * a.heads + h) * a.d_qk;
                    double dot = 0.0;
                    for (int64_t d = 0; d < a.d_qk; ++d)
                        dot += double{q[d]} * k[d];
                    scores[static_cast<size_t>(j)] = dot * a.softmax_scale;
                    max_score = std::max(max_score, scores[static_cast<size_t>(j)]);
                }
                double sum = 0.0;
                for (double& x : scores) {
                    x = std::exp(x - max_score);
                    sum += x;
                }
                std::vector<double> acc(static_cast<size_t>(a.d_v), 0.0);
                for (int64_t j = 0; j < len; ++j) {
                    const float* v = a.v + ((k0 + j) * a.heads + h) * a.d_v;
                    const double w = scores[static_cast<size_t>(j)] / sum;
                    for (int64_t d = 0; d < a.d_v; ++d)
                        acc[static_cast<size_t>(d)] += w * v[d];
                }
                float* out = a.out + ((q0 + i) * a.heads + h) * a.d_v;
                for (int64_t d = 0; d < a.d_v; ++d)
                    out[d] = static_cast<float>(acc[static_cast<size_t>(d)]);
            }
        }
    }
}

}  // namespace k2::cpu
