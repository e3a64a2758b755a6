#!/usr/bin/env python3
"""Trains the demo model (Kimi-K2's architecture at a small size: MLA, a dense first layer, then MoE layers with
16 routed experts + 1 shared behind a sigmoid noaux_tc router) with transformers' DeepseekV3ForCausalLM on
tokens.bin (make_tokenizer.py), then saves it in the exact Kimi-K2 checkpoint format: FP8 e4m3 weights with a
float32 weight_scale_inv per 128x128 block, BF16 embeddings/norms/router, F32 router bias, two shards + index.

The saved checkpoint is checked by loading its dequantized weights back into a fresh DeepseekV3ForCausalLM
(no missing or unexpected tensors; held-out loss close to the trained model's), and golden.json records that
reference's greedy continuations of a few prompts, which the k2 tests compare against.

usage: train.py TOKENS_BIN[.xz] OUT_DIR [--seconds 165] [--tokenizer-dir models/kimi-k2-demo]
Needs torch with a CUDA GPU, transformers (with DeepseekV3), safetensors, numpy; tiktoken for the samples.
"""
import argparse
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

NUM_SPECIAL = 256


def demo_config(vocab_size):
    """Kimi-K2's config.json (same keys and routing/rope settings as the real model) at demo size."""
    base = vocab_size - NUM_SPECIAL
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "vocab_size": vocab_size,
        "hidden_size": 256, "intermediate_size": 768, "moe_intermediate_size": 64, "num_hidden_layers": 6,
        "num_attention_heads": 4, "num_key_value_heads": 4, "n_shared_experts": 1, "n_routed_experts": 16,
        "ep_size": 1, "routed_scaling_factor": 2.827, "kv_lora_rank": 128, "q_lora_rank": 128,
        "qk_rope_head_dim": 32, "v_head_dim": 64, "qk_nope_head_dim": 64, "topk_method": "noaux_tc",
        "n_group": 1, "topk_group": 1, "num_experts_per_tok": 4, "moe_layer_freq": 1, "first_k_dense_replace": 1,
        "norm_topk_prob": True, "scoring_func": "sigmoid", "hidden_act": "silu", "max_position_embeddings": 131072,
        "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True, "pad_token_id": base + 255,
        "bos_token_id": base, "eos_token_id": base + 1, "tie_word_embeddings": False, "rope_theta": 50000.0,
        "rope_scaling": {"type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
                         "beta_fast": 1.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        "attention_bias": False, "attention_dropout": 0.0, "torch_dtype": "bfloat16",
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "weight_block_size": [128, 128]},
    }


def hf_config_dir(cfg):
    """config.json as transformers reads it (plain deepseek_v3, unquantized float32) in a temporary folder."""
    c = dict(cfg)
    c.pop("quantization_config")
    c["torch_dtype"] = "float32"
    c["model_type"] = "deepseek_v3"
    d = tempfile.mkdtemp(prefix="k2_demo_cfg")
    json.dump(c, open(os.path.join(d, "config.json"), "w"))
    return d


def build_model(cfg, log):
    """DeepseekV3ForCausalLM with the fastest attention/experts implementation that runs a training step here."""
    from transformers import AutoConfig, DeepseekV3ForCausalLM
    config = AutoConfig.from_pretrained(hf_config_dir(cfg))
    choices = ({"attn_implementation": "sdpa", "experts_implementation": "grouped_mm"},
               {"attn_implementation": "sdpa"}, {})
    for kwargs in choices:
        try:
            torch.manual_seed(0)
            model = DeepseekV3ForCausalLM._from_config(config, **kwargs).cuda()
            x = torch.randint(0, cfg["vocab_size"] - NUM_SPECIAL, (2, 64), device="cuda")  # [batch, seq]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x, use_cache=False).logits.float().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
            log(f"model: DeepseekV3ForCausalLM {kwargs or 'defaults'}")
            return model
        except Exception as e:  # an implementation this transformers/torch lacks
            log(f"model with {kwargs} failed: {type(e).__name__}: {str(e)[:300]}")
    raise RuntimeError("could not build DeepseekV3ForCausalLM")


