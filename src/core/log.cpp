#include "core/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <string_view>

namespace k2 {

namespace {
LogLevel initial_level() {
    const char* env = std::getenv("K2_LOG_LEVEL");
    if (env == nullptr) {
        return LogLevel::INFO;
    }
    const std::string_view v(env);
    if (v == "DEBUG") return LogLevel::DEBUG;
    if (v == "WARNING") return LogLevel::WARNING;
    if (v == "ERROR") return LogLevel::ERROR;
    return LogLevel::INFO;
}
std::atomic<int> g_level{static_cast<int>(initial_level())};
std::mutex g_mutex;
constexpr const char* kNames[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
}  // namespace

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }

void log_message(LogLevel level, const std::string& message, std::source_location where) {
    const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm tm{};
    localtime_r(&now, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof(stamp), "%m-%d %H:%M:%S", &tm);
    std::string_view file(where.file_name());
    const size_t slash = file.rfind('/');
    if (slash != std::string_view::npos) {
        file.remove_prefix(slash + 1);
    }
    const std::lock_guard lock(g_mutex);
    std::fprintf(stderr, "%s %s [%.*s:%u] %s\n", kNames[static_cast<int>(level)], stamp,
                 static_cast<int>(file.size()), file.data(), where.line(), message.c_str());
}

}  // namespace k2
