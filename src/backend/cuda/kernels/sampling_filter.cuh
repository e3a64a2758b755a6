// Filtered rows of the sampling kernel (kernels/sampling.cuh; included there after kFilterThreads): the host
// sampler's sampling_distribution + draw_token_at (engine/sampler.cpp) on one CTA per row, without sorting.
//
// Weights: w = exp((double(logit) - max) / T) in double, as the host softmax computes it, quantized to integers
// q = rint(w * 2^S) with S = min(52, 63 - bit_width(vocab)) (so no sum of a row can overflow 64 bits): every sum
// below is then exact and independent of its grouping (deterministic, race-free), and a CDF boundary moves by at
// most vocab * 2^-(S+1) of the row's weight (~2.3e-9 at vocab 163,840; far less typically).
// 1. min-p (host: p < min_p * max p drops): w >= min_p keeps, a threshold on the logit found by a bisection over the
//    float keys (w is monotone in the logit).
// 2. top-k (host: the k-th largest probability after min-p; ties stay; fewer than k left: all stay): a radix
//    search over the order-preserving keys of the logits (a coarse pass over 256 buckets of 1/8 of (max - logit)/T,
//    then four 8-bit digit passes inside the chosen bucket), counting candidates.
// 3. top-p (host: sort by probability then id, keep until the sum reaches top_p, at least one): the same search
//    summing q of the kept candidates until top_p * their total; of the tokens tied at the boundary logit the
//    lowest ids are kept, as many as the host's walk needs.
// 4. The draw: target = uniform * total, the first kept token in id order whose prefix sum passes it (the host's
//    u < cumulative test).
// Compaction: once a coarse pass shows that at most kCompactCap candidates can stay (top-k 50: a few dozen; a small
// nucleus), they are gathered into shared memory in one more pass and everything after runs there (the digit
// passes, and the draw as a radix search over the token ids); otherwise the passes read the row (from L2) and the
// draw scans per-thread chunks of it.
// Where the device may pick another token than the host for the same uniform (all within double rounding of a
// threshold): the draw's target within ~vocab * 2^-(S+1) of a CDF boundary; a token whose w lies within rounding of
// min_p (the host divides by a differently rounded sum); a top-p prefix sum within ~1e-9 of top_p; distinct logits
// with equal double probabilities (only where exp underflows to 0 or to the same denormal), which the host orders
// by id and the device by logit. -0.0 is read as +0.0 (they tie, as on the host). NaN logits count as -inf (the
// host's answer is undefined); a row of only -inf draws token 0.
#pragma once

#include <climits>
#include <cstdint>

#include "backend/cuda/sampling.h"

