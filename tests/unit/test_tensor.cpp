#include <gtest/gtest.h>

#include "core/tensor.h"

namespace k2 {
namespace {

TEST(Tensor, ZerosReshapeSlice) {
    Tensor t = Tensor::zeros(DType::F32, {4, 3});
    EXPECT_EQ(t.numel(), 12);
    EXPECT_EQ(t.nbytes(), 48u);
    for (int i = 0; i < 12; ++i) {
        t.data_as<float>()[i] = static_cast<float>(i);
    }
    const Tensor rows = t.slice_rows(1, 3);
    EXPECT_EQ(rows.shape_string(), "[2, 3]");
    EXPECT_EQ(rows.data_as<float>()[0], 3.0f);
    EXPECT_EQ(t.reshape({3, 4}).dim(-1), 4);
    EXPECT_THROW((void)t.reshape({5, 3}), Error);
    EXPECT_THROW((void)t.slice_rows(2, 5), Error);
}

TEST(Error, CarriesFileAndLine) {
    try {
        K2_CHECK(1 + 1 == 3, "arithmetic is {}", "broken");
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_EQ(e.message(), "arithmetic is broken");
        EXPECT_NE(std::string(e.what()).find("tests/unit/test_tensor.cpp:"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace k2
