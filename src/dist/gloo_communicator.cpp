#include "dist/gloo_communicator.h"

#include <csignal>
#include <cstring>
#include <vector>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>

#include "core/error.h"
#include "core/log.h"
#include "dist/tcp_store.h"

namespace k2::dist {

namespace {

// Gloo wants a real pointer even for zero-byte buffers.
char g_empty_buffer[1];

void* nonnull(void* ptr) { return ptr != nullptr ? ptr : g_empty_buffer; }

void sum_f32(void* c, const void* a, const void* b, size_t n) {
    float* out = static_cast<float*>(c);
    const float* x = static_cast<const float*>(a);
    const float* y = static_cast<const float*>(b);
    for (size_t i = 0; i < n; ++i) {
        out[i] = x[i] + y[i];
    }
}

void sum_bf16(void* c, const void* a, const void* b, size_t n) {
    uint16_t* out = static_cast<uint16_t*>(c);
    const uint16_t* x = static_cast<const uint16_t*>(a);
    const uint16_t* y = static_cast<const uint16_t*>(b);
    for (size_t i = 0; i < n; ++i) {
        out[i] = float_to_bf16(bf16_to_float(x[i]) + bf16_to_float(y[i]));
    }
}

bool is_prefix_sum(std::span<const int64_t> counts, std::span<const int64_t> displs) {
    int64_t offset = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
        if (displs[r] != offset) {
            return false;
        }
        offset += counts[r];
    }
    return true;
}

}  // namespace

template <typename Fn>
void GlooCommunicator::run_op(const char* op, Fn&& fn) {
    try {
        fn();
    } catch (const gloo::Exception& e) {
        K2_FAIL("rank {}/{}: gloo {} failed (a peer rank died or timed out after {} ms): {}", m_rank, m_size, op,
                m_timeout.count(), e.what());
    }
}
GlooCommunicator::GlooCommunicator(const GlooOptions& options)
    : m_rank(options.rank), m_size(options.world_size), m_timeout(options.timeout) {
    K2_CHECK(m_size >= 1 && m_rank >= 0 && m_rank < m_size, "invalid rank {} for world size {}", m_rank, m_size);
    K2_CHECK(options.master_port > 0 && options.master_port < 65536, "invalid --master-port {}",
             options.master_port);
    // Gloo writes to its TCP pairs without MSG_NOSIGNAL: a write to a peer that just died would kill this process
    // with SIGPIPE instead of raising the error below (and naming the op). Process-wide, as PyTorch does.
    std::signal(SIGPIPE, SIG_IGN);
    m_store = options.store != nullptr
                  ? options.store
                  : std::make_shared<TcpStore>(options.master_addr, options.master_port, m_rank == 0, m_timeout);
    gloo::transport::tcp::attr attr;
    attr.hostname = options.host_addr.empty() ? options.master_addr : options.host_addr;
    try {
        auto device = gloo::transport::tcp::CreateDevice(attr);
        gloo::rendezvous::PrefixStore store(options.prefix, *m_store);
        auto context = std::make_shared<gloo::rendezvous::Context>(m_rank, m_size);
        context->setTimeout(m_timeout);
        context->connectFullMesh(store, device);
        m_context = std::move(context);
    } catch (const gloo::Exception& e) {
        K2_FAIL("rank {}/{}: gloo rendezvous at {}:{} failed: {}", m_rank, m_size, options.master_addr,
                options.master_port, e.what());
    }
    m_p2p_slot_base = m_context->nextSlot();
}

GlooCommunicator::~GlooCommunicator() = default;

void GlooCommunicator::all_reduce_sum(void* buf, size_t count, DType dtype) {
    K2_CHECK(dtype == DType::F32 || dtype == DType::BF16, "all_reduce_sum supports F32 and BF16, not {}",
             dtype_name(dtype));
    if (m_size == 1 || count == 0) {
        return;
    }
    run_op("all_reduce", [&] {
        gloo::AllreduceOptions opts(m_context);
        if (dtype == DType::F32) {
            opts.setOutput(static_cast<float*>(buf), count);
            opts.setReduceFunction(sum_f32);
        } else {
            opts.setOutput(static_cast<uint16_t*>(buf), count);
            opts.setReduceFunction(sum_bf16);
        }
        opts.setTimeout(m_timeout);
        gloo::allreduce(opts);
    });
}

void GlooCommunicator::all_gather(const void* send, void* recv, size_t count, DType dtype) {
    const size_t bytes = count * dtype_size(dtype);
    if (m_size == 1 || bytes == 0) {
        if (bytes != 0 && send != recv) {
            std::memmove(recv, send, bytes);
        }
        return;
    }
    run_op("all_gather", [&] {
        gloo::AllgatherOptions opts(m_context);
        opts.setInput(static_cast<uint8_t*>(const_cast<void*>(send)), bytes);
        opts.setOutput(static_cast<uint8_t*>(recv), bytes * m_size);
        opts.setTimeout(m_timeout);
        gloo::allgather(opts);
    });
}

