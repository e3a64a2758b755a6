// Judging a temperature draw made elsewhere (the GPU sampler) against the host sampler's answer for the same logits
// and uniform (engine/sampler.h: draw_with_temperature). The two sum the same per-token weights (core/fast_exp.h) in
// different groupings, so where the target u * total lies within float rounding of a boundary between two tokens'
// CDF intervals they may pick neighbours; anywhere else they must agree.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

#include "core/fast_exp.h"

namespace k2::test {

// The rounding the grouped float sums may differ by, as a fraction of the row's total weight.
inline constexpr double kDrawBoundaryTolerance = 1e-5;

// How far (as a fraction of the total weight) the target lies from the nearer end of `token`'s CDF interval, the
// weights summed one by one in double.
inline double draw_boundary_distance(std::span<const float> logits, float inv_temperature, double uniform,
                                     int32_t token) {
    float max_logit = -std::numeric_limits<float>::infinity();
    for (const float v : logits) {
        max_logit = v > max_logit ? v : max_logit;
    }
    double total = 0.0;
    double before = 0.0;   // weight of the tokens below `token`
    double through = 0.0;  // ... and of `token` itself
    for (size_t i = 0; i < logits.size(); ++i) {
        if (static_cast<int32_t>(i) == token) {
            before = total;
        }
        total += draw_weight(logits[i], max_logit, inv_temperature);
        if (static_cast<int32_t>(i) == token) {
            through = total;
        }
    }
    const double target = uniform * total;
    return std::min(std::fabs(target - before), std::fabs(through - target)) / total;
}

}  // namespace k2::test