namespace k2::cuda::kernels {

inline constexpr int kFilterThreads = 512;  // 128 registers a thread: the double exp and the passes' state
inline constexpr int kFilterWarps = kFilterThreads / 32;
inline constexpr int kFilterBins = 256;
inline constexpr int kFilterBinsPerLane = kFilterBins / 32;
inline constexpr int kCompactCap = 4096;                  // candidates gathered into shared memory (32 KB)
inline constexpr int kRowUnroll = 16;                     // loads in flight per thread in a pass over the row
inline constexpr uint32_t kFirstFiniteKey = 0x00800000u;  // the key of -FLT_MAX: -inf lies below it
inline constexpr float kBucketsPerUnit = 8.0f;            // coarse buckets per unit of (max - logit) / T

struct FilterShared {
    unsigned long long hist[kFilterBins];  // one pass's counts or weights per bin
    uint32_t hist_count[kFilterBins];      // a weighted coarse pass's counts per bin
    unsigned long long warp_sums[kFilterWarps];
    float warp_max[kFilterWarps];
    float list_values[kCompactCap];  // the compacted candidates (any order)
    int list_ids[kCompactCap];
    int list_size;
    unsigned long long above;       // the running total above the chosen bin
    unsigned long long at;          // ... and in it
    unsigned long long total;       // a reduction's result
    uint32_t chosen;                // the chosen bin (kFilterBins: the total never reached the target)
    uint32_t key;                   // a thread-0 result (min-p key)
    long long tie_keep;             // top-p: how many tokens tied at the boundary stay
    unsigned long long walk_start;  // row draw: the walker chunk's start on the CDF
    unsigned long long walk_ties;   // ... and the ties at tie_key before it
    int walker;                     // row draw: the thread whose chunk holds the target
    int last_kept;
};

// What one filtered row's passes share.
struct FilterRow {
    float max_logit;
    float bucket_scale;  // kBucketsPerUnit / T
    double temperature;
    double scale;  // 2^S
};

struct Boundary {
    uint32_t key;              // the boundary's key (a logit's, or a token id)
    unsigned long long above;  // total before it in the search order
    unsigned long long at;     // total of those equal to it
    bool found;
};

// Whether a Filtered row is filtered at all (the host's `plain` test, negated).
__device__ __forceinline__ bool filter_active(const SampleFilter& f, int vocab) {
    return (f.top_k > 0 && f.top_k < vocab) || f.top_p < 1.0 || f.min_p > 0.0;
}

// Order-preserving key of a float: a larger logit has a larger key (-0.0 just below +0.0).
__device__ __forceinline__ uint32_t logit_key(float v) {
    const uint32_t bits = __float_as_uint(v);
    return (bits & 0x80000000u) != 0u ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ float key_logit(uint32_t key) {
    return __uint_as_float((key & 0x80000000u) != 0u ? key & 0x7fffffffu : ~key);
}

__device__ __forceinline__ float neg_inf_float() {
    return __int_as_float(static_cast<int>(0xff800000u));
}

// NaN counts as -inf; -0.0 becomes +0.0 (the host weighs both alike, so they must tie, not order by key).
__device__ __forceinline__ float finite_or_masked(float v) {
    return v == v ? v + 0.0f : neg_inf_float();
}

// The host softmax's unnormalized weight of `v` (engine/sampler.cpp: softmax).
__device__ __forceinline__ double filter_weight(float v, const FilterRow& r) {
    return exp((static_cast<double>(v) - static_cast<double>(r.max_logit)) / r.temperature);
}

__device__ __forceinline__ unsigned long long quantized_weight(float v, const FilterRow& r) {
    return logit_key(v) < kFirstFiniteKey ? 0ull : __double2ull_rn(filter_weight(v, r) * r.scale);
}

// Coarse bucket of a candidate: 0 holds the largest logits; monotone (non-increasing) in the logit.
__device__ __forceinline__ uint32_t coarse_bucket(float v, const FilterRow& r) {
    const float d = (r.max_logit - v) * r.bucket_scale;
    return d < static_cast<float>(kFilterBins - 1) ? static_cast<uint32_t>(d) : kFilterBins - 1;
}

// The row's tokens, read coalesced with kRowUnroll loads in flight per thread: f(logit, id).
struct RowSource {
    const float* x;  // [vocab]
    int vocab;
    template <typename F>
    __device__ void for_each(F f) const {
        for (int64_t base = threadIdx.x; base < vocab; base += int64_t{kFilterThreads} * kRowUnroll) {
            float v[kRowUnroll];
#pragma unroll
            for (int u = 0; u < kRowUnroll; ++u) {
                const int64_t i = base + int64_t{u} * kFilterThreads;
                v[u] = i < vocab ? x[i] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < kRowUnroll; ++u) {
                const int64_t i = base + int64_t{u} * kFilterThreads;
                if (i < vocab) {
                    f(finite_or_masked(v[u]), static_cast<int>(i));
                }
            }
        }
    }
};

// The compacted candidates in shared memory (FilterShared::list_*): f(logit, id).
struct ListSource {
    const float* values;  // [size]
    const int* ids;       // [size]
    int size;
    template <typename F>
    __device__ void for_each(F f) const {
        for (int j = static_cast<int>(threadIdx.x); j < size; j += kFilterThreads) {
            f(values[j], ids[j]);
        }
    }
};

// Exclusive prefix of `value` over the block's threads (in thread order) and the block total; exact.
__device__ unsigned long long block_exclusive_scan_u64(unsigned long long value, unsigned long long* warp_sums,
                                                       unsigned long long& total) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int warp = static_cast<int>(threadIdx.x) / 32;
    unsigned long long inclusive = value;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned long long up = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) {
            inclusive += up;
        }
    }
    __syncthreads();  // an earlier scan's readers are done with warp_sums
    if (lane == 31) {
        warp_sums[warp] = inclusive;
    }
    __syncthreads();
    unsigned long long warp_prefix = 0;
    total = 0;
    for (int w = 0; w < kFilterWarps; ++w) {
        warp_prefix += w < warp ? warp_sums[w] : 0ull;
        total += warp_sums[w];
    }
    return warp_prefix + inclusive - value;
}

