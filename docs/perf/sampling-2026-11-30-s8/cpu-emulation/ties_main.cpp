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
    for (int t = 0; t < cuda::kernels::kFilterThreads; ++t)
        threads.emplace_back([&, t] {
            threadIdx.x = t;
            for (int64_t row = 0; row < p.rows; ++row) {
                blockIdx.x = row;
                cuda::kernels::sample_filtered_rows_kernel(p);
                block.arrive_and_wait();
            }
        });
    for (auto& th : threads)
        th.join();
}
int main() {
    const int V = 1000;
    std::mt19937 rng(41);
    std::normal_distribution<float> nd(0.f, 0.5f);
    std::vector<float> stepped(V);
    for (auto& v : stepped)
        v = -2.0f - std::fabs(nd(rng));
    std::fill(stepped.begin() + 900, stepped.begin() + 905, 4.0f);
    std::fill(stepped.begin() + 10, stepped.begin() + 30, 3.0f);
    std::vector<float> flat(V, 0.25f);
    std::vector<float> logits;
    std::vector<int32_t> mode;
    std::vector<double> uni;
    std::vector<cuda::SampleFilter> filt;
    std::vector<std::pair<int, int>> allowed;
    std::vector<SamplingParams> sps;
    std::vector<std::vector<float>*> src;
    for (int j = 0; j < 16; ++j) {
        double u = (j + 0.5) / 16.0;
        auto add = [&](std::vector<float>& l, int k, double p, int a, int b) {
            logits.insert(logits.end(), l.begin(), l.end());
            mode.push_back(3);
            uni.push_back(u);
            filt.push_back({1.0, p, 0.0, k, 0});
            allowed.emplace_back(a, b);
            SamplingParams sp;
            sp.temperature = 1.0;
            sp.top_k = k;
            sp.top_p = p;
            sps.push_back(sp);
            src.push_back(&l);
        };
        add(stepped, 10, 1.0, 10, 904);
        add(stepped, 5, 1.0, 900, 904);
        int id = (int)(u * 106.0);
        add(flat, 0, 0.1055, id, id);
    }
    std::vector<int32_t> tokens(mode.size(), -1);
    cuda::SampleRowsParams p;
    p.logits = logits.data();
    p.mode = mode.data();
    p.uniform = uni.data();
    p.filter = filt.data();
    p.tokens = tokens.data();
    p.rows = mode.size();
    p.vocab = V;
    p.stride = V;
    run_kernel(p);
    int bad = 0;
    for (size_t r = 0; r < mode.size(); ++r) {
        int host = draw_sampled(*src[r], sps[r], uni[r]);
        bool ok = tokens[r] == host && tokens[r] >= allowed[r].first && tokens[r] <= allowed[r].second &&
                  (r % 3 != 0 || tokens[r] < 30 || tokens[r] >= 900);
        if (!ok) {
            ++bad;
            std::printf("row %zu: emu %d host %d allowed [%d,%d]\n", r, tokens[r], host, allowed[r].first,
                        allowed[r].second);
        }
    }
    std::printf("ties: %d bad of %zu\n", bad, mode.size());
}
