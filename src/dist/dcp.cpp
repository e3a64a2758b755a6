#include "dist/dcp.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"

namespace k2::dist {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float sanitize_lse(float lse) {
    return (std::isnan(lse) || lse == std::numeric_limits<float>::infinity()) ? kNegInf : lse;
}

void check_dcp(int dcp_size, int interleave) {
    K2_CHECK(dcp_size >= 1, "decode context parallel size must be >= 1, got {}", dcp_size);
    K2_CHECK(interleave >= 1, "dcp interleave size must be >= 1, got {}", interleave);
}

}  // namespace

int dcp_rank_of_token(int64_t token_index, int dcp_size, int interleave) {
    check_dcp(dcp_size, interleave);
    return static_cast<int>((token_index / interleave) % dcp_size);
}

int64_t dcp_local_index(int64_t token_index, int dcp_size, int interleave) {
    check_dcp(dcp_size, interleave);
    const int64_t group = token_index / interleave;  // which interleave-sized run
    return (group / dcp_size) * interleave + token_index % interleave;
}

int64_t dcp_local_token_count(int64_t seq_len, int dcp_rank, int dcp_size, int interleave) {
    check_dcp(dcp_size, interleave);
    const int64_t round = static_cast<int64_t>(dcp_size) * interleave;  // tokens per full round-robin cycle
    const int64_t full = seq_len / round;
    const int64_t rest = seq_len % round;
    const int64_t extra = std::clamp<int64_t>(rest - static_cast<int64_t>(dcp_rank) * interleave, 0, interleave);
    return full * interleave + extra;
}

void partial_attention(std::span<const float> q, std::span<const float> k, std::span<const float> v, int num_heads,
                       int head_dim, int v_dim, float scale, std::span<float> out, std::span<float> lse) {
    K2_CHECK(head_dim > 0 && v_dim > 0 && k.size() % head_dim == 0, "partial_attention: bad k size {}", k.size());
    const size_t num_tokens = k.size() / head_dim;
    K2_CHECK(q.size() == static_cast<size_t>(num_heads) * head_dim && v.size() == num_tokens * v_dim &&
                 out.size() == static_cast<size_t>(num_heads) * v_dim && lse.size() == static_cast<size_t>(num_heads),
             "partial_attention: inconsistent sizes");
    std::vector<float> scores(num_tokens);  // [num_tokens] for one head
    for (int h = 0; h < num_heads; ++h) {
        float* o = out.data() + static_cast<size_t>(h) * v_dim;
        std::fill(o, o + v_dim, 0.0f);
        if (num_tokens == 0) {
            lse[h] = kNegInf;
            continue;
        }
        float max_score = kNegInf;
        for (size_t t = 0; t < num_tokens; ++t) {
            double dot = 0.0;
            for (int d = 0; d < head_dim; ++d) {
                dot += static_cast<double>(q[h * head_dim + d]) * k[t * head_dim + d];
            }
            scores[t] = static_cast<float>(dot) * scale;
            max_score = std::max(max_score, scores[t]);
        }
        double denom = 0.0;
        for (size_t t = 0; t < num_tokens; ++t) {
            const double p = std::exp(static_cast<double>(scores[t]) - max_score);
            denom += p;
            for (int d = 0; d < v_dim; ++d) {
                o[d] += static_cast<float>(p * v[t * v_dim + d]);
            }
        }
        for (int d = 0; d < v_dim; ++d) {
            o[d] = static_cast<float>(o[d] / denom);
        }
        lse[h] = static_cast<float>(max_score + std::log(denom));
    }
}

float merge_lse(std::span<const float> lses) {
    float max_lse = kNegInf;
    for (float l : lses) {
        max_lse = std::max(max_lse, sanitize_lse(l));
    }
    if (max_lse == kNegInf) {
        return kNegInf;
    }
    double sum = 0.0;
    for (float l : lses) {
        sum += std::exp(static_cast<double>(sanitize_lse(l)) - max_lse);
    }
    return static_cast<float>(max_lse + std::log(sum));
}

void correct_partial_output(std::span<float> out, std::span<const float> all_lses, int dcp_rank, int dcp_size,
                            int num_heads, int v_dim) {
    K2_CHECK(all_lses.size() == static_cast<size_t>(dcp_size) * num_heads &&
                 out.size() == static_cast<size_t>(num_heads) * v_dim && dcp_rank >= 0 && dcp_rank < dcp_size,
             "correct_partial_output: inconsistent sizes");
    std::vector<float> head_lses(dcp_size);  // [dcp_size] for one head
    for (int h = 0; h < num_heads; ++h) {
        for (int r = 0; r < dcp_size; ++r) {
            head_lses[r] = all_lses[static_cast<size_t>(r) * num_heads + h];
        }
        const float global = merge_lse(head_lses);
        float exponent = sanitize_lse(head_lses[dcp_rank]) - global;
        if (std::isnan(exponent) || exponent == std::numeric_limits<float>::infinity()) {
            exponent = kNegInf;  // -inf - -inf: this rank (and every rank) saw no tokens for this head
        }
        const float factor = std::exp(exponent);
        for (int d = 0; d < v_dim; ++d) {
            out[static_cast<size_t>(h) * v_dim + d] *= factor;
        }
    }
}

