// NumPy's random number generators, bit for bit, so `k2 bench serve --seed S` draws what `vllm bench serve
// --seed S` draws (reference/vllm.md §4.2-4.3): the random dataset uses numpy.random.default_rng(seed) (PCG64
// seeded through SeedSequence, Generator.integers) and the arrival process uses the legacy global state seeded
// by np.random.seed(seed) (MT19937, RandomState.gamma). Ported from numpy/random/{bit_generator.pyx,
// _pcg64.pyx, src/pcg64, src/distributions/distributions.c, src/legacy/legacy-distributions.c,
// src/mt19937}; checked against NumPy's own numbers in tests/fixtures/numpy_random/.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace k2::bench {

__extension__ typedef unsigned __int128 NumpyUint128;  // PCG64's state; __extension__: GCC/clang's type

// numpy.random.SeedSequence(entropy).generate_state(num_words, np.uint32): the pool-mixing hash NumPy uses to
// turn an integer seed into generator state. entropy = the seed split into 32-bit words, least significant first.
std::vector<uint32_t> seed_sequence_state(uint64_t seed, int num_words);

// numpy.random.default_rng(seed): a Generator over PCG64 (128-bit LCG, XSL-RR output).
class NumpyGenerator {
public:
    explicit NumpyGenerator(uint64_t seed);

    uint64_t next_uint64();
    // PCG64's next32: the low half of a 64-bit draw, the high half kept for the next call.
    uint32_t next_uint32();
    // Generator.integers(low, high) (high exclusive, int64 dtype): Lemire's bounded method on 32-bit draws when
    // high - 1 - low fits in 32 bits, on 64-bit draws otherwise.
    int64_t integers(int64_t low, int64_t high);

private:
    NumpyUint128 m_state = 0;
    NumpyUint128 m_increment = 0;
    bool m_has_uint32 = false;
    uint32_t m_uinteger = 0;

    void step();
};

// numpy.random.seed(seed) + numpy.random.gamma(shape, scale): the legacy RandomState over MT19937 with its
// polar-method Gaussian cache and Marsaglia-Tsang gamma (exponential for shape 1).
class NumpyRandomState {
public:
    // NumPy refuses seeds above 2**32 - 1 here; the caller checks (the message names the flag).
    explicit NumpyRandomState(uint32_t seed);

    double random_double();  // random_sample(): 53 bits from two 32-bit draws
    double standard_exponential();
    double gauss();
    double gamma(double shape, double scale);

private:
    std::mt19937 m_mt;  // the standard's seeding and tempering are MT19937's reference ones, as NumPy's
    bool m_has_gauss = false;
    double m_gauss = 0.0;

    double standard_gamma(double shape);
};

}  // namespace k2::bench
