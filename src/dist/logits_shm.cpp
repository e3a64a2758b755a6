#include "dist/logits_shm.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/log.h"

namespace k2::dist {

std::string LogitsShm::name(int control_port, int dp) {
    return fmt::format("/k2-logits-{}-{}", control_port, dp);
}

std::unique_ptr<LogitsShm> LogitsShm::create(const std::string& name) {
    shm_unlink(name.c_str());  // a killed job's leftover
    const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
        K2_WARN("shared memory {}: {}; DP logits travel in the control messages", name, std::strerror(errno));
        return nullptr;
    }
    return std::unique_ptr<LogitsShm>(new LogitsShm(name, fd, true));
}

std::unique_ptr<LogitsShm> LogitsShm::open(const std::string& name) {
    const int fd = shm_open(name.c_str(), O_RDWR, 0600);
    return fd < 0 ? nullptr : std::unique_ptr<LogitsShm>(new LogitsShm(name, fd, false));
}

LogitsShm::~LogitsShm() {
    if (m_map != nullptr) {
        munmap(m_map, m_mapped);
    }
    if (m_fd >= 0) {
        close(m_fd);
    }
    if (m_owner) {
        shm_unlink(m_name.c_str());
    }
}

void LogitsShm::unlink() {
    if (m_owner) {
        shm_unlink(m_name.c_str());
        m_owner = false;
    }
}

void LogitsShm::map_at_least(size_t bytes) {
    if (bytes <= m_mapped) {
        return;
    }
    if (m_map != nullptr) {
        munmap(m_map, m_mapped);
        m_map = nullptr;
        m_mapped = 0;
    }
    void* map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m_fd, 0);
    K2_CHECK(map != MAP_FAILED, "shared memory {}: mmap of {} bytes failed: {}", m_name, bytes, std::strerror(errno));
    m_map = map;
    m_mapped = bytes;
}

bool LogitsShm::write(std::span<const float> values) {
    const size_t bytes = values.size_bytes();
    if (bytes == 0) {
        return true;
    }
    if (bytes > m_reserved) {  // grows only: the driver may still map the old size
        // posix_fallocate both sizes the segment and reserves its pages: a tmpfs too small answers ENOSPC here
        // rather than SIGBUS on the memcpy.
        const int error = posix_fallocate(m_fd, 0, static_cast<off_t>(bytes));
        if (error != 0) {
            K2_WARN("shared memory {}: cannot hold {} bytes of logits ({}); they go in the control message", m_name,
                    bytes, std::strerror(error));
            return false;
        }
        m_reserved = bytes;
    }
    map_at_least(bytes);
    std::memcpy(m_map, values.data(), bytes);
    return true;
}

void LogitsShm::read(std::span<float> out) {
    const size_t bytes = out.size_bytes();
    if (bytes == 0) {
        return;
    }
    struct stat st {};
    K2_CHECK(fstat(m_fd, &st) == 0, "shared memory {}: fstat failed: {}", m_name, std::strerror(errno));
    K2_CHECK(static_cast<size_t>(st.st_size) >= bytes, "shared memory {}: {} bytes of logits announced, {} written",
             m_name, bytes, st.st_size);
    map_at_least(bytes);
    std::memcpy(out.data(), m_map, bytes);
}

}  // namespace k2::dist
