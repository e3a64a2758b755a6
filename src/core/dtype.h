// Element types of checkpoint tensors and their conversions to float.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace k2 {

enum class DType : uint8_t { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);                     // the safetensors spelling, e.g. "F8_E4M3"
std::optional<DType> dtype_from_name(std::string_view name);  // nullopt for unknown strings

// bf16 is the upper half of an IEEE float32.
inline float bf16_to_float(uint16_t bits) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return static_cast<uint16_t>((u >> 16) | 0x40u);
    }
    const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>((u + rounding) >> 16);
}

float f16_to_float(uint16_t bits);

// float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; S.1111.111 is NaN; no infinities; max 448.
float fp8_e4m3_to_float(uint8_t bits);
// Round to nearest even, saturating to +-448 (the behaviour of a clamped cast, as vLLM/DeepGEMM quantize).
uint8_t float_to_fp8_e4m3(float f);
float fp8_e5m2_to_float(uint8_t bits);

inline constexpr float kFp8E4M3Max = 448.0f;

}  // namespace k2
