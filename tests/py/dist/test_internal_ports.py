"""Issue 11 point 5 (security) for a parallel job: the HTTP port listens on --host (here every interface, vLLM's
default), while the internal ports (Gloo rendezvous and collectives, the ZeroMQ control channel of the ranks) listen
only on the job's --master-addr (loopback on one node). Read from the kernel's own socket table (/proc/net/tcp),
not from k2's logs."""
import os
import pathlib

import pytest

from k2_dist_server import Serve, alive


def listening_sockets(pids):
    """(address, port) of every TCP socket in LISTEN state owned by one of `pids` (IPv4 and IPv6 tables)."""
    inodes = set()
    for pid in pids:
        fd_dir = pathlib.Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if width == 8:
                addr = ".".join(str(int(addr_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                addr = "::" if int(addr_hex, 16) == 0 else addr_hex
            found.append((addr, int(port_hex, 16)))
    return found


def test_internal_ports_listen_on_the_master_address_only():
    server = Serve(["-tp", "2", "--master-addr", "127.0.0.1"], "security", host="0.0.0.0",
                   env={"OMP_NUM_THREADS": "1"})
    try:
        server.wait_healthy()
        pids = [server.proc.pid, *server.rank_pids().values()]
        assert len(pids) >= 2 and all(alive(p) for p in pids), server.log_text()
        sockets = listening_sockets(pids)
        http = [s for s in sockets if s[1] == server.port]
        internal = [s for s in sockets if s[1] != server.port]
        assert http and all(addr in ("0.0.0.0", "::") for addr, _ in http), sockets
        assert internal, f"no internal listening socket found: {sockets}"
        exposed = [s for s in internal if s[0] != "127.0.0.1"]
        assert not exposed, f"internal ports not on --master-addr 127.0.0.1: {exposed} (all: {sockets})"
    finally:
        server.stop()
