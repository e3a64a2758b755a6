// Typed control messages between the rank-0 driver and worker ranks, carried over ZeroMQ (control_channel.h).
//
// Wire format (version 1), all integers little-endian:
//   frame   = magic "K2CM" | u16 version | u16 type | u32 payload_bytes | payload
//   vector  = u32 count | count elements          string = u32 bytes | bytes (UTF-8 not enforced)
// The decoder checks the magic, version, type, that payload_bytes equals what is left, every count against the
// bytes that remain (before allocating), that the payload is consumed exactly, and the ForwardBatch's shape
// invariants; anything else is a k2::Error naming what was wrong. No field ever names code or a type to
// instantiate, so a hostile frame can at worst be rejected.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "model/forward_batch.h"

namespace k2::dist {

inline constexpr uint16_t kControlVersion = 2;
inline constexpr size_t kControlHeaderBytes = 12;
inline constexpr size_t kMaxControlStringBytes = 1 << 16;

enum class ControlType : uint16_t {
    STEP_PLAN = 1,
    SHUTDOWN = 2,
    HEARTBEAT = 3,
    RANK_FAILED = 4,
    ALLOCATE_KV = 5,
    WORKER_STATUS = 6,
    STEP_RESULT = 7,
};

// One scheduler step every rank must run (TP/PP/DCP ranks execute the same batch; a DP rank with no work gets
// is_dummy = true so it still joins the step's collectives).
struct StepPlan {
    uint64_t step_id = 0;
    bool is_dummy = false;
    ForwardBatch batch;
};

struct Shutdown {
    std::string reason;
};

// Sent by every rank (and by the driver back to them) about twice a second; silence means a hung peer.
struct Heartbeat {
    int32_t rank = 0;
    int32_t pid = 0;
    uint64_t step_id = 0;  // last step this rank finished
};

// The driver tells the survivors which rank died, so each exits naming it.
struct RankFailed {
    int32_t rank = 0;
    int32_t pid = 0;
    std::string reason;  // e.g. "exited with signal 9"
};

// Driver -> the ranks of one DP replica: (re)allocate the latent KV cache with this many blocks (Model contract:
// every rank of a replica allocates the same count).
struct AllocateKv {
    int32_t num_blocks = 0;
};

// Worker -> driver, once: its shard is loaded (loaded = true) or loading failed (error says why; the worker
// then exits 1). The driver names the rank and this error when it reports the failure.
struct WorkerStatus {
    int32_t rank = 0;
    bool loaded = false;
    std::string error;
};

// DP leader of replica dp_rank (a worker) -> driver: the replica's float32 logits [rows, cols] of one
// non-dummy step. Sent as IEEE-754 bit patterns (u32, little-endian), or left in the replica's shared-memory
// segment (logits_shm.h) when both processes share a host: then in_shared_memory and logits is empty.
struct StepResult {
    uint64_t step_id = 0;
    int32_t dp_rank = 0;
    int32_t rows = 0;
    int32_t cols = 0;
    std::vector<float> logits;  // [rows, cols], or empty
    bool in_shared_memory = false;
};

// Variant order == ControlType order (type = index + 1).
using ControlMessage = std::variant<StepPlan, Shutdown, Heartbeat, RankFailed, AllocateKv, WorkerStatus, StepResult>;

std::vector<uint8_t> encode_control_message(const ControlMessage& message);
// Throws k2::Error for any malformed frame. Safe on arbitrary bytes (the libFuzzer entry point).
ControlMessage decode_control_message(std::span<const uint8_t> bytes);

std::string_view control_type_name(ControlType type);
// Throws k2::Error when the batch's arrays disagree with each other (sizes, offsets, indices).
void validate_forward_batch(const ForwardBatch& batch);

}  // namespace k2::dist