// One histogram pass: every element that `select(v, id)` accepts adds its count (1) or quantized weight to
// hist[bin_of(v, id)] (and, with `counts_too`, 1 to hist_count). Each thread sums runs of one bin in registers
// before its atomic: most elements of a row share a bin (the coarse bucket of the far tail, the leading digits of
// a narrow range), and shared atomics on one address serialize.
template <typename Source, typename Select, typename BinOf>
__device__ void histogram_pass(const Source& src, bool weighted, bool counts_too, const FilterRow& r, Select select,
                               BinOf bin_of, FilterShared& s) {
    for (int b = static_cast<int>(threadIdx.x); b < kFilterBins; b += kFilterThreads) {
        s.hist[b] = 0;
        s.hist_count[b] = 0;
    }
    __syncthreads();
    uint32_t run_bin = kFilterBins;
    unsigned long long run_value = 0;
    uint32_t run_count = 0;
    auto flush = [&]() {
        if (run_bin != kFilterBins) {
            if (counts_too) {
                atomicAdd(&s.hist_count[run_bin], run_count);
            }
            if (run_value != 0) {
                atomicAdd(&s.hist[run_bin], run_value);
            }
        }
    };
    src.for_each([&](float v, int id) {
        if (!select(v, id)) {
            return;
        }
        const uint32_t bin = bin_of(v, id);
        if (bin != run_bin) {
            flush();
            run_bin = bin;
            run_value = 0;
            run_count = 0;
        }
        run_value += weighted ? quantized_weight(v, r) : 1ull;
        run_count += 1;
    });
    flush();
    __syncthreads();
}

// Warp 0 sums hist (bins < `bins`, or all) and, with `counts`, hist_count instead; every thread gets the sum.
__device__ unsigned long long hist_sum(bool counts, uint32_t bins, FilterShared& s) {
    if (threadIdx.x < 32) {
        unsigned long long local = 0;
        for (int j = 0; j < kFilterBinsPerLane; ++j) {
            const int bin = static_cast<int>(threadIdx.x) * kFilterBinsPerLane + j;
            if (static_cast<uint32_t>(bin) < bins) {
                local += counts ? s.hist_count[bin] : s.hist[bin];
            }
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            local += __shfl_xor_sync(0xffffffffu, local, offset);
        }
        if (threadIdx.x == 0) {
            s.total = local;
        }
    }
    __syncthreads();
    const unsigned long long total = s.total;
    __syncthreads();  // s.total may be written again by the next call
    return total;
}

