"""`k2 bench serve --seed S` draws what `vllm bench serve --seed S` draws: vLLM takes the random dataset's
lengths and offsets from numpy.random.default_rng(S) and the arrival gaps from np.random.gamma after
np.random.seed(S) (reference/vllm.md §4.2-4.3). NumPy itself is the reference here: the stored goldens of the
C++ unit test (tests/fixtures/numpy_random/) are re-generated and compared, and the lengths `k2 bench serve`
sends to a server are compared with NumPy's draws for the same seed."""
import json
import math
import pathlib
import subprocess
import sys

import numpy as np

from k2_bench_util import FakeServer, REPO, load_result, run_bench

GOLDENS = REPO / "tests" / "fixtures" / "numpy_random"


def test_stored_goldens_are_numpys_numbers():
    proc = subprocess.run([sys.executable, str(GOLDENS / "gen_goldens.py")], capture_output=True, text=True,
                          timeout=120, check=True)
    assert json.loads(proc.stdout) == json.loads((GOLDENS / "numpy_random.json").read_text())


def vllm_lengths(seed, num_prompts, input_len, output_len, ratio):
    """RandomDataset.get_sampling_params (the Kimi tokenizer adds no special tokens to a plain encode)."""
    rng = np.random.default_rng(seed)
    input_lens = rng.integers(math.floor(input_len * (1 - ratio)), math.ceil(input_len * (1 + ratio)) + 1,
                              size=num_prompts)
    output_lens = rng.integers(max(math.floor(output_len * (1 - ratio)), 1),
                               max(math.ceil(output_len * (1 + ratio)), 1) + 1, size=num_prompts)
    return [int(v) for v in input_lens], [int(v) for v in output_lens]


def test_seeded_lengths_are_numpys(tmp_path):
    server = FakeServer("--ttft-ms", "5", "--itl-ms", "1", "--prompt-tokens", "-1")
    try:
        num_prompts, seed = 12, 11
        run_bench(["--base-url", server.base, "--dataset-name", "random", "--random-input-len", "60",
                   "--random-output-len", "10", "--random-range-ratio", "0.5", "--num-prompts", str(num_prompts),
                   "--seed", str(seed), "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
                   "--disable-tqdm"])
        received = {r["headers"]["x-request-id"]: r["body"] for r in server.requests()}
    finally:
        server.stop()
    input_lens, output_lens = vllm_lengths(seed, num_prompts, 60, 10, 0.5)
    # max_tokens of request i is NumPy's i-th output length (x-request-id is the request's index).
    assert [received[f"benchmark-serving{i}"]["max_tokens"] for i in range(num_prompts)] == output_lens
    assert len(set(output_lens)) > 3  # the draws vary, so the comparison means something
    # Prompt lengths are the drawn input lengths after decode -> re-encode, which converges to the target for
    # nearly every prompt (vLLM warns about the rest; k2 counts with the same tokenizer).
    _, result = load_result(tmp_path)
    matches = sum(a == b for a, b in zip(result["input_lens"], input_lens))
    assert matches >= num_prompts - 1, (result["input_lens"], input_lens)
    # Another seed gives NumPy's other numbers.
    assert vllm_lengths(seed + 1, num_prompts, 60, 10, 0.5)[1] != output_lens
