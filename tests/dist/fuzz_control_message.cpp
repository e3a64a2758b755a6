// libFuzzer entry point for the control-message parser (built with -DK2_FUZZ=ON and clang).
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "dist/control_message.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        k2::dist::decode_control_message(std::span<const uint8_t>(data, size));
    } catch (const k2::Error&) {
    }
    return 0;
}
