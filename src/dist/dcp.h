// Decode context parallelism (vllm.md section 5) on the CPU: which DCP rank stores a token, the per-rank partial
// attention over a KV shard (output + log-sum-exp), and the log-sum-exp merge that makes the partials equal one
// attention over the whole context. The CUDA path uses the same math; these are the reference and the CPU
// backend's implementation.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace k2::dist {

// Token t lives on DCP rank (t / interleave) % dcp_size (vLLM's interleaved round-robin; interleave = I).
int dcp_rank_of_token(int64_t token_index, int dcp_size, int interleave = 1);
// How many of the first seq_len tokens land on dcp_rank.
int64_t dcp_local_token_count(int64_t seq_len, int dcp_rank, int dcp_size, int interleave = 1);
// Local slot of global token t on its own rank (t's index among that rank's tokens).
int64_t dcp_local_index(int64_t token_index, int dcp_size, int interleave = 1);

// Softmax attention of one query position with a single shared KV head (absorbed MLA / MQA shape), over the
// tokens given. With no tokens: out = 0 and lse = -inf.
//   q: [num_heads, head_dim]  k: [num_tokens, head_dim]  v: [num_tokens, v_dim]
//   out: [num_heads, v_dim]  lse: [num_heads] = log(sum_t exp(scale * q.k_t))
void partial_attention(std::span<const float> q, std::span<const float> k, std::span<const float> v, int num_heads,
                       int head_dim, int v_dim, float scale, std::span<float> out, std::span<float> lse);

// Global log-sum-exp of per-rank lse values, vLLM's rule: NaN and +inf count as -inf; all -inf gives -inf.
//   lses: [dcp_size] for one head
float merge_lse(std::span<const float> lses);

// The per-rank correction before the sum (vLLM correct_attn_out): out_r *= exp(lse_r - L) with L the global
// lse of that head; a -inf / NaN exponent gives factor 0. After this, summing the corrected outputs over ranks
// (an all-reduce or a reduce-scatter over heads) yields the full attention output.
//   out: [num_heads, v_dim] this rank's partial  all_lses: [dcp_size, num_heads] (all-gathered)
void correct_partial_output(std::span<float> out, std::span<const float> all_lses, int dcp_rank, int dcp_size,
                            int num_heads, int v_dim);

// The split-KV query rows of one DCP rank's attention (the CUDA model's DcpAttention): the rank's local keys of a
// sequence are cut into `splits` ranges of whole local blocks (block_tokens = 64 / dcp_size keys each), and every
// query token gets one row per range: row k * T + t reads block-table row row_seq[..] (its sequence's table shifted
// to the range's first block) up to key last_keys[..] of the range (-1: nothing). Together the rows of a token cover
// each of its visible local keys exactly once.
struct DcpKeyRanges {
    int splits = 1;
    int max_local_keys = 0;          // bound of last_keys + 1
    std::vector<int32_t> tables;     // [splits * num_seqs, max_blocks]
    std::vector<int32_t> row_seq;    // [splits * T]
    std::vector<int32_t> last_keys;  // [splits * T]
};

// positions: [T] of the tokens, grouped by sequence per query_start [S + 1]; block_tables [S, max_blocks] (global
// blocks of 64 tokens, which hold block_tokens of this rank's). desired_splits is clamped to [1, local blocks].
DcpKeyRanges plan_dcp_key_ranges(std::span<const int32_t> positions, std::span<const int32_t> query_start,
                                 std::span<const int32_t> block_tables, int max_blocks, int dcp_rank, int dcp_size,
                                 int desired_splits);

// Everything in one process: merges dcp_size partials into one output.
//   outs: [dcp_size, num_heads, v_dim]  lses: [dcp_size, num_heads]  out: [num_heads, v_dim]  lse: [num_heads]
void merge_partial_attention(std::span<const float> outs, std::span<const float> lses, int dcp_size, int num_heads,
                             int v_dim, std::span<float> out, std::span<float> lse);

}  // namespace k2::dist
