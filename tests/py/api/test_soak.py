"""The soak of issue 11 point 4, CI-sized: scripts/soak for one minute against the tiny model on loopback
(mixed streaming and non-streaming requests, client aborts, malformed requests). Its checks: zero 5xx, every
malformed request answered with its 4xx, RSS flat after warm-up, all KV blocks free at the end (/metrics),
p99 /health latency under 100 ms, exit 0 on SIGTERM. The 30-minute run is recorded in docs/hardening.md."""
import json
import os
import pathlib
import subprocess
import sys

from k2_api_server import k2_bin

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_one_minute_soak(tmp_path):
    report_path = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "soak"), "--minutes", "1", "--max-requests",
                           "20000", "--report", str(report_path), "--log", str(tmp_path / "server.log")],
                          env={**os.environ, "K2_BIN": k2_bin()}, capture_output=True, text=True, timeout=400)
    assert report_path.exists(), proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    # Under scripts/test-sanitizers asan the RSS rule cannot hold: ASan's quarantine keeps freed memory by
    # design (up to 256 MiB). Every other check still applies there, and memory errors under load abort k2.
    exempt = {"rss_flat_after_warmup"} if "ASAN_OPTIONS" in os.environ else set()
    failed = [name for name, ok in report["checks"].items() if not ok and name not in exempt]
    assert not failed, f"failed checks {failed}:\n{json.dumps(report, indent=1)}"
    assert proc.returncode == 0 or exempt
    counts = report["counts"]
    # Every kind of traffic was exercised, not just the easy one. Under ASan the server is several times slower
    # (~130 requests in the minute on the loaded 2-core machine) and the unknown-model 404 is one malformed
    # request in ~11, so there each kind must occur at least once.
    least = 1 if exempt else 5
    for kind in ("stream", "plain", "stream_abort", "plain_abort", "malformed_400", "malformed_404"):
        assert counts.get(kind, 0) >= least, counts
