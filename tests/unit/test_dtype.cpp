// dtype conversions against the e4m3fn / bf16 definitions (OCP FP8 spec, IEEE-754 truncation).
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"

namespace k2 {
namespace {

TEST(Fp8E4M3, DecodesSpecValues) {
    EXPECT_EQ(fp8_e4m3_to_float(0x00), 0.0f);
    EXPECT_EQ(fp8_e4m3_to_float(0x38), 1.0f);          // exponent 7 = bias
    EXPECT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);        // largest finite
    EXPECT_EQ(fp8_e4m3_to_float(0xfe), -448.0f);
    EXPECT_EQ(fp8_e4m3_to_float(0x08), std::ldexp(1.0f, -6));  // smallest normal
    EXPECT_EQ(fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
    EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7f)));
    EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0xff)));
}

TEST(Fp8E4M3, EncodeRoundTripsEveryFiniteCode) {
    for (int bits = 0; bits < 256; ++bits) {
        const float v = fp8_e4m3_to_float(static_cast<uint8_t>(bits));
        if (std::isnan(v) || bits == 0x80) {
            continue;  // NaN, and -0 which encodes as +0's sign-preserving twin below
        }
        EXPECT_EQ(float_to_fp8_e4m3(v), bits) << "code " << bits;
    }
}

TEST(Fp8E4M3, EncodeSaturatesAndRoundsToNearestEven) {
    EXPECT_EQ(float_to_fp8_e4m3(1000.0f), 0x7e);
    EXPECT_EQ(float_to_fp8_e4m3(-1000.0f), 0xfe);
    EXPECT_EQ(float_to_fp8_e4m3(1.0625f), 0x38);  // halfway between 1.0 (even) and 1.125
    EXPECT_EQ(float_to_fp8_e4m3(1.1875f), 0x3a);  // halfway between 1.125 and 1.25 (even)
}

TEST(Bf16, RoundTripAndRounding) {
    EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f)), 1.0f);
    EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
    // 1 + 2^-8 is halfway between 1.0 and 1 + 2^-7: rounds to even (1.0).
    EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
    EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
    EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
}

TEST(DType, NamesRoundTrip) {
    for (const char* name : {"F8_E4M3", "BF16", "F16", "F32", "I64", "BOOL", "U8"}) {
        const auto dtype = dtype_from_name(name);
        ASSERT_TRUE(dtype.has_value()) << name;
        EXPECT_EQ(dtype_name(*dtype), name);
    }
    EXPECT_FALSE(dtype_from_name("F8_E4M3FN").has_value());
    EXPECT_EQ(dtype_size(DType::BF16), 2u);
    EXPECT_EQ(dtype_size(DType::F8_E4M3), 1u);
}

}  // namespace
}  // namespace k2
