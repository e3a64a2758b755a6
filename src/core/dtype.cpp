#include "core/dtype.h"

#include <array>
#include <cmath>

namespace k2 {

namespace {
struct DTypeInfo {
    DType dtype;
    std::string_view name;
    size_t size;
};
constexpr std::array<DTypeInfo, 15> kDTypes{{
    {DType::BOOL, "BOOL", 1},   {DType::U8, "U8", 1},     {DType::I8, "I8", 1},
    {DType::F8_E5M2, "F8_E5M2", 1}, {DType::F8_E4M3, "F8_E4M3", 1}, {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},     {DType::F16, "F16", 2},   {DType::BF16, "BF16", 2},
    {DType::I32, "I32", 4},     {DType::U32, "U32", 4},   {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},     {DType::I64, "I64", 8},   {DType::U64, "U64", 8},
}};

std::array<float, 256> make_e4m3_table() {
    std::array<float, 256> table{};
    for (int bits = 0; bits < 256; ++bits) {
        const int sign = bits >> 7;
        const int exponent = (bits >> 3) & 0xf;
        const int mantissa = bits & 0x7;
        float value;
        if (exponent == 0xf && mantissa == 0x7) {
            value = std::nanf("");
        } else if (exponent == 0) {
            value = std::ldexp(static_cast<float>(mantissa) / 8.0f, -6);
        } else {
            value = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
        }
        table[bits] = sign ? -value : value;
    }
    return table;
}
const std::array<float, 256> kE4M3Table = make_e4m3_table();
}  // namespace

size_t dtype_size(DType dtype) { return kDTypes[static_cast<size_t>(dtype)].size; }

std::string_view dtype_name(DType dtype) { return kDTypes[static_cast<size_t>(dtype)].name; }

std::optional<DType> dtype_from_name(std::string_view name) {
    for (const DTypeInfo& info : kDTypes) {
        if (info.name == name) {
            return info.dtype;
        }
    }
    return std::nullopt;
}

float f16_to_float(uint16_t bits) {
    const int sign = bits >> 15;
    const int exponent = (bits >> 10) & 0x1f;
    const int mantissa = bits & 0x3ff;
    float value;
    if (exponent == 0) {
        value = std::ldexp(static_cast<float>(mantissa), -24);
    } else if (exponent == 0x1f) {
        value = mantissa ? std::nanf("") : INFINITY;
    } else {
        value = std::ldexp(1.0f + static_cast<float>(mantissa) / 1024.0f, exponent - 15);
    }
    return sign ? -value : value;
}

float fp8_e4m3_to_float(uint8_t bits) { return kE4M3Table[bits]; }

uint8_t float_to_fp8_e4m3(float f) {
    if (std::isnan(f)) {
        return 0x7f;
    }
    const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
    const float a = std::fmin(std::fabs(f), kFp8E4M3Max);
    // Search the 127 non-negative finite codes (monotonic) for the nearest; ties go to the even code.
    int lo = 0;
    int hi = 0x7e;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (kE4M3Table[mid] <= a) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    int code = lo;
    if (code < 0x7e) {
        const float below = kE4M3Table[code];
        const float above = kE4M3Table[code + 1];
        const float d_below = a - below;
        const float d_above = above - a;
        if (d_above < d_below || (d_above == d_below && (code & 1))) {
            code += 1;
        }
    }
    return static_cast<uint8_t>(sign | code);
}

float fp8_e5m2_to_float(uint8_t bits) { return f16_to_float(static_cast<uint16_t>(bits) << 8); }

}  // namespace k2
