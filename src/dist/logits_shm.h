// A DP replica's logits handed from its leader's worker process to the driver through POSIX shared memory when the
// two run on one host. Kimi-K2's logits are 163,840 floats a row, 10 MB for a 16-sequence decode step: sent inside
// the StepResult control message (copied into the frame, through ZeroMQ and TCP, out again) they cost more than the
// GPU step itself. The driver creates one segment per local replica leader before the workers start; a worker that
// finds its segment writes the logits there and sends only their shape (StepResult::in_shared_memory); a worker on
// another host finds none and sends them in the message.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace k2::dist {

class LogitsShm {
public:
    // "/k2-logits-<control port>-<dp>": unique per job on a host (the control port is bound by the driver).
    static std::string name(int control_port, int dp);
    // Driver: a new empty segment (a stale one of the same name, left by a killed job, is removed first); removed
    // again when this object goes. Null (with a warning) when the host has no shared memory to give.
    static std::unique_ptr<LogitsShm> create(const std::string& name);
    // Worker: the driver's segment, or null when there is none (another host, or the driver could not create it).
    static std::unique_ptr<LogitsShm> open(const std::string& name);
    ~LogitsShm();
    LogitsShm(const LogitsShm&) = delete;
    LogitsShm& operator=(const LogitsShm&) = delete;

    // Driver, once the workers have opened it: the name goes, the segment stays while both hold it open (so a
    // killed job leaves nothing behind in /dev/shm).
    void unlink();
    // Worker: the segment grows to hold `values` if it must (its pages reserved first), then they are copied in.
    // False when the host's shared memory cannot hold them (e.g. a container's small /dev/shm): the caller sends
    // them in the message instead of risking a SIGBUS on the copy.
    bool write(std::span<const float> values);
    // Driver: copies out out.size() floats; throws k2::Error when the segment holds fewer.
    void read(std::span<float> out);

private:
    LogitsShm(std::string name, int fd, bool owner) : m_name(std::move(name)), m_fd(fd), m_owner(owner) {}
    void map_at_least(size_t bytes);  // the mapping covers [0, bytes) of the segment afterwards

    std::string m_name;
    int m_fd = -1;
    bool m_owner = false;
    void* m_map = nullptr;
    size_t m_mapped = 0;
    size_t m_reserved = 0;  // bytes posix_fallocate has reserved (worker)
};

}  // namespace k2::dist