// Warp 0 walks the bins in the search order (bin j ascending, or 255 - j when `descending`), the running total
// starting at `start`, to the first bin where reaches(total through it) holds (reaches must be monotone). Sets
// s.chosen / s.above / s.at; every thread may read them after the return.
template <typename Reaches>
__device__ void find_crossing(bool descending, unsigned long long start, Reaches reaches, FilterShared& s) {
    if (threadIdx.x < 32) {
        const int lane = static_cast<int>(threadIdx.x);
        auto bin_at = [&](int j) { return descending ? kFilterBins - 1 - j : j; };
        unsigned long long local = 0;
        for (int j = 0; j < kFilterBinsPerLane; ++j) {
            local += s.hist[bin_at(lane * kFilterBinsPerLane + j)];
        }
        unsigned long long inclusive = local;
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const unsigned long long up = __shfl_up_sync(0xffffffffu, inclusive, offset);
            if (lane >= offset) {
                inclusive += up;
            }
        }
        const unsigned ballot = __ballot_sync(0xffffffffu, reaches(start + inclusive));
        if (lane == 0) {
            s.chosen = kFilterBins;
            s.above = start;  // set below when found
            s.at = 0;
        }
        __syncwarp();
        if (ballot != 0u && lane == __ffs(static_cast<int>(ballot)) - 1) {
            unsigned long long acc = start + inclusive - local;
            for (int j = 0; j < kFilterBinsPerLane; ++j) {
                const int bin = bin_at(lane * kFilterBinsPerLane + j);
                if (reaches(acc + s.hist[bin])) {
                    s.chosen = static_cast<uint32_t>(bin);
                    s.above = acc;
                    s.at = s.hist[bin];
                    break;
                }
                acc += s.hist[bin];
            }
        }
    }
    __syncthreads();
}

// A radix search over the 8-bit digits of key_of(v, id) among the elements `select` accepts: the key at which
// the running total (from `start`; counts, or quantized weights when `weighted`), in descending or ascending key
// order, first reaches what `reaches` asks. found = false only if the elements' total never reaches it.
template <typename Source, typename Select, typename KeyOf, typename Reaches>
__device__ Boundary digit_search(const Source& src, Select select, KeyOf key_of, bool descending, bool weighted,
                                 unsigned long long start, Reaches reaches, const FilterRow& r, FilterShared& s) {
    Boundary result{0u, start, 0ull, true};
    uint32_t prefix = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        const uint32_t high_mask = shift == 24 ? 0u : ~0u << (shift + 8);
        histogram_pass(
            src, weighted, false, r,
            [&](float v, int id) { return select(v, id) && (key_of(v, id) & high_mask) == prefix; },
            [&](float v, int id) { return (key_of(v, id) >> shift) & 0xffu; }, s);
        find_crossing(descending, result.above, reaches, s);
        if (s.chosen == kFilterBins) {
            result.found = false;
            break;
        }
        prefix |= s.chosen << shift;
        result.above = s.above;
        result.at = s.at;
    }
    result.key = prefix;
    return result;
}

// The exact boundary logit inside coarse bucket `bucket` (the running total before it: `above`).
template <typename Source, typename Reaches>
__device__ Boundary logit_search(const Source& src, uint32_t lo_key, uint32_t bucket, unsigned long long above,
                                 bool weighted, Reaches reaches, const FilterRow& r, FilterShared& s) {
    return digit_search(
        src, [&](float v, int) { return logit_key(v) >= lo_key && coarse_bucket(v, r) == bucket; },
        [](float v, int) { return logit_key(v); }, true, weighted, above, reaches, r, s);
}

// Gathers the row's candidates (key >= lo_key) in coarse buckets <= `bucket` (at most kCompactCap of them, as a
// counting pass showed) into s.list_*.
__device__ ListSource gather(const RowSource& row, uint32_t lo_key, uint32_t bucket, const FilterRow& r,
                             FilterShared& s) {
    if (threadIdx.x == 0) {
        s.list_size = 0;
    }
    __syncthreads();
    row.for_each([&](float v, int id) {
        if (logit_key(v) >= lo_key && coarse_bucket(v, r) <= bucket) {
            const int slot = atomicAdd(&s.list_size, 1);
            if (slot < kCompactCap) {  // always, by the count; a guard for the shared array
                s.list_values[slot] = v;
                s.list_ids[slot] = id;
            }
        }
    });
    __syncthreads();
    return ListSource{s.list_values, s.list_ids, min(s.list_size, kCompactCap)};
}

