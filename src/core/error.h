// Errors: K2_CHECK throws k2::Error carrying the file and line of the check.
// User input errors (files, requests, flags) are reported through the same type; callers at the
// boundaries (CLI, HTTP) turn them into a message or a 4xx, never an abort.
#pragma once

#include <fmt/format.h>
#include <source_location>
#include <stdexcept>
#include <string>

namespace k2 {

class Error : public std::runtime_error {
public:
    Error(const std::string& message, std::source_location where = std::source_location::current());
    const std::string& message() const { return m_message; }  // without the location prefix
    const char* file() const { return m_file; }
    int line() const { return m_line; }

private:
    std::string m_message;
    const char* m_file;
    int m_line;
};

[[noreturn]] void throw_error(std::string message, std::source_location where);

}  // namespace k2

// K2_CHECK(cond, fmt, args...): throws k2::Error("file:line: message") when cond is false.
#define K2_CHECK(cond, ...)                                                             \
    do {                                                                                \
        if (!(cond)) [[unlikely]] {                                                     \
            ::k2::throw_error(fmt::format(__VA_ARGS__), std::source_location::current()); \
        }                                                                               \
    } while (0)

#define K2_FAIL(...) ::k2::throw_error(fmt::format(__VA_ARGS__), std::source_location::current())
