#include "core/error.h"

namespace k2 {

namespace {
const char* short_path(const char* path) {
    // Keep the path from "src/" or "tests/" on, so messages do not depend on the checkout folder.
    const std::string_view p(path);
    for (const char* marker : {"/src/", "/tests/"}) {
        const size_t pos = p.rfind(marker);
        if (pos != std::string_view::npos) {
            return path + pos + 1;
        }
    }
    return path;
}
}  // namespace

Error::Error(const std::string& message, std::source_location where)
    : std::runtime_error(fmt::format("{}:{}: {}", short_path(where.file_name()), where.line(), message)),
      m_message(message),
      m_file(short_path(where.file_name())),
      m_line(static_cast<int>(where.line())) {}

void throw_error(std::string message, std::source_location where) { throw Error(message, where); }

}  // namespace k2