// min-p: the smallest key whose weight reaches min_p (thread 0 bisects; w is monotone in the logit and the largest
// logit weighs 1 >= min_p).
__device__ uint32_t min_p_key(double min_p, const FilterRow& r, FilterShared& s) {
    if (threadIdx.x == 0) {
        uint32_t lo = kFirstFiniteKey;
        uint32_t hi = logit_key(r.max_logit);
        while (lo < hi) {
            const uint32_t mid = lo + (hi - lo) / 2;
            if (filter_weight(key_logit(mid), r) >= min_p) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        s.key = lo;
    }
    __syncthreads();
    return s.key;
}

// top-p's ties: how many of the `count` tokens at weight q (in id order) the host's walk takes past `above` to
// reach the target (at least one); -1 when all of them.
__device__ long long top_p_ties_kept(unsigned long long above, unsigned long long q, unsigned long long count,
                                     double target) {
    const auto reaches = [&](long long n) {
        return static_cast<double>(above + static_cast<unsigned long long>(n) * q) >= target;
    };
    const auto all = static_cast<long long>(count);
    long long n = static_cast<long long>(ceil((target - static_cast<double>(above)) / static_cast<double>(q)));
    n = n < 1 ? 1 : (n > all ? all : n);
    while (n > 1 && reaches(n - 1)) {
        --n;
    }
    while (n < all && !reaches(n)) {
        ++n;
    }
    return n == all ? -1 : n;
}

// The kept set: keys >= keep_key; of the keys equal to tie_key only the first tie_keep in id order (tie_keep < 0:
// all).
struct KeptSet {
    uint32_t keep_key;
    uint32_t tie_key;
    long long tie_keep;
};

// Warp 0 walks tokens [begin, end) 32 at a time from `cumulative` on the CDF (`ties_before`: tokens tied at
// kept.tie_key before `begin`) to the first kept token whose inclusive prefix passes `target`; writes *token.
__device__ void walk_chunk(const float* x, int begin, int end, const FilterRow& r, const KeptSet& kept,
                           unsigned long long cumulative, unsigned long long ties_before, unsigned long long target,
                           int32_t* token) {
    const int lane = static_cast<int>(threadIdx.x);
    for (int base = begin; base < end; base += 32) {
        const int i = base + lane;
        const float v = i < end ? finite_or_masked(x[i]) : neg_inf_float();
        const uint32_t key = logit_key(v);
        const bool tie = kept.tie_keep >= 0 && i < end && key == kept.tie_key;
        const unsigned ties = __ballot_sync(0xffffffffu, tie);
        bool keep = i < end && key >= kept.keep_key;
        if (tie) {
            keep = ties_before + __popc(ties & ((1u << lane) - 1u)) < static_cast<unsigned long long>(kept.tie_keep);
        }
        ties_before += static_cast<unsigned long long>(__popc(ties));
        const unsigned long long q = keep ? quantized_weight(v, r) : 0ull;
        unsigned long long inclusive = q;
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const unsigned long long up = __shfl_up_sync(0xffffffffu, inclusive, offset);
            if (lane >= offset) {
                inclusive += up;
            }
        }
        const unsigned hits = __ballot_sync(0xffffffffu, target < cumulative + inclusive);
        if (hits != 0u) {
            if (lane == __ffs(static_cast<int>(hits)) - 1) {
                *token = i;
            }
            return;
        }
        cumulative += __shfl_sync(0xffffffffu, inclusive, 31);
    }
}

