#include "dist/control_message.h"

#include <bit>
#include <cstring>
#include <type_traits>

#include "core/error.h"

namespace k2::dist {

namespace {

constexpr char kMagic[4] = {'K', '2', 'C', 'M'};

class Writer {
public:
    template <typename T>
    void put(T value) {
        static_assert(std::is_integral_v<T>);
        using U = std::make_unsigned_t<T>;
        U u = static_cast<U>(value);
        for (size_t i = 0; i < sizeof(T); ++i) {
            m_bytes.push_back(static_cast<uint8_t>(u & 0xffu));
            u = static_cast<U>(static_cast<uint64_t>(u) >> 8);
        }
    }
    template <typename T>
    void put_vector(const std::vector<T>& values) {
        put_array(values.data(), values.size());
    }
    // u32 count, then the elements little-endian: on a little-endian host their memory as is (a step's logits are
    // megabytes: byte-by-byte encoding cost tens of ms per DP step).
    template <typename T>
    void put_array(const T* values, size_t count) {
        static_assert(std::is_integral_v<T>);
        put<uint32_t>(static_cast<uint32_t>(count));
        if constexpr (std::endian::native == std::endian::little) {
            const auto* bytes = reinterpret_cast<const uint8_t*>(values);
            m_bytes.reserve(m_bytes.size() + count * sizeof(T));
            m_bytes.insert(m_bytes.end(), bytes, bytes + count * sizeof(T));  // no zero-fill pass first
        } else {
            for (size_t i = 0; i < count; ++i) {
                put<T>(values[i]);
            }
        }
    }
    void put_string(const std::string& s) {
        K2_CHECK(s.size() <= kMaxControlStringBytes, "control message string of {} bytes is too long", s.size());
        put<uint32_t>(static_cast<uint32_t>(s.size()));
        m_bytes.insert(m_bytes.end(), s.begin(), s.end());
    }
    std::vector<uint8_t>& bytes() { return m_bytes; }

private:
    std::vector<uint8_t> m_bytes;
};

class Reader {
public:
    explicit Reader(std::span<const uint8_t> bytes) : m_bytes(bytes) {}

