"""`k2 synth` and `k2 inspect` end to end, checked with the reference safetensors library and tiktoken.

The synthesized model is small (the tiny fixture's dimensions, 2 layers, 4 experts) so it runs in CI; the
full-size preset is checked as a plan in tests/io/test_synth.cpp and by hand (docs/perf/synth.md).
"""
import json
import math
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import safetensors
from tiktoken.load import load_tiktoken_bpe

REPO = pathlib.Path(__file__).resolve().parents[3]
TINY = REPO / "tests" / "fixtures" / "tiny-kimi-k2"
O200K = REPO / "tests" / "fixtures" / "tokenizer" / "kimi-o200k" / "tiktoken.model"


def k2(*args, env=None):
    binary = os.environ.get("K2_BIN")
    if not binary:
        pytest.fail("K2_BIN is not set (path to the built k2 binary); scripts/test sets it")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def small_config():
    config = json.loads((TINY / "config.json").read_text())
    config.update(num_hidden_layers=2, n_routed_experts=4, num_experts_per_tok=2)
    return config


def expected_layout(c):
    """name -> (dtype, shape) from reference/kimi_k2.md §2.2, written out independently of the C++ schema."""
    h, heads = c["hidden_size"], c["num_attention_heads"]
    out = {"model.embed_tokens.weight": ("BF16", [c["vocab_size"], h]), "model.norm.weight": ("BF16", [h]),
           "lm_head.weight": ("BF16", [c["vocab_size"], h])}

    def fp8(name, rows, cols):
        out[name] = ("F8_E4M3", [rows, cols])
        out[name + "_scale_inv"] = ("F32", [math.ceil(rows / 128), math.ceil(cols / 128)])

    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out[p + "input_layernorm.weight"] = ("BF16", [h])
        out[p + "post_attention_layernorm.weight"] = ("BF16", [h])
        fp8(p + "self_attn.q_a_proj.weight", c["q_lora_rank"], h)
        out[p + "self_attn.q_a_layernorm.weight"] = ("BF16", [c["q_lora_rank"]])
        fp8(p + "self_attn.q_b_proj.weight", heads * (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]), c["q_lora_rank"])
        fp8(p + "self_attn.kv_a_proj_with_mqa.weight", c["kv_lora_rank"] + c["qk_rope_head_dim"], h)
        out[p + "self_attn.kv_a_layernorm.weight"] = ("BF16", [c["kv_lora_rank"]])
        fp8(p + "self_attn.kv_b_proj.weight", heads * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"])
        fp8(p + "self_attn.o_proj.weight", h, heads * c["v_head_dim"])
        if layer < c["first_k_dense_replace"]:
            mlps = [(p + "mlp.", c["intermediate_size"])]
        else:
            out[p + "mlp.gate.weight"] = ("BF16", [c["n_routed_experts"], h])
            out[p + "mlp.gate.e_score_correction_bias"] = ("F32", [c["n_routed_experts"]])
            mlps = [(f"{p}mlp.experts.{e}.", c["moe_intermediate_size"]) for e in range(c["n_routed_experts"])]
            mlps.append((p + "mlp.shared_experts.", c["moe_intermediate_size"] * c["n_shared_experts"]))
        for prefix, inter in mlps:
            fp8(prefix + "gate_proj.weight", inter, h)
            fp8(prefix + "up_proj.weight", inter, h)
            fp8(prefix + "down_proj.weight", h, inter)
    return out


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    config = root / "small.json"
    config.write_text(json.dumps(small_config()))
    out = root / "model"
    r = k2("synth", out, "--config", config, "--max-shard-size", "1MB", "--seed", "3")
    assert r.returncode == 0, r.stderr
    return out


def test_shards_pass_the_reference_reader_and_match_the_layout(synth_dir):
    index = json.loads((synth_dir / "model.safetensors.index.json").read_text())
    expected = expected_layout(small_config())
    assert set(index["weight_map"]) == set(expected)
    seen, total = {}, 0
    shards = sorted(synth_dir.glob("model-*.safetensors"))
    assert len(shards) > 3
    for shard in shards:
        assert shard.name.startswith("model-") and shard.name.endswith(f"-of-{len(shards):05d}.safetensors")
        for name, t in safetensors.deserialize(shard.read_bytes()):  # the reference validation
            assert index["weight_map"][name] == shard.name
            assert (t["dtype"], list(t["shape"])) == expected[name], name
            seen[name] = t
            total += len(t["data"])
    assert set(seen) == set(expected)
    assert index["metadata"]["total_size"] == total
    for name, t in seen.items():
        data = np.frombuffer(t["data"], dtype=np.uint8)
        if t["dtype"] == "F8_E4M3":
            assert not np.any((data & 0x7F) == 0x7F), f"{name}: NaN code"
        elif name.endswith("norm.weight"):
            assert np.all(np.frombuffer(t["data"], dtype=np.uint16) == 0x3F80), name  # bf16 1.0


def test_tokenizer_files(synth_dir):
    config = small_config()
    base = config["vocab_size"] - 256
    ranks = load_tiktoken_bpe(str(synth_dir / "tiktoken.model"))
    o200k = load_tiktoken_bpe(str(O200K))
    assert len(ranks) == base
    assert ranks == {token: rank for token, rank in o200k.items() if rank < base}
    tok = json.loads((synth_dir / "tokenizer_config.json").read_text())
    names = {int(k): v["content"] for k, v in tok["added_tokens_decoder"].items()}
    assert names[base] == "[BOS]" and names[base + 2] == "<|im_end|>" and names[base + 17] == "<|im_middle|>"
    assert json.loads((synth_dir / "config.json").read_text()) == config


def test_inspect_accepts_the_synthesized_model(synth_dir):
    r = k2("inspect", synth_dir)
    assert r.returncode == 0, r.stderr
    assert "checks: OK" in r.stdout
    assert "model.layers.{1}.mlp.experts.{0-3}.down_proj.weight" in r.stdout


def test_inspect_reports_a_truncated_shard(synth_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(synth_dir, broken)
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    new_data_size = len(data) - 8 - header_len - 100
    os.truncate(shard, len(data) - 100)
    r = k2("inspect", broken)
    assert r.returncode == 1
    assert shard.name in r.stderr and "truncated" in r.stderr
    header = json.loads(data[8:8 + header_len])
    first_cut = min((t["data_offsets"][0], name) for name, t in header.items()
                    if name != "__metadata__" and t["data_offsets"][1] > new_data_size)[1]
    assert f"'{first_cut}'" in r.stderr


def test_inspect_resolves_a_hub_id_from_the_cache(synth_dir, tmp_path):
    repo = tmp_path / "hub" / "models--moonshotai--Kimi-K2-Instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots").mkdir()
    os.symlink(synth_dir, repo / "snapshots" / "abc123")  # huggingface_hub links snapshot files the same way
    r = k2("inspect", "moonshotai/Kimi-K2-Instruct", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 0, r.stderr
    r = k2("inspect", "moonshotai/Kimi-K2-Thinking", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 1
    assert str(tmp_path / "hub" / "models--moonshotai--Kimi-K2-Thinking" / "refs" / "main") in r.stderr