// The draw over the row: per-thread contiguous chunks summed and block-scanned, then warp 0 walks the chunk that
// holds the target 32 tokens at a time. Writes *token.
__device__ void draw_from_row(const float* x, int vocab, const FilterRow& r, const KeptSet& kept, double uniform,
                              int32_t* token, FilterShared& s) {
    const int chunk = (vocab + kFilterThreads - 1) / kFilterThreads;
    const int begin = min(vocab, static_cast<int>(threadIdx.x) * chunk);
    const int end = min(vocab, begin + chunk);
    unsigned long long tie_start = 0;  // ties at tie_key in the chunks before this one
    if (kept.tie_keep >= 0) {
        unsigned long long ties = 0;
        for (int i = begin; i < end; ++i) {
            ties += logit_key(finite_or_masked(x[i])) == kept.tie_key ? 1ull : 0ull;
        }
        unsigned long long all_ties = 0;
        tie_start = block_exclusive_scan_u64(ties, s.warp_sums, all_ties);
    }
    unsigned long long sum = 0;
    int last = -1;
    unsigned long long rank = tie_start;
    for (int i = begin; i < end; ++i) {
        const float v = finite_or_masked(x[i]);
        const uint32_t key = logit_key(v);
        if (key < kept.keep_key) {
            continue;
        }
        if (kept.tie_keep >= 0 && key == kept.tie_key && rank++ >= static_cast<unsigned long long>(kept.tie_keep)) {
            continue;
        }
        const unsigned long long q = quantized_weight(v, r);
        sum += q;
        last = q != 0 ? i : last;
    }
    if (threadIdx.x == 0) {
        s.walker = INT_MAX;
        s.last_kept = 0;
    }
    unsigned long long total = 0;
    const unsigned long long start = block_exclusive_scan_u64(sum, s.warp_sums, total);  // syncs s.walker
    const double scaled = uniform * static_cast<double>(total);
    // The host's `u < cumulative` as `target < prefix` on integers: prefix > scaled <=> prefix > floor(scaled).
    const unsigned long long target =
        scaled < static_cast<double>(total) ? static_cast<unsigned long long>(scaled) : total;
    if (sum != 0 && start <= target && target < start + sum) {
        s.walker = static_cast<int>(threadIdx.x);  // exactly one chunk holds the target
        s.walk_start = start;
        s.walk_ties = tie_start;
    }
    if (last >= 0) {
        atomicMax(&s.last_kept, last);
    }
    __syncthreads();
    if (s.walker == INT_MAX) {  // rounding left the target at the total: the last kept token, as on the host
        if (threadIdx.x == 0) {
            *token = s.last_kept;
        }
        return;
    }
    if (threadIdx.x < 32) {
        const int walk_begin = min(vocab, s.walker * chunk);
        walk_chunk(x, walk_begin, min(vocab, walk_begin + chunk), r, kept, s.walk_start, s.walk_ties, target, token);
    }
}