// An all-to-all of the slices followed by a local sum in rank order: the same bytes on the wire as a ring
// reduce-scatter, and every rank sums in the same order so results are bitwise reproducible.
void GlooCommunicator::reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) {
    K2_CHECK(dtype == DType::F32 || dtype == DType::BF16, "reduce_scatter_sum supports F32 and BF16, not {}",
             dtype_name(dtype));
    const size_t slice_bytes = count * dtype_size(dtype);
    if (slice_bytes == 0) {
        return;
    }
    std::vector<uint8_t> slices(slice_bytes * m_size);  // [size, count] slice r came from rank r
    if (m_size == 1) {
        std::memcpy(slices.data(), send, slice_bytes);
    } else {
        run_op("reduce_scatter", [&] {
            gloo::AlltoallOptions opts(m_context);
            opts.setInput(static_cast<uint8_t*>(const_cast<void*>(send)), slices.size());
            opts.setOutput(slices.data(), slices.size());
            opts.setTimeout(m_timeout);
            gloo::alltoall(opts);
        });
    }
    std::memcpy(recv, slices.data(), slice_bytes);
    for (int r = 1; r < m_size; ++r) {
        add_in_place(recv, slices.data() + r * slice_bytes, count, dtype);
    }
}

void GlooCommunicator::all_to_all_v(const void* send, std::span<const int64_t> send_counts,
                                    std::span<const int64_t> send_displs, void* recv,
                                    std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                                    DType dtype) {
    const AllToAllTotals totals =
        check_all_to_all_v_args(m_size, send_counts, send_displs, recv_counts, recv_displs);
    const size_t elem = dtype_size(dtype);
    // Gloo's alltoallv takes contiguous per-rank runs; pack/unpack only when the displacements leave gaps.
    const bool send_packed = is_prefix_sum(send_counts, send_displs);
    const bool recv_packed = is_prefix_sum(recv_counts, recv_displs);
    std::vector<uint8_t> send_tmp;
    std::vector<uint8_t> recv_tmp;
    const uint8_t* send_ptr = static_cast<const uint8_t*>(send);
    uint8_t* recv_ptr = static_cast<uint8_t*>(recv);
    if (!send_packed) {
        send_tmp.resize(totals.send_total * elem);
        size_t offset = 0;
        for (int r = 0; r < m_size; ++r) {
            std::memcpy(send_tmp.data() + offset, send_ptr + send_displs[r] * elem, send_counts[r] * elem);
            offset += send_counts[r] * elem;
        }
        send_ptr = send_tmp.data();
    }
    if (!recv_packed) {
        recv_tmp.resize(totals.recv_total * elem);
        recv_ptr = recv_tmp.data();
    }
    std::vector<int64_t> send_bytes(m_size);
    std::vector<int64_t> recv_bytes(m_size);
    for (int r = 0; r < m_size; ++r) {
        send_bytes[r] = send_counts[r] * static_cast<int64_t>(elem);
        recv_bytes[r] = recv_counts[r] * static_cast<int64_t>(elem);
    }
    run_op("all_to_all_v", [&] {
        gloo::AlltoallvOptions opts(m_context);
        opts.setInput(static_cast<uint8_t*>(nonnull(const_cast<uint8_t*>(send_ptr))), send_bytes);
        opts.setOutput(static_cast<uint8_t*>(nonnull(recv_ptr)), recv_bytes);
        opts.setTimeout(m_timeout);
        gloo::alltoallv(opts);
    });
    if (!recv_packed) {
        size_t offset = 0;
        for (int r = 0; r < m_size; ++r) {
            std::memcpy(static_cast<uint8_t*>(recv) + recv_displs[r] * elem, recv_tmp.data() + offset,
                        recv_counts[r] * elem);
            offset += recv_counts[r] * elem;
        }
    }
}

void GlooCommunicator::send(const void* buf, size_t count, DType dtype, int peer) {
    K2_CHECK(peer >= 0 && peer < m_size && peer != m_rank, "rank {}: invalid send peer {}", m_rank, peer);
    run_op("send", [&] {
        auto buffer = m_context->createUnboundBuffer(nonnull(const_cast<void*>(buf)), count * dtype_size(dtype));
        buffer->send(peer, m_p2p_slot_base);
        K2_CHECK(buffer->waitSend(m_timeout), "rank {}: send to rank {} timed out", m_rank, peer);
    });
}

void GlooCommunicator::recv(void* buf, size_t count, DType dtype, int peer) {
    K2_CHECK(peer >= 0 && peer < m_size && peer != m_rank, "rank {}: invalid recv peer {}", m_rank, peer);
    run_op("recv", [&] {
        auto buffer = m_context->createUnboundBuffer(nonnull(buf), count * dtype_size(dtype));
        buffer->recv(peer, m_p2p_slot_base);
        K2_CHECK(buffer->waitRecv(m_timeout), "rank {}: recv from rank {} timed out", m_rank, peer);
    });
}

void GlooCommunicator::broadcast(void* buf, size_t count, DType dtype, int root) {
    K2_CHECK(root >= 0 && root < m_size, "rank {}: invalid broadcast root {}", m_rank, root);
    const size_t bytes = count * dtype_size(dtype);
    if (m_size == 1 || bytes == 0) {
        return;
    }
    run_op("broadcast", [&] {
        gloo::BroadcastOptions opts(m_context);
        opts.setOutput(static_cast<uint8_t*>(buf), bytes);
        opts.setRoot(root);
        opts.setTimeout(m_timeout);
        gloo::broadcast(opts);
    });
}

void GlooCommunicator::barrier() {
    if (m_size == 1) {
        return;
    }
    run_op("barrier", [&] {
        gloo::BarrierOptions opts(m_context);
        opts.setTimeout(m_timeout);
        gloo::barrier(opts);
    });
}

}  // namespace k2::dist