class RouterBalancer:
    """DeepSeek-V3's auxiliary-loss-free balancing: after each step, each router's e_score_correction_bias moves
    by `speed` towards the experts that got fewer tokens than the mean."""

    def __init__(self, model, top_k, speed=1e-3):
        self.routers = [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]
        self.top_k, self.speed = top_k, speed
        self.loads = {}
        for router in self.routers:
            bias = router.e_score_correction_bias
            if isinstance(bias, torch.nn.Parameter):
                bias.requires_grad_(False)
            router.register_forward_hook(self.count)

    @torch.no_grad()
    def count(self, router, inputs, _output):
        if not self.routers:
            return
        try:
            self.count_one(router, inputs[0])
        except Exception as e:  # a router whose forward looks otherwise: train without balancing
            print(f"router balancing off: {type(e).__name__}: {e}", flush=True)
            self.routers = []

    def count_one(self, router, hidden):
        hidden = hidden.reshape(-1, router.weight.shape[1]).float()  # [num_tokens, hidden]
        scores = torch.sigmoid(hidden @ router.weight.float().t()) + router.e_score_correction_bias.float()
        chosen = scores.topk(self.top_k, dim=-1).indices  # [num_tokens, top_k]
        load = torch.bincount(chosen.flatten(), minlength=scores.shape[1]).float()
        self.loads[router] = self.loads.get(router, 0) + load

    @torch.no_grad()
    def step(self):
        spread = []
        for router, load in self.loads.items():
            router.e_score_correction_bias.add_(self.speed * torch.sign(load.mean() - load))
            spread.append((load.max() / load.mean().clamp(min=1)).item())
        self.loads = {}
        return max(spread) if spread else 0.0


def batches(tokens, batch, seq, device, gen):
    while True:
        starts = torch.randint(0, len(tokens) - seq - 1, (batch,), generator=gen)
        rows = np.stack([tokens[s:s + seq + 1] for s in starts.tolist()]).astype(np.int64)
        t = torch.from_numpy(rows).to(device, non_blocking=True)  # [batch, seq + 1]
        yield t[:, :-1], t[:, 1:]


@torch.no_grad()
def held_out_loss(model, tokens, seq=512, rows=64):
    model.eval()
    n = min(rows, (len(tokens) - 1) // seq)
    x = torch.from_numpy(tokens[:n * seq + 1].astype(np.int64)).cuda()
    inputs, targets = x[:-1].view(n, seq), x[1:].view(n, seq)  # [rows, seq]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(inputs, use_cache=False).logits.float()  # [rows, seq, vocab]
    model.train()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()


def train(model, tokens, args, log):
    torch.backends.cuda.matmul.allow_tf32 = True
    model.cuda().train()
    balancer = RouterBalancer(model, model.config.num_experts_per_tok)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=True)
    gen = torch.Generator().manual_seed(0)
    data = batches(tokens, args.batch, args.seq, "cuda", gen)
    start, step, warmup = time.time(), 0, 100
    while True:
        frac = (time.time() - start) / args.seconds
        if frac >= 1.0:
            break
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        inputs, targets = next(data)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(inputs, use_cache=False).logits  # [batch, seq, vocab]
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        spread = balancer.step()
        if step % 100 == 0 or step == 10:
            log(f"step {step} t={time.time() - start:.0f}s loss {loss.item():.3f} lr {lr:.2e} "
                f"max expert load/mean {spread:.2f}")
        step += 1
    log(f"trained {step} steps, {step * args.batch * args.seq / 1e6:.1f}M tokens in {time.time() - start:.0f}s")


# ---- Export in Kimi-K2's format ----

