// Fuzz target: config.json text through parse_model_config, then (for configs small enough to
// expand quickly) the derived tensor schema. Anything but a k2::Error escaping is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "io/model_config.h"
#include "model/weight_schema.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const k2::ModelConfig config =
            k2::parse_model_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
        (void)config.softmax_scale();
        if (static_cast<int64_t>(config.num_hidden_layers) * (config.n_routed_experts + 1) <= 4096) {
            for (const k2::ExpectedTensor& t : k2::expected_tensors(config)) {
                if (t.has_scale) {
                    (void)k2::scale_shape(t.shape, config);
                }
            }
        }
    } catch (const k2::Error&) {
    }
    return 0;
}