// The draw over the compacted candidates: the boundary ties' cut as the tie_keep-th smallest tied id, the kept
// total, then the target's token as a radix search over the ids (ascending) with exact integer sums.
__device__ void draw_from_list(const ListSource& list, const FilterRow& r, const KeptSet& kept, double uniform,
                               int32_t* token, FilterShared& s) {
    uint32_t last_tie = UINT_MAX;  // ties at tie_key with ids <= last_tie stay
    if (kept.tie_keep >= 0) {
        const auto need = static_cast<unsigned long long>(kept.tie_keep);
        last_tie = digit_search(
                       list, [&](float v, int) { return logit_key(v) == kept.tie_key; },
                       [](float, int id) { return static_cast<uint32_t>(id); }, false, false, 0ull,
                       [&](unsigned long long c) { return c >= need; }, r, s)
                       .key;
    }
    auto is_kept = [&](float v, int id) {
        const uint32_t key = logit_key(v);
        return key >= kept.keep_key && (key != kept.tie_key || static_cast<uint32_t>(id) <= last_tie);
    };
    unsigned long long sum = 0;
    int last = -1;
    list.for_each([&](float v, int id) {
        if (is_kept(v, id)) {
            const unsigned long long q = quantized_weight(v, r);
            sum += q;
            last = q != 0 ? max(last, id) : last;
        }
    });
    if (threadIdx.x == 0) {
        s.last_kept = 0;
    }
    unsigned long long total = 0;
    (void)block_exclusive_scan_u64(sum, s.warp_sums, total);  // syncs s.last_kept
    if (last >= 0) {
        atomicMax(&s.last_kept, last);
    }
    __syncthreads();
    const double scaled = uniform * static_cast<double>(total);
    const unsigned long long target =
        scaled < static_cast<double>(total) ? static_cast<unsigned long long>(scaled) : total;
    if (target >= total) {  // rounding left the target at the total: the last kept token, as on the host
        if (threadIdx.x == 0) {
            *token = s.last_kept;
        }
        return;
    }
    const Boundary hit = digit_search(
        list, is_kept, [](float, int id) { return static_cast<uint32_t>(id); }, false, true, 0ull,
        [&](unsigned long long c) { return c > target; }, r, s);
    if (threadIdx.x == 0 && hit.found) {
        *token = static_cast<int32_t>(hit.key);
    }
}

// Where the passes read the candidates: the row, or once compacted, the shared-memory list.
struct Candidates {
    RowSource row;
    ListSource list;
    bool compact;
};

// top-k among the candidates with keys >= lo_key: the k-th largest key (keys >= it stay; lo_key when fewer than
// top_k candidates: all stay, as the host's k-th probability is then 0). Compacts when few can stay.
__device__ uint32_t top_k_key(uint32_t lo_key, int top_k, const FilterRow& r, Candidates& c, FilterShared& s) {
    const auto k = static_cast<unsigned long long>(top_k);
    const auto reaches = [&](unsigned long long n) { return n >= k; };
    histogram_pass(
        c.row, false, false, r, [&](float v, int) { return logit_key(v) >= lo_key; },
        [&](float v, int) { return coarse_bucket(v, r); }, s);
    find_crossing(false, 0ull, reaches, s);
    const uint32_t bucket = s.chosen;
    const unsigned long long above = s.above;
    const unsigned long long through = s.above + s.at;
    __syncthreads();  // s.chosen / s.above / s.at are written again below
    if (bucket == kFilterBins) {
        return lo_key;
    }
    Boundary b{};
    if (through <= static_cast<unsigned long long>(kCompactCap)) {
        c.list = gather(c.row, lo_key, bucket, r, s);
        c.compact = true;
        b = logit_search(c.list, lo_key, bucket, above, false, reaches, r, s);
    } else {
        b = logit_search(c.row, lo_key, bucket, above, false, reaches, r, s);
    }
    return b.found ? b.key : lo_key;
}

// top-p over the kept candidates (keys >= kept.keep_key): narrows `kept` to the host's nucleus, the boundary logit's
// ties cut by id. Compacts when the nucleus's coarse buckets hold few candidates.
__device__ void top_p_cut(double top_p, const FilterRow& r, Candidates& c, KeptSet& kept, FilterShared& s) {
    const uint32_t lo = kept.keep_key;
    auto select = [&](float v, int) { return logit_key(v) >= lo; };
    auto bucket_of = [&](float v, int) { return coarse_bucket(v, r); };
    if (c.compact) {
        histogram_pass(c.list, true, true, r, select, bucket_of, s);
    } else {
        histogram_pass(c.row, true, true, r, select, bucket_of, s);
    }
    const double target = fmax(top_p * static_cast<double>(hist_sum(false, kFilterBins, s)), 1.0);
    const auto reaches = [&](unsigned long long w) { return static_cast<double>(w) >= target; };
    find_crossing(false, 0ull, reaches, s);
    const uint32_t bucket = s.chosen;
    const unsigned long long above = s.above;
    if (bucket == kFilterBins) {
        return;  // never: the candidates' total reaches top_p * total
    }
    if (!c.compact && hist_sum(true, bucket + 1, s) <= static_cast<unsigned long long>(kCompactCap)) {
        c.list = gather(c.row, lo, bucket, r, s);
        c.compact = true;
    }
    const Boundary p = c.compact ? logit_search(c.list, lo, bucket, above, true, reaches, r, s)
                                 : logit_search(c.row, lo, bucket, above, true, reaches, r, s);
    if (!p.found) {
        return;
    }
    if (threadIdx.x == 0) {
        const unsigned long long q = quantized_weight(key_logit(p.key), r);  // > 0: it reached the target
        s.tie_keep = top_p_ties_kept(p.above, q, p.at / q, target);
    }
    __syncthreads();
    kept = KeptSet{p.key, p.key, s.tie_keep};
}