FP8_SUFFIXES = ("q_a_proj.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight", "kv_b_proj.weight",
                "o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def expected_names(cfg):
    """Kimi-K2's tensor names for this config (weights only; the FP8 scales are added when quantizing)."""
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [p + "self_attn." + n + ".weight" for n in ("q_a_proj", "q_a_layernorm", "q_b_proj",
                                                             "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj")]
        mlps = [p + "mlp."] if layer < cfg["first_k_dense_replace"] else \
            [p + f"mlp.experts.{e}." for e in range(cfg["n_routed_experts"])] + [p + "mlp.shared_experts."]
        if layer >= cfg["first_k_dense_replace"]:
            names += [p + "mlp.gate.weight", p + "mlp.gate.e_score_correction_bias"]
        names += [m + n + ".weight" for m in mlps for n in ("gate_proj", "up_proj", "down_proj")]
    return names


def checkpoint_tensors(model, cfg, swap_gate_up=False):
    """The model's weights under Kimi-K2's tensor names (per-expert tensors even where transformers fuses the
    experts into 3-D parameters), float32."""
    H, MI, E = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["n_routed_experts"]
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().float().cpu()
        m = re.match(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|gate_proj|up_proj|down_proj)(\.weight)?$", name)
        if m is None or t.dim() != 3:
            out[name] = t
            continue
        prefix, kind = m.group(1), m.group(2)
        rows = {"gate_up_proj": 2 * MI, "gate_proj": MI, "up_proj": MI, "down_proj": H}[kind]
        for e in range(E):
            w = t[e] if t.shape[1] == rows else t[e].t()  # [out_features, in_features] as nn.Linear stores it
            if kind == "gate_up_proj":
                gate, up = (w[MI:], w[:MI]) if swap_gate_up else (w[:MI], w[MI:])
                out[f"{prefix}.{e}.gate_proj.weight"] = gate.contiguous()
                out[f"{prefix}.{e}.up_proj.weight"] = up.contiguous()
            else:
                out[f"{prefix}.{e}.{kind}.weight"] = w.contiguous()
    for name, module in model.named_modules():  # the router bias may be a non-persistent buffer
        if hasattr(module, "e_score_correction_bias") and name + ".e_score_correction_bias" not in out:
            out[name + ".e_score_correction_bias"] = module.e_score_correction_bias.detach().float().cpu()
    expected = expected_names(cfg)
    missing = [n for n in expected if n not in out]
    extra = [n for n in out if n not in set(expected)]
    if missing or extra:
        print(f"export: missing {missing[:8]} ({len(missing)}), not exported {extra[:8]} ({len(extra)})", flush=True)
    return {n: out[n] for n in expected if n in out}


def quant_block_fp8(w):
    """128x128 block e4m3 quantization (as tests/fixtures' make_model_goldens.py): (q, scale_inv, dequantized)."""
    out, inp = w.shape
    bo, bi = math.ceil(out / 128), math.ceil(inp / 128)
    pad = torch.zeros(bo * 128, bi * 128, dtype=torch.float32)
    pad[:out, :inp] = w
    blocks = pad.view(bo, 128, bi, 128)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale = amax / 448.0
    q = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn)
    deq = (q.float() * scale[:, None, :, None]).view(bo * 128, bi * 128)[:out, :inp].contiguous()
    return q.view(bo * 128, bi * 128)[:out, :inp].contiguous(), scale.float().contiguous(), deq


def quantize(tensors):
    """(checkpoint tensors in their stored dtypes, the dequantized float32 weights the checkpoint means)."""
    ckpt, deq = {}, {}
    for name, t in tensors.items():
        if name.endswith(FP8_SUFFIXES) and ".mlp.gate." not in name:
            q, s, d = quant_block_fp8(t)
            ckpt[name], ckpt[name + "_scale_inv"], deq[name] = q, s, d
        elif name.endswith("e_score_correction_bias"):
            ckpt[name] = t.float()
            deq[name] = ckpt[name]
        else:
            ckpt[name] = t.to(torch.bfloat16)
            deq[name] = ckpt[name].float()
    return ckpt, deq


def save_checkpoint(ckpt, cfg, out_dir, shards=2):
    from safetensors.torch import save_file
    names = list(ckpt)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: ckpt[n].contiguous() for n in names[s * per:(s + 1) * per]}
        save_file(part, os.path.join(out_dir, fn), metadata={"format": "pt"})
        for n, t in part.items():
            weight_map[n] = fn
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    json.dump(index, open(os.path.join(out_dir, "model.safetensors.index.json"), "w"), indent=1)
    json.dump(cfg, open(os.path.join(out_dir, "config.json"), "w"), indent=1)
    base = cfg["vocab_size"] - NUM_SPECIAL
    # Like Kimi-K2-Instruct: generation stops at <|im_end|> (base + 2); [EOS] stops it through config.json.
    json.dump({"bos_token_id": base, "eos_token_id": base + 2, "max_length": 131072,
               "temperature": 0.6}, open(os.path.join(out_dir, "generation_config.json"), "w"), indent=1)
    return total


