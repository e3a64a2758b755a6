"""Faults while `k2 bench serve` saves its result (issue 11 point 6): a full disk (/dev/full: every write
fails with ENOSPC) or a result directory that cannot be created ends the run with a message naming the file
and exit code 1 — after the result table was printed, so the measurement is not lost — and never with a
crash or a silently empty result file."""
import os

from k2_bench_util import FakeServer, check_block, run_bench


def bench(server, *args):
    return run_bench(["--base-url", server.base, "--random-input-len", "20", "--random-output-len", "4",
                      "--num-prompts", "4", "--disable-tqdm", "--save-result", *args], check=False)


def test_full_disk_while_saving_the_result():
    server = FakeServer("--ttft-ms", "5", "--itl-ms", "1")
    try:
        proc = bench(server, "--result-dir", "/dev", "--result-filename", "full")
    finally:
        server.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--save-result: writing /dev/full failed: No space left on device" in proc.stderr, proc.stderr
    assert check_block(proc.stdout, rate=float("inf"))["Successful requests:"] == 4
    assert os.path.exists("/dev/full")  # only regular files are cleaned up


def test_result_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    server = FakeServer("--ttft-ms", "5", "--itl-ms", "1")
    try:
        proc = bench(server, "--result-dir", str(blocker / "sub"))
    finally:
        server.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert str(blocker / "sub") in proc.stderr, proc.stderr
    assert "Serving Benchmark Result" in proc.stdout