__device__ void sample_filtered_row(const float* x, int vocab, float max_logit, const SampleFilter& f, double uniform,
                                    int32_t* token, FilterShared& s) {
    if (logit_key(max_logit) < kFirstFiniteKey) {
        if (threadIdx.x == 0) {
            *token = 0;  // every logit masked: no distribution (the host's is NaN)
        }
        return;
    }
    FilterRow r;
    r.max_logit = max_logit;
    r.temperature = f.temperature;
    r.bucket_scale = static_cast<float>(static_cast<double>(kBucketsPerUnit) / f.temperature);
    const int bit_width = 32 - __clz(vocab);
    r.scale = ldexp(1.0, min(52, 63 - bit_width));
    Candidates c{RowSource{x, vocab}, ListSource{nullptr, nullptr, 0}, false};
    KeptSet kept{f.min_p > 0.0 ? min_p_key(f.min_p, r, s) : kFirstFiniteKey, 0u, -1};
    if (f.top_k > 0 && f.top_k < vocab) {
        kept.keep_key = top_k_key(kept.keep_key, f.top_k, r, c, s);
    }
    if (f.top_p < 1.0) {
        top_p_cut(f.top_p, r, c, kept, s);
    }
    if (c.compact) {
        draw_from_list(c.list, r, kept, uniform, token, s);
    } else {
        draw_from_row(x, vocab, r, kept, uniform, token, s);
    }
}

// The row's largest logit (NaN counts as -inf), known to every thread.
__device__ float filtered_row_max(const RowSource& row, FilterShared& s) {
    float most = neg_inf_float();
    row.for_each([&](float v, int) { most = fmaxf(most, v); });
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        most = fmaxf(most, __shfl_xor_sync(0xffffffffu, most, offset));
    }
    if (threadIdx.x % 32 == 0) {
        s.warp_max[threadIdx.x / 32] = most;
    }
    __syncthreads();
    for (int w = 0; w < kFilterWarps; ++w) {
        most = fmaxf(most, s.warp_max[w]);
    }
    return most;
}

// grid: [rows], block: kFilterThreads. Only Filtered rows with an active filter; the others are sample_rows_kernel's.
__global__ void __launch_bounds__(kFilterThreads, 1)
    sample_filtered_rows_kernel(const __grid_constant__ SampleRowsParams p) {
    __shared__ FilterShared shared;
    const int64_t row = blockIdx.x;
    const int vocab = static_cast<int>(p.vocab);
    if (static_cast<SampleMode>(p.mode[row]) != SampleMode::Filtered || p.filter == nullptr) {
        return;
    }
    const SampleFilter filter = p.filter[row];
    if (!filter_active(filter, vocab)) {
        return;
    }
    const float* x = p.logits + row * p.stride;  // [vocab]
    const float max_logit = filtered_row_max(RowSource{x, vocab}, shared);
    sample_filtered_row(x, vocab, max_logit, filter, p.uniform[row], p.tokens + row, shared);
}

}  // namespace k2::cuda::kernels
