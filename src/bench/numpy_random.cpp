#include "bench/numpy_random.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace k2::bench {

namespace {

// SeedSequence's hash constants (numpy/random/bit_generator.pyx).
constexpr uint32_t kInitA = 0x43b0d7e5;
constexpr uint32_t kMultA = 0x931e8875;
constexpr uint32_t kInitB = 0x8b51f9dd;
constexpr uint32_t kMultB = 0x58f38ded;
constexpr uint32_t kMixMultL = 0xca01f9dd;
constexpr uint32_t kMixMultR = 0x4973f715;
constexpr uint32_t kXShift = 16;
constexpr size_t kPoolSize = 4;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
    value ^= hash_const;
    hash_const *= kMultA;
    value *= hash_const;
    value ^= value >> kXShift;
    return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t result = kMixMultL * x - kMixMultR * y;
    result ^= result >> kXShift;
    return result;
}

// SeedSequence.mix_entropy over the seed's 32-bit words (no spawn key).
std::vector<uint32_t> entropy_pool(uint64_t seed) {
    std::vector<uint32_t> entropy;
    do {
        entropy.push_back(static_cast<uint32_t>(seed & 0xffffffffu));
        seed >>= 32;
    } while (seed > 0);
    std::vector<uint32_t> pool(kPoolSize);
    uint32_t hash_const = kInitA;
    for (size_t i = 0; i < kPoolSize; ++i) {
        pool[i] = hashmix(i < entropy.size() ? entropy[i] : 0u, hash_const);
    }
    for (size_t src = 0; src < kPoolSize; ++src) {
        for (size_t dst = 0; dst < kPoolSize; ++dst) {
            if (src != dst) {
                pool[dst] = mix(pool[dst], hashmix(pool[src], hash_const));
            }
        }
    }
    for (size_t src = kPoolSize; src < entropy.size(); ++src) {
        for (size_t dst = 0; dst < kPoolSize; ++dst) {
            pool[dst] = mix(pool[dst], hashmix(entropy[src], hash_const));
        }
    }
    return pool;
}

constexpr NumpyUint128 kPcgMultiplier =
    (static_cast<NumpyUint128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;

}  // namespace

std::vector<uint32_t> seed_sequence_state(uint64_t seed, int num_words) {
    const std::vector<uint32_t> pool = entropy_pool(seed);
    std::vector<uint32_t> state(static_cast<size_t>(num_words));
    uint32_t hash_const = kInitB;
    for (size_t i = 0; i < state.size(); ++i) {
        uint32_t value = pool[i % kPoolSize];
        value ^= hash_const;
        hash_const *= kMultB;
        value *= hash_const;
        value ^= value >> kXShift;
        state[i] = value;
    }
    return state;
}

NumpyGenerator::NumpyGenerator(uint64_t seed) {
    // generate_state(4, np.uint64): pairs of 32-bit words read little-endian; words 0-1 are the high half of the
    // initial state, 2-3 its low half, 4-7 the stream (pcg64_set_seed).
    const std::vector<uint32_t> words = seed_sequence_state(seed, 8);
    const auto word64 = [&words](size_t i) { return (static_cast<uint64_t>(words[2 * i + 1]) << 32) | words[2 * i]; };
    const NumpyUint128 init_state = (static_cast<NumpyUint128>(word64(0)) << 64) | word64(1);
    const NumpyUint128 init_seq = (static_cast<NumpyUint128>(word64(2)) << 64) | word64(3);
    m_state = 0;
    m_increment = (init_seq << 1u) | 1u;
    step();
    m_state += init_state;
    step();
}

void NumpyGenerator::step() {
    m_state = m_state * kPcgMultiplier + m_increment;
}

uint64_t NumpyGenerator::next_uint64() {
    step();
    // XSL-RR: xor the halves, rotate right by the top 6 bits.
    const auto value = static_cast<uint64_t>(m_state >> 64) ^ static_cast<uint64_t>(m_state);
    const auto rot = static_cast<unsigned>(m_state >> 122);
    return (value >> rot) | (value << ((64u - rot) & 63u));
}

uint32_t NumpyGenerator::next_uint32() {
    if (m_has_uint32) {
        m_has_uint32 = false;
        return m_uinteger;
    }
    const uint64_t next = next_uint64();
    m_has_uint32 = true;
    m_uinteger = static_cast<uint32_t>(next >> 32);
    return static_cast<uint32_t>(next & 0xffffffffu);
}

