// Built only while the engine or tokenizer library is missing from the tree: `k2 serve` says so.
#include "core/error.h"
#include "server/serve.h"

namespace k2::server {

int run_serve(const ServeOptions& /*options*/) {
    K2_FAIL("k2 serve is unavailable: this build has no engine or tokenizer library (src/engine, src/tokenizer)");
}

}  // namespace k2::server