void merge_partial_attention(std::span<const float> outs, std::span<const float> lses, int dcp_size, int num_heads,
                             int v_dim, std::span<float> out, std::span<float> lse) {
    const size_t per_rank = static_cast<size_t>(num_heads) * v_dim;
    K2_CHECK(outs.size() == per_rank * dcp_size && lses.size() == static_cast<size_t>(dcp_size) * num_heads &&
                 out.size() == per_rank && lse.size() == static_cast<size_t>(num_heads),
             "merge_partial_attention: inconsistent sizes");
    std::fill(out.begin(), out.end(), 0.0f);
    std::vector<float> corrected(per_rank);  // [num_heads, v_dim]
    for (int r = 0; r < dcp_size; ++r) {
        std::copy_n(outs.begin() + r * per_rank, per_rank, corrected.begin());
        correct_partial_output(corrected, lses, r, dcp_size, num_heads, v_dim);
        for (size_t i = 0; i < per_rank; ++i) {
            out[i] += corrected[i];
        }
    }
    std::vector<float> head_lses(dcp_size);
    for (int h = 0; h < num_heads; ++h) {
        for (int r = 0; r < dcp_size; ++r) {
            head_lses[r] = lses[static_cast<size_t>(r) * num_heads + h];
        }
        lse[h] = merge_lse(head_lses);
    }
}

DcpKeyRanges plan_dcp_key_ranges(std::span<const int32_t> positions, std::span<const int32_t> query_start,
                                 std::span<const int32_t> block_tables, int max_blocks, int dcp_rank, int dcp_size,
                                 int desired_splits) {
    constexpr int kBlockTokens = 64;  // the engine's KV block (kKvBlockSize)
    K2_CHECK(dcp_size >= 1 && kBlockTokens % dcp_size == 0 && dcp_rank >= 0 && dcp_rank < dcp_size,
             "plan_dcp_key_ranges: rank {} of {}", dcp_rank, dcp_size);
    const auto t_count = static_cast<int64_t>(positions.size());
    const auto num_seqs = static_cast<int64_t>(query_start.size()) - 1;
    K2_CHECK(num_seqs >= 0 && block_tables.size() == static_cast<size_t>(num_seqs * max_blocks),
             "plan_dcp_key_ranges: {} block-table entries for {} sequences of {}", block_tables.size(), num_seqs,
             max_blocks);
    const int bt = kBlockTokens / dcp_size;
    std::vector<int32_t> last(static_cast<size_t>(t_count));  // [T] last local key, -1: none
    int max_local = 0;
    for (int64_t t = 0; t < t_count; ++t) {
        const int64_t visible =
            dcp_local_token_count(int64_t{positions[static_cast<size_t>(t)]} + 1, dcp_rank, dcp_size);
        last[static_cast<size_t>(t)] = static_cast<int32_t>(visible - 1);
        max_local = std::max(max_local, static_cast<int>(visible));
    }
    DcpKeyRanges r;
    const int local_blocks = (max_local + bt - 1) / bt;
    r.splits = std::clamp(std::min(desired_splits, local_blocks), 1, std::max(desired_splits, 1));
    const int blocks_per_split = (local_blocks + r.splits - 1) / r.splits;
    const int span = blocks_per_split * bt;  // local keys per range
    r.max_local_keys = std::min(max_local, span);
    r.tables.assign(static_cast<size_t>(r.splits * num_seqs * max_blocks), 0);
    r.row_seq.resize(static_cast<size_t>(r.splits * t_count));
    r.last_keys.resize(static_cast<size_t>(r.splits * t_count));
    for (int k = 0; k < r.splits; ++k) {
        const int first = std::min(k * blocks_per_split, max_blocks);
        for (int64_t s = 0; s < num_seqs; ++s) {  // row k * S + s: sequence s's table from block `first` on
            std::copy(block_tables.begin() + s * max_blocks + first, block_tables.begin() + (s + 1) * max_blocks,
                      r.tables.begin() + (k * num_seqs + s) * max_blocks);
            for (int32_t t = query_start[static_cast<size_t>(s)]; t < query_start[static_cast<size_t>(s) + 1]; ++t) {
                const auto row = static_cast<size_t>(k * t_count + t);
                const int rel = last[static_cast<size_t>(t)] - k * blocks_per_split * bt;  // last key in the range
                r.row_seq[row] = static_cast<int32_t>(k * num_seqs + s);
                r.last_keys[row] = rel < 0 ? -1 : std::min(rel, span - 1);
            }
        }
    }
    return r;
}

}  // namespace k2::dist