    template <typename T>
    T get(const char* field) {
        static_assert(std::is_integral_v<T>);
        need(sizeof(T), field);
        using U = std::make_unsigned_t<T>;
        U u = 0;
        for (size_t i = 0; i < sizeof(T); ++i) {
            u = static_cast<U>(u | static_cast<U>(static_cast<U>(m_bytes[m_pos + i]) << (8 * i)));
        }
        m_pos += sizeof(T);
        return static_cast<T>(u);
    }
    template <typename T>
    std::vector<T> get_vector(const char* field) {
        const uint32_t count = get<uint32_t>(field);
        // Check against what is left before allocating: a forged count cannot make us reserve gigabytes.
        K2_CHECK(count <= remaining() / sizeof(T), "control message: {} claims {} elements but only {} bytes remain",
                 field, count, remaining());
        std::vector<T> out(count);
        if constexpr (std::endian::native == std::endian::little) {
            if (count > 0) {
                std::memcpy(out.data(), m_bytes.data() + m_pos, count * sizeof(T));
            }
            m_pos += count * sizeof(T);
        } else {
            for (uint32_t i = 0; i < count; ++i) {
                out[i] = get<T>(field);
            }
        }
        return out;
    }
    // A u32 count of 4-byte elements, then their bits into `out` (resized): the logits' path, one copy.
    void get_bits32(const char* field, std::vector<float>& out) {
        const uint32_t count = get<uint32_t>(field);
        K2_CHECK(count <= remaining() / 4, "control message: {} claims {} elements but only {} bytes remain", field,
                 count, remaining());
        out.resize(count);
        if constexpr (std::endian::native == std::endian::little) {
            if (count > 0) {
                std::memcpy(out.data(), m_bytes.data() + m_pos, size_t{count} * 4);
            }
            m_pos += size_t{count} * 4;
        } else {
            for (uint32_t i = 0; i < count; ++i) {
                out[i] = std::bit_cast<float>(get<uint32_t>(field));
            }
        }
    }
    std::string get_string(const char* field) {
        const uint32_t size = get<uint32_t>(field);
        K2_CHECK(size <= kMaxControlStringBytes, "control message: {} of {} bytes exceeds the limit", field, size);
        need(size, field);
        std::string out(reinterpret_cast<const char*>(m_bytes.data() + m_pos), size);
        m_pos += size;
        return out;
    }
    bool get_bool(const char* field) {
        const uint8_t v = get<uint8_t>(field);
        K2_CHECK(v <= 1, "control message: {} must be 0 or 1, got {}", field, v);
        return v == 1;
    }
    size_t remaining() const { return m_bytes.size() - m_pos; }
    void finish(const char* what) {
        K2_CHECK(remaining() == 0, "control message: {} trailing bytes after {}", remaining(), what);
    }

private:
    void need(size_t n, const char* field) {
        K2_CHECK(n <= remaining(), "control message truncated in {} (need {} bytes, {} left)", field, n, remaining());
    }
    std::span<const uint8_t> m_bytes;
    size_t m_pos = 0;
};

void write_payload(Writer& w, const StepPlan& m) {
    w.put<uint64_t>(m.step_id);
    w.put<uint8_t>(m.is_dummy ? 1 : 0);
    const ForwardBatch& b = m.batch;
    w.put_vector(b.token_ids);
    w.put_vector(b.positions);
    w.put_vector(b.query_start);
    w.put_vector(b.seq_lens);
    w.put<int32_t>(b.max_blocks_per_seq);
    w.put_vector(b.block_tables);
    w.put_vector(b.slot_mapping);
    w.put_vector(b.logits_indices);
    w.put_vector(b.dp_num_tokens);
    w.put<int32_t>(b.dp_decode_only ? 1 : 0);
}
void write_payload(Writer& w, const Shutdown& m) {
    w.put_string(m.reason);
}
void write_payload(Writer& w, const Heartbeat& m) {
    w.put<int32_t>(m.rank);
    w.put<int32_t>(m.pid);
    w.put<uint64_t>(m.step_id);
}
void write_payload(Writer& w, const RankFailed& m) {
    w.put<int32_t>(m.rank);
    w.put<int32_t>(m.pid);
    w.put_string(m.reason);
}
void write_payload(Writer& w, const AllocateKv& m) {
    w.put<int32_t>(m.num_blocks);
}
void write_payload(Writer& w, const WorkerStatus& m) {
    w.put<int32_t>(m.rank);
    w.put<uint8_t>(m.loaded ? 1 : 0);
    w.put_string(m.error);
}
void write_payload(Writer& w, const StepResult& m) {
    K2_CHECK(
        m.rows >= 0 && m.cols >= 0 &&
            m.logits.size() == (m.in_shared_memory ? 0 : static_cast<size_t>(m.rows) * static_cast<size_t>(m.cols)),
        "StepResult: {} logits for [{}, {}]{}", m.logits.size(), m.rows, m.cols,
        m.in_shared_memory ? " in shared memory" : "");
    w.put<uint64_t>(m.step_id);
    w.put<int32_t>(m.dp_rank);
    w.put<int32_t>(m.rows);
    w.put<int32_t>(m.cols);
    static_assert(sizeof(float) == sizeof(uint32_t));
    w.put_array(reinterpret_cast<const uint32_t*>(m.logits.data()), m.logits.size());  // IEEE-754 bit patterns
    w.put<uint8_t>(m.in_shared_memory ? 1 : 0);
}

ControlType type_of(const ControlMessage& message) {
    return static_cast<ControlType>(message.index() + 1);  // variant order == enum order
}

StepPlan read_step_plan(Reader& r) {
    StepPlan m;
    m.step_id = r.get<uint64_t>("step_id");
    m.is_dummy = r.get_bool("is_dummy");
    ForwardBatch& b = m.batch;
    b.token_ids = r.get_vector<int32_t>("token_ids");
    b.positions = r.get_vector<int32_t>("positions");
    b.query_start = r.get_vector<int32_t>("query_start");
    b.seq_lens = r.get_vector<int32_t>("seq_lens");
    b.max_blocks_per_seq = r.get<int32_t>("max_blocks_per_seq");
    b.block_tables = r.get_vector<int32_t>("block_tables");
    b.slot_mapping = r.get_vector<int64_t>("slot_mapping");
    b.logits_indices = r.get_vector<int32_t>("logits_indices");
    b.dp_num_tokens = r.get_vector<int32_t>("dp_num_tokens");
    const auto decode_only = r.get<int32_t>("dp_decode_only");
    K2_CHECK(decode_only == 0 || decode_only == 1, "control message: dp_decode_only is {}, not 0 or 1", decode_only);
    b.dp_decode_only = decode_only == 1;
    validate_forward_batch(b);
    return m;
}

StepResult read_step_result(Reader& r) {
    StepResult m;
    m.step_id = r.get<uint64_t>("step_id");
    m.dp_rank = r.get<int32_t>("dp_rank");
    m.rows = r.get<int32_t>("rows");
    m.cols = r.get<int32_t>("cols");
    K2_CHECK(m.dp_rank >= 0, "control message: StepResult dp_rank {} is negative", m.dp_rank);
    K2_CHECK(m.rows >= 0 && m.cols >= 0, "control message: StepResult shape [{}, {}] is negative", m.rows, m.cols);
    r.get_bits32("logits", m.logits);
    m.in_shared_memory = r.get_bool("in_shared_memory");
    const size_t expected = m.in_shared_memory ? 0 : static_cast<size_t>(m.rows) * static_cast<size_t>(m.cols);
    K2_CHECK(m.logits.size() == expected, "control message: StepResult has {} logits for shape [{}, {}]{}",
             m.logits.size(), m.rows, m.cols, m.in_shared_memory ? " in shared memory" : "");
    return m;
}

}  // namespace

std::string_view control_type_name(ControlType type) {
    switch (type) {
        case ControlType::STEP_PLAN:
            return "StepPlan";
        case ControlType::SHUTDOWN:
            return "Shutdown";
        case ControlType::HEARTBEAT:
            return "Heartbeat";
        case ControlType::RANK_FAILED:
            return "RankFailed";
        case ControlType::ALLOCATE_KV:
            return "AllocateKv";
        case ControlType::WORKER_STATUS:
            return "WorkerStatus";
        case ControlType::STEP_RESULT:
            return "StepResult";
    }
    return "unknown";
}

void validate_forward_batch(const ForwardBatch& b) {
    const size_t num_tokens = b.token_ids.size();
    const size_t num_seqs = b.seq_lens.size();
    K2_CHECK(b.positions.size() == num_tokens, "ForwardBatch: {} positions for {} tokens", b.positions.size(),
             num_tokens);
    K2_CHECK(b.slot_mapping.size() == num_tokens, "ForwardBatch: {} slot_mapping entries for {} tokens",
             b.slot_mapping.size(), num_tokens);
    if (num_seqs == 0 && num_tokens == 0 && b.query_start.empty()) {
        K2_CHECK(b.block_tables.empty() && b.logits_indices.empty(), "ForwardBatch: an empty batch has tables");
        return;  // a default-constructed batch (dummy step)
    }
    K2_CHECK(b.query_start.size() == num_seqs + 1, "ForwardBatch: query_start has {} entries for {} sequences",
             b.query_start.size(), num_seqs);
    K2_CHECK(b.query_start[0] == 0 && static_cast<size_t>(b.query_start.back()) == num_tokens,
             "ForwardBatch: query_start must run from 0 to {} tokens", num_tokens);
    for (size_t s = 0; s < num_seqs; ++s) {
        const int32_t len = b.query_start[s + 1] - b.query_start[s];
        K2_CHECK(len >= 0, "ForwardBatch: query_start decreases at sequence {}", s);
        K2_CHECK(b.seq_lens[s] >= len, "ForwardBatch: sequence {} has {} new tokens but seq_len {}", s, len,
                 b.seq_lens[s]);
    }
    K2_CHECK(b.max_blocks_per_seq >= 0, "ForwardBatch: negative max_blocks_per_seq {}", b.max_blocks_per_seq);
    K2_CHECK(b.block_tables.size() == num_seqs * static_cast<size_t>(b.max_blocks_per_seq),
             "ForwardBatch: block_tables has {} entries, expected {} x {}", b.block_tables.size(), num_seqs,
             b.max_blocks_per_seq);
    for (int32_t index : b.logits_indices) {
        K2_CHECK(index >= 0 && static_cast<size_t>(index) < num_tokens,
                 "ForwardBatch: logits index {} outside {} tokens", index, num_tokens);
    }
}

std::vector<uint8_t> encode_control_message(const ControlMessage& message) {
    Writer frame;  // header, then the payload written in place (no copy of a large payload)
    for (char c : kMagic) {
        frame.put<uint8_t>(static_cast<uint8_t>(c));
    }
    frame.put<uint16_t>(kControlVersion);
    frame.put<uint16_t>(static_cast<uint16_t>(type_of(message)));
    frame.put<uint32_t>(0);  // payload_bytes, patched below
    std::visit([&](const auto& m) { write_payload(frame, m); }, message);
    std::vector<uint8_t> out = std::move(frame.bytes());
    const auto payload_bytes = static_cast<uint32_t>(out.size() - kControlHeaderBytes);
    for (size_t i = 0; i < 4; ++i) {  // little-endian, as Writer::put
        out[kControlHeaderBytes - 4 + i] = static_cast<uint8_t>(payload_bytes >> (8 * i));
    }
    return out;
}

ControlMessage decode_control_message(std::span<const uint8_t> bytes) {
    K2_CHECK(bytes.size() >= kControlHeaderBytes, "control message: {} bytes is shorter than the {}-byte header",
             bytes.size(), kControlHeaderBytes);
    K2_CHECK(std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0, "control message: bad magic (not a k2 frame)");
    Reader header(bytes.subspan(4, kControlHeaderBytes - 4));
    const uint16_t version = header.get<uint16_t>("version");
    const uint16_t type = header.get<uint16_t>("type");
    const uint32_t payload_bytes = header.get<uint32_t>("payload_bytes");
    K2_CHECK(version == kControlVersion, "control message: version {} is not the supported {}", version,
             kControlVersion);
    K2_CHECK(payload_bytes == bytes.size() - kControlHeaderBytes,
             "control message: header says {} payload bytes, frame has {}", payload_bytes,
             bytes.size() - kControlHeaderBytes);
    Reader r(bytes.subspan(kControlHeaderBytes));
    ControlMessage out;
    switch (static_cast<ControlType>(type)) {
        case ControlType::STEP_PLAN:
            out = read_step_plan(r);
            break;
        case ControlType::SHUTDOWN:
            out = Shutdown{r.get_string("reason")};
            break;
        case ControlType::HEARTBEAT: {
            Heartbeat h;
            h.rank = r.get<int32_t>("rank");
            h.pid = r.get<int32_t>("pid");
            h.step_id = r.get<uint64_t>("step_id");
            out = h;
            break;
        }
        case ControlType::RANK_FAILED: {
            RankFailed f;
            f.rank = r.get<int32_t>("rank");
            f.pid = r.get<int32_t>("pid");
            f.reason = r.get_string("reason");
            out = f;
            break;
        }
        case ControlType::ALLOCATE_KV: {
            AllocateKv a;
            a.num_blocks = r.get<int32_t>("num_blocks");
            K2_CHECK(a.num_blocks > 0, "control message: AllocateKv num_blocks must be positive, got {}", a.num_blocks);
            out = a;
            break;
        }
        case ControlType::WORKER_STATUS: {
            WorkerStatus st;
            st.rank = r.get<int32_t>("rank");
            st.loaded = r.get_bool("loaded");
            st.error = r.get_string("error");
            out = st;
            break;
        }
        case ControlType::STEP_RESULT:
            out = read_step_result(r);
            break;
        default:
            K2_FAIL("control message: unknown type {}", type);
    }
    r.finish(control_type_name(static_cast<ControlType>(type)).data());
    return out;
}

}  // namespace k2::dist