int64_t NumpyGenerator::integers(int64_t low, int64_t high) {
    // random_bounded_uint64_fill with use_masked = false over the closed range [low, high - 1].
    const uint64_t rng = static_cast<uint64_t>(high - 1) - static_cast<uint64_t>(low);
    const auto off = static_cast<uint64_t>(low);
    K2_CHECK(high > low, "integers: empty range [{}, {})", low, high);
    if (rng == 0) {
        return low;  // a single value draws nothing, as in NumPy
    }
    if (rng == 0xffffffffULL) {
        return static_cast<int64_t>(off + next_uint32());
    }
    if (rng < 0xffffffffULL) {
        // buffered_bounded_lemire_uint32
        const auto rng_excl = static_cast<uint32_t>(rng + 1);
        uint64_t m = static_cast<uint64_t>(next_uint32()) * rng_excl;
        auto leftover = static_cast<uint32_t>(m);
        if (leftover < rng_excl) {
            const uint32_t threshold = (std::numeric_limits<uint32_t>::max() - static_cast<uint32_t>(rng)) % rng_excl;
            while (leftover < threshold) {
                m = static_cast<uint64_t>(next_uint32()) * rng_excl;
                leftover = static_cast<uint32_t>(m);
            }
        }
        return static_cast<int64_t>(off + (m >> 32));
    }
    if (rng == std::numeric_limits<uint64_t>::max()) {
        return static_cast<int64_t>(off + next_uint64());
    }
    // bounded_lemire_uint64
    const uint64_t rng_excl = rng + 1;
    NumpyUint128 m = static_cast<NumpyUint128>(next_uint64()) * rng_excl;
    auto leftover = static_cast<uint64_t>(m);
    if (leftover < rng_excl) {
        const uint64_t threshold = (std::numeric_limits<uint64_t>::max() - rng) % rng_excl;
        while (leftover < threshold) {
            m = static_cast<NumpyUint128>(next_uint64()) * rng_excl;
            leftover = static_cast<uint64_t>(m);
        }
    }
    return static_cast<int64_t>(off + static_cast<uint64_t>(m >> 64));
}

NumpyRandomState::NumpyRandomState(uint32_t seed) : m_mt(seed) {}

double NumpyRandomState::random_double() {
    const uint32_t a = m_mt() >> 5;
    const uint32_t b = m_mt() >> 6;
    return (a * 67108864.0 + b) / 9007199254740992.0;
}

double NumpyRandomState::standard_exponential() {
    return -std::log(1.0 - random_double());
}

double NumpyRandomState::gauss() {
    if (m_has_gauss) {
        m_has_gauss = false;
        return m_gauss;
    }
    double x1 = 0.0, x2 = 0.0, r2 = 0.0;
    do {
        x1 = 2.0 * random_double() - 1.0;
        x2 = 2.0 * random_double() - 1.0;
        r2 = x1 * x1 + x2 * x2;
    } while (r2 >= 1.0 || r2 == 0.0);
    // Polar Box-Muller: two normals per accepted pair, the first kept for the next call.
    const double f = std::sqrt(-2.0 * std::log(r2) / r2);
    m_gauss = f * x1;
    m_has_gauss = true;
    return f * x2;
}

double NumpyRandomState::standard_gamma(double shape) {
    if (shape == 1.0) {
        return standard_exponential();
    }
    if (shape == 0.0) {
        return 0.0;
    }
    if (shape < 1.0) {
        for (;;) {
            const double u = random_double();
            const double v = standard_exponential();
            if (u <= 1.0 - shape) {
                const double x = std::pow(u, 1.0 / shape);
                if (x <= v)
                    return x;
            } else {
                const double y = -std::log((1.0 - u) / shape);
                const double x = std::pow(1.0 - shape + shape * y, 1.0 / shape);
                if (x <= v + y)
                    return x;
            }
        }
    }
    // Marsaglia and Tsang.
    const double b = shape - 1.0 / 3.0;
    const double c = 1.0 / std::sqrt(9.0 * b);
    for (;;) {
        double x = 0.0, v = 0.0;
        do {
            x = gauss();
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        const double u = random_double();
        if (u < 1.0 - 0.0331 * (x * x) * (x * x))
            return b * v;
        if (std::log(u) < 0.5 * x * x + b * (1.0 - v + std::log(v)))
            return b * v;
    }
}

double NumpyRandomState::gamma(double shape, double scale) {
    return scale * standard_gamma(shape);
}

}  // namespace k2::bench
