// Fuzz target: a whole safetensors file image (length prefix, header JSON, data area), then the
// same bytes as a bare header. Anything but a k2::Error escaping, or a read outside the input, is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const k2::SafetensorsLayout layout = k2::parse_safetensors_file(data, size, "fuzz.safetensors");
        // Touch the first and last byte of every tensor: ASan flags any offset the parser let through
        // that points outside the input.
        volatile uint8_t sink = 0;
        for (const k2::TensorInfo& t : layout.tensors) {
            if (t.end > t.begin) {
                sink = sink ^ data[layout.data_offset + t.begin] ^ data[layout.data_offset + t.end - 1];
            }
        }
    } catch (const k2::Error&) {
    }
    try {
        (void)k2::parse_safetensors_header(std::string_view(reinterpret_cast<const char*>(data), size), size,
                                           "fuzz-header");
    } catch (const k2::Error&) {
    }
    return 0;
}
