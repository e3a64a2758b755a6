// Leveled logging to stderr in vLLM's shape: "INFO 11-29 09:30:00 [file.cpp:42] message".
#pragma once

#include <fmt/format.h>
#include <source_location>
#include <string>

namespace k2 {

enum class LogLevel : int { DEBUG = 0, INFO = 1, WARNING = 2, ERROR = 3 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_message(LogLevel level, const std::string& message, std::source_location where);

}  // namespace k2

#define K2_LOG(level, ...)                                                                        \
    do {                                                                                          \
        if (static_cast<int>(::k2::LogLevel::level) >= static_cast<int>(::k2::log_level())) {     \
            ::k2::log_message(::k2::LogLevel::level, fmt::format(__VA_ARGS__),                    \
                              std::source_location::current());                                   \
        }                                                                                         \
    } while (0)
#define K2_INFO(...) K2_LOG(INFO, __VA_ARGS__)
#define K2_WARN(...) K2_LOG(WARNING, __VA_ARGS__)
#define K2_ERROR(...) K2_LOG(ERROR, __VA_ARGS__)
#define K2_DEBUG(...) K2_LOG(DEBUG, __VA_ARGS__)
