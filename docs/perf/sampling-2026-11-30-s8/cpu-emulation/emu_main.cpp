// Runs kernels/sampling_filter.cuh's kernel on CPU threads (512 per block) against the host sampler.
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "backend/cuda/kernels/sampling_filter.cuh"
#include "engine/sampler.h"

using namespace k2;

static void run_kernel(const cuda::SampleRowsParams& p) {
    std::barrier<> block(cuda::kernels::kFilterThreads);
    std::vector<WarpEmu> warps(cuda::kernels::kFilterThreads / 32);
    g_block_barrier = &block;
    g_warps = warps.data();
    std::vector<std::thread> threads;
    for (int t = 0; t < cuda::kernels::kFilterThreads; ++t) {
        threads.emplace_back([&, t] {
            threadIdx.x = static_cast<unsigned>(t);
            for (int64_t row = 0; row < p.rows; ++row) {
                blockIdx.x = static_cast<unsigned>(row);
                cuda::kernels::sample_filtered_rows_kernel(p);
                block.arrive_and_wait();
            }
        });
    }
    for (auto& th : threads)
        th.join();
}

struct Row {
    std::vector<float> logits;
    double T;
    int top_k;
    double top_p;
    double min_p;
    double u;
};

int main(int argc, char** argv) {
    const int64_t only_vocab = argc > 1 ? std::atoll(argv[1]) : 0;
    const bool flat = argc > 2;  // flat rows: big nuclei and top-k sets (the row paths), many ties
    std::mt19937 rng(7);
    std::mt19937_64 urng(8);
    int total = 0, bad = 0;
    for (int64_t vocab : {int64_t{1}, int64_t{3}, int64_t{1000}, int64_t{5000}, int64_t{20000}, int64_t{163840}}) {
        if (only_vocab != 0 && vocab != only_vocab)
            continue;
        const int v = static_cast<int>(vocab);
        std::vector<Row> rows;
        int idx = 0;
        for (int top_k : {0, 1, 2, 50, v - 1, v, v + 5})
            for (double top_p : {0.1, 0.9, 0.95, 1.0})
                for (double min_p : {0.0, 0.05, 0.5}) {
                    ++idx;
                    if (vocab == 163840 && idx % 7 != 0)
                        continue;
                    if (flat && (top_k == 1 || top_k == 2 || top_k == 50))
                        continue;
                    Row r;
                    const int variant = idx % 4;
                    std::normal_distribution<float> nd(0.0f, flat ? 0.5f : (variant == 3 ? 6.0f : 2.0f));
                    r.logits.resize(static_cast<size_t>(vocab));
                    for (auto& x : r.logits)
                        x = nd(rng);
                    if (variant == 1 || flat)
                        for (auto& x : r.logits)
                            x = std::round(x * 3.0f) / 2.0f;
                    if (variant == 2 && vocab > 1) {
                        std::bernoulli_distribution m(0.3);
                        for (auto& x : r.logits)
                            if (m(rng))
                                x = -INFINITY;
                        r.logits[0] = -INFINITY;
                        r.logits[static_cast<size_t>(vocab) / 2] = 1.0f;
                    }
                    r.T = std::array{0.3, 0.6, 1.0, 1.5}[static_cast<size_t>(idx / 4 % 4)];
                    r.top_k = top_k;
                    r.top_p = top_p;
                    r.min_p = min_p;
                    rows.push_back(r);
                }
        for (int set = 0; set < 2; ++set) {
            std::vector<float> logits;
            std::vector<int32_t> mode;
            std::vector<double> uni;
            std::vector<cuda::SampleFilter> filt;
            for (size_t i = 0; i < rows.size(); ++i) {
                rows[i].u = std::uniform_real_distribution<double>(0, 1)(urng);
                if (set == 0 && i % 7 == 0)
                    rows[i].u = 0.0;
                if (set == 0 && i % 7 == 1)
                    rows[i].u = std::nextafter(1.0, 0.0);
                logits.insert(logits.end(), rows[i].logits.begin(), rows[i].logits.end());
                mode.push_back(3);
                uni.push_back(rows[i].u);
                filt.push_back({rows[i].T, rows[i].top_p, rows[i].min_p, rows[i].top_k, 0});
            }
            std::vector<int32_t> tokens(rows.size(), -1);
            cuda::SampleRowsParams p;
            p.logits = logits.data();
            p.mode = mode.data();
            p.uniform = uni.data();
            p.filter = filt.data();
            p.tokens = tokens.data();
            p.rows = static_cast<int64_t>(rows.size());
            p.vocab = vocab;
            p.stride = vocab;
            run_kernel(p);
            for (size_t i = 0; i < rows.size(); ++i) {
                const Row& r = rows[i];
                const bool active = (r.top_k > 0 && r.top_k < v) || r.top_p < 1.0 || r.min_p > 0.0;
                if (!active) {
                    if (tokens[i] != -1) {
                        std::printf("inactive row written\n");
                        ++bad;
                    }
                    continue;
                }
                SamplingParams sp;
                sp.temperature = r.T;
                sp.top_k = r.top_k;
                sp.top_p = r.top_p;
                sp.min_p = r.min_p;
                const int32_t host = draw_sampled(r.logits, sp, r.u);
                ++total;
                if (host != tokens[i]) {
                    ++bad;
                    {
                        SamplingParams q = sp;
                        q.top_p = 1.0;
                        auto pre = sampling_distribution(r.logits, q);
                        auto post = sampling_distribution(r.logits, sp);
                        float m = *std::max_element(r.logits.begin(), r.logits.end());
                        int kept = 0;
                        double mass = 0;
                        float minv = 1e30f;
                        int last = -1;
                        for (size_t j = 0; j < post.size(); ++j)
                            if (post[j] > 0) {
                                ++kept;
                                minv = std::min(minv, r.logits[j]);
                            }
                        for (size_t j = 0; j < post.size(); ++j)
                            if (post[j] > 0 && r.logits[j] == minv)
                                last = (int)j;
                        int ties_total = 0;
                        for (size_t j = 0; j < pre.size(); ++j)
                            if (pre[j] > 0 && r.logits[j] == minv)
                                ++ties_total;
                        for (size_t j = 0; j < pre.size(); ++j)
                            if (pre[j] > 0 && r.logits[j] > minv)
                                mass += pre[j];
                        std::printf(
                            "  host: kept %d, boundary logit %g (max %g), last kept tie id %d of %d ties, mass above "
                            "%.17g\n",
                            kept, minv, m, last, ties_total, mass);
                    }
                    std::printf("MISMATCH vocab %ld row %zu T %g k %d p %g minp %g u %.17g: emu %d host %d\n",
                                (long)vocab, i, r.T, r.top_k, r.top_p, r.min_p, r.u, tokens[i], host);
                }
            }
        }
        std::printf("vocab %ld done: %d checked, %d bad so far\n", (long)vocab, total, bad);
        std::fflush(stdout);
    }
    return bad == 0 ? 0 : 1;
}