def reference_model(cfg, deq):
    """transformers' DeepseekV3ForCausalLM loaded from the dequantized checkpoint, float32, eager attention."""
    from safetensors.torch import save_file
    from transformers import DeepseekV3ForCausalLM
    d = hf_config_dir(cfg)
    save_file({k: v.contiguous() for k, v in deq.items()}, os.path.join(d, "model.safetensors"))
    try:
        model, info = DeepseekV3ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                            output_loading_info=True)
    except TypeError:
        model, info = DeepseekV3ForCausalLM.from_pretrained(d, torch_dtype=torch.float32,
                                                            attn_implementation="eager", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    return model.cuda().eval(), problems


@torch.no_grad()
def greedy(model, ids, n):
    """n greedy tokens by full recompute, with each step's gap between the best and second-best logit."""
    cur, margins = list(ids), []
    for _ in range(n):
        top2 = model(torch.tensor([cur], device="cuda"), use_cache=False).logits[0, -1].float().topk(2)
        cur.append(int(top2.indices[0]))
        margins.append(float(top2.values[0] - top2.values[1]))
    return cur[len(ids):], margins


def golden_prompts(tokenizer_dir, base):
    """A raw-text prompt and a chat prompt, encoded by Kimi's tokenizer set up in pip's tiktoken."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo / "tests" / "py" / "tokenizer"))
    from k2_tok import kimi_tiktoken
    enc = kimi_tiktoken(pathlib.Path(tokenizer_dir))
    chat = ("<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>"
            "<|im_user|>user<|im_middle|>What does the file system do?<|im_end|><|im_assistant|>assistant<|im_middle|>")
    texts = ["The program reads the configuration file and", chat]
    return enc, [{"text": t, "ids": enc.encode(t, allowed_special="all")} for t in texts]


def export_and_check(model, cfg, val, out_dir, golden_tokens, args, log):
    torch.backends.cuda.matmul.allow_tf32 = False  # the goldens are float32 references
    trained_loss = held_out_loss(model, val)
    log(f"held-out loss of the trained model (bf16 autocast): {trained_loss:.3f}")
    model.cpu()
    best = None
    for swap in (False, True):
        ckpt, deq = quantize(checkpoint_tensors(model, cfg, swap_gate_up=swap))
        ref, problems = reference_model(cfg, deq)
        loss = held_out_loss(ref, val)
        log(f"reloaded FP8 checkpoint (swap_gate_up={swap}): held-out loss {loss:.3f}, loading problems {problems}")
        if best is None or loss < best[0]:
            best = (loss, ckpt, ref, problems)
        if not problems and loss < trained_loss + 0.15:
            break
        del ref
    loss, ckpt, ref, problems = best
    if problems or loss > trained_loss + 0.15:
        log("WARNING: the exported checkpoint does not reproduce the trained model; saving the closest")
    os.makedirs(out_dir, exist_ok=True)
    total = save_checkpoint(ckpt, cfg, out_dir)
    log(f"saved {len(ckpt)} tensors, {total / 1e6:.1f} MB -> {out_dir}")
    enc, prompts = golden_prompts(args.tokenizer_dir, cfg["vocab_size"] - NUM_SPECIAL)
    gold = {"source": "transformers DeepseekV3ForCausalLM, float32, eager attention, weights = the dequantized "
                      "FP8 blocks / bf16 as stored; greedy by full recompute", "held_out_loss": loss, "prompts": []}
    for p in prompts:
        cont, margins = greedy(ref, p["ids"], golden_tokens)
        gold["prompts"].append({"text": p["text"], "ids": p["ids"], "greedy": cont, "top2_margins": margins})
        log(f"greedy after {p['text'][-60:]!r}: {enc.decode(cont)!r}")
    json.dump(gold, open(os.path.join(out_dir, "golden.json"), "w"), indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokens_bin")
    ap.add_argument("out_dir")
    ap.add_argument("--tokenizer-dir", default=str(pathlib.Path(__file__).resolve().parents[2] / "models" / "kimi-k2-demo"))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=165)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--golden-tokens", type=int, default=32)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    log_file = open(os.path.join(args.out_dir, "train_log.txt"), "w")

    def log(msg):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    torch.manual_seed(0)
    if args.tokens_bin.endswith(".xz"):
        import lzma
        tokens = np.frombuffer(lzma.open(args.tokens_bin).read(), dtype=np.uint16)
    else:
        tokens = np.fromfile(args.tokens_bin, dtype=np.uint16)
    split = int(len(tokens) * 0.99)
    train_tokens, val = tokens[:split], tokens[split:]
    log(f"{len(tokens)} tokens ({len(train_tokens)} train, {len(val)} held out); torch {torch.__version__}, "
        f"{torch.cuda.get_device_name()}")
    cfg = demo_config(args.vocab)
    model = build_model(cfg, log)
    log(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    # The whole export path first, on the untrained weights: a broken export costs seconds, not the training.
    export_and_check(model, cfg, val, tempfile.mkdtemp(prefix="k2_demo_precheck"), 2, args, log)
    train(model, train_tokens, args, log)
    export_and_check(model, cfg, val, args.out_dir, args.golden_tokens, args, log)


if __name__ == "__main__":
    main()
