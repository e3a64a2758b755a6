"""The real `k2 worker` launcher (issue 9, acceptance 3): kill -9 one rank of a 4-rank group and the whole
group must be gone within 10 s, with a message naming the rank and its pid."""
import os
import random
import re
import signal
import socket
import subprocess
import time

import pytest

K2_BIN = os.environ.get("K2_BIN", "build/k2")


def can_bind(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port():
    """P with P (rendezvous) and P + 1 (control) free, below the kernel's ephemeral range."""
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        if can_bind(port) and can_bind(port + 1):
            return port
    pytest.fail("no free port pair")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def group():
    if not os.path.exists(K2_BIN):
        pytest.fail(f"K2_BIN={K2_BIN} does not exist (build k2 first)")
    proc = subprocess.Popen(
        [K2_BIN, "worker", "--rank", "0", "--world-size", "4", "--spawn", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "--task", "idle"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def read_ready(proc):
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"worker group ready: world_size=4 pid0=(\d+)((?: rank\d+=\d+)*)", line)
        if m:
            pids = {0: int(m.group(1))}
            pids.update({int(r): int(p) for r, p in re.findall(r"rank(\d+)=(\d+)", m.group(2))})
            return pids, lines
    pytest.fail("group never became ready:\n" + "".join(lines))


def test_killing_a_rank_ends_the_group_naming_it(group):
    pids, _ = read_ready(group)
    assert sorted(pids) == [0, 1, 2, 3]
    start = time.monotonic()
    os.kill(pids[2], signal.SIGKILL)
    out, _ = group.communicate(timeout=10)
    elapsed = time.monotonic() - start
    assert elapsed < 10
    assert group.returncode == 1
    assert f"rank 2 (pid {pids[2]}) exited with signal 9" in out, out
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids.values())


def test_sigterm_shuts_the_group_down_cleanly(group):
    pids, _ = read_ready(group)
    group.send_signal(signal.SIGTERM)
    group.communicate(timeout=10)
    assert group.returncode == 0
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids.values())
