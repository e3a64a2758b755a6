#!/usr/bin/env bash
# CPU reference backend throughput on a bundled model: prefill and decode tokens/s from
# `k2 generate --timing` (one sequence, fp32 KV cache, greedy), best of N runs, as a markdown table row.
# usage: bench/cpu_model.sh [MODEL_DIR] [PROMPT_TOKENS] [DECODE_TOKENS] [RUNS]
# env: K2_BIN (default build/k2), OMP_NUM_THREADS (default: all cores), OMP_WAIT_POLICY (default: passive;
#      libgomp's default spinning collapses when other processes share the cores, see docs/perf/cpu.md)
set -euo pipefail
cd "$(dirname "$0")/.."
K2_BIN="${K2_BIN:-build/k2}"
MODEL="${1:-tests/fixtures/tiny-kimi-k2}"
PROMPT_TOKENS="${2:-200}"
DECODE_TOKENS="${3:-128}"
RUNS="${4:-5}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc --all)}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
[[ -x "$K2_BIN" ]] || { echo "no k2 binary at $K2_BIN (build it, or set K2_BIN)" >&2; exit 1; }
# A fixed pseudo-random prompt of base-vocabulary ids (no specials, so nothing stops the decode).
IDS=$(python3 -c "import random; r = random.Random(0); print(','.join(str(r.randrange(0, 3840)) for _ in range($PROMPT_TOKENS)))")
best_prefill=0
best_decode=0
for _ in $(seq "$RUNS"); do
  log=$("$K2_BIN" generate "$MODEL" --token-ids "$IDS" --max-tokens "$((DECODE_TOKENS + 1))" --temperature 0 \
        --ignore-eos --timing 2>&1 >/dev/null)
  prefill=$(sed -n 's/^prefill: .* = \([0-9.]*\) tokens\/s$/\1/p' <<<"$log")
  decode=$(sed -n 's/^decode: .* = \([0-9.]*\) tokens\/s$/\1/p' <<<"$log")
  best_prefill=$(python3 -c "print(max($best_prefill, $prefill))")
  best_decode=$(python3 -c "print(max($best_decode, $decode))")
done
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "| date | CPU | cores | threads, wait policy | model | prompt | prefill tok/s | decode steps | decode tok/s | load avg |"
echo "|---|---|---|---|---|---|---|---|---|---|"
echo "| $(date -u +%Y-%m-%d) | $cpu | $(nproc --all) | $OMP_NUM_THREADS $OMP_WAIT_POLICY | $(basename "$MODEL") | $PROMPT_TOKENS | $best_prefill | $DECODE_TOKENS | $best_decode | $load |"
