#!/usr/bin/env python3
"""Transformers reference point for docs/perf/e2e.md: one batched decode step of DeepseekV3 / Kimi-K2.

Builds transformers' own DeepseekV3ForCausalLM (bf16, eager attention, the model's own MoE code) from the
config.json of a checkpoint dir written by `k2 synth --preset kimi-k2 --layers N`, WITHOUT loading its FP8
weights: parameters are allocated directly on the device and filled with random values (normal(0, 0.02),
norms = 1). The KV cache (transformers' DynamicCache) is pre-filled with random values for `--context`
tokens per sequence, then `--steps` decode forwards of [batch, 1] tokens are timed; after every step the
cache is cropped back to `--context`, so every step sees the same context.

Usage:
  python3 bench/hf_decode_step.py --model DIR --batch 16 --context 8192 --steps 10 --warmup 3 \
      --out FILE.json [--prefill-tokens 8192] [--device cuda] [--experts-impl default,eager]
  (--experts-impl: comma list, each timed in turn; 'default' = what from_pretrained picks, grouped_mm in 5.x;
  'eager' = the per-expert loop in modeling_deepseek_v3.py; the first one is the headline in the JSON)
  python3 bench/hf_decode_step.py --model DIR --dry-run   # build on the meta device only, print sizes

The cache layout is not hard-coded: transformers versions differ (older ones cache per-head keys
[b, heads, seq, qk_head_dim] and values [b, heads, seq, v_head_dim]; newer ones cache MLA latents
[b, 1, seq, kv_lora_rank] / [b, 1, seq, qk_rope_head_dim]). A 1-token probe forward discovers the shapes.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import os
import platform
import statistics
import sys
import time

# Keys of a Kimi-K2 / DeepSeek-V3 config.json that must not reach DeepseekV3Config: the FP8 block quantization
# (we build plain bf16 weights), the unregistered model_type "kimi_k2", and remote-code/bookkeeping fields.
_DROPPED_CONFIG_KEYS = (
    "quantization_config",
    "model_type",
    "architectures",
    "auto_map",
    "transformers_version",
    "torch_dtype",
    "dtype",
)


def _die(msg: str) -> None:
    print(f"hf_decode_step: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _import_libs():
    try:
        import torch
    except ImportError as e:
        _die(f"cannot import torch ({e}); install PyTorch first")
    try:
        import transformers
    except ImportError as e:
        _die(f"cannot import transformers ({e}); `pip install transformers`")
    missing = [n for n in ("DeepseekV3Config", "DeepseekV3ForCausalLM") if not hasattr(transformers, n)]
    if missing:
        _die(
            f"transformers {transformers.__version__} has no {', '.join(missing)} "
            "(DeepseekV3 was added in transformers 4.50; this script targets 5.x)"
        )
    try:
        from transformers import DynamicCache  # noqa: F401
    except ImportError:
        _die(f"transformers {transformers.__version__} has no DynamicCache")
    import torch

    return torch, transformers


# ----------------------------------------------------------------------------------------------------------
# Model construction
# ----------------------------------------------------------------------------------------------------------


def load_config(transformers, model_dir: str):
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        _die(f"{path}: not found (--model must be a checkpoint dir with a config.json)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        _die(f"{path}: invalid JSON ({e})")
    arch = raw.get("architectures") or []
    if arch and "DeepseekV3ForCausalLM" not in arch:
        print(f"hf_decode_step: warning: {path}: architectures={arch}, building DeepseekV3ForCausalLM anyway")
    fields = {k: v for k, v in raw.items() if k not in _DROPPED_CONFIG_KEYS}
    # The reference is the plain decoder: no MTP head even if the checkpoint has one.
    fields["num_nextn_predict_layers"] = 0
    fields["attn_implementation"] = "eager"
    try:
        cfg = transformers.DeepseekV3Config(**fields)
    except (TypeError, ValueError) as e:
        _die(f"{path}: DeepseekV3Config rejected the config ({type(e).__name__}: {e})")
    return raw, cfg


def _rebuild_rotary(torch, model, cfg, device) -> None:
    # Rotary inv_freq buffers are computed in __init__, so on the meta device they hold nothing; to_empty()
    # leaves garbage. Rebuild each rotary module on the device (in fp32, as __init__ would) and take its buffers.
    for name, mod in model.named_modules():
        if "Rotary" not in type(mod).__name__:
            continue
        with torch.device(device):
            fresh = type(mod)(config=cfg)
        for bname, buf in fresh.named_buffers(recurse=False):
            mod._buffers[bname] = buf
        if hasattr(fresh, "attention_scaling"):
            mod.attention_scaling = fresh.attention_scaling


def _keep_fp32(torch, model) -> list[str]:
    # from_pretrained keeps these in fp32 (_keep_in_fp32_modules[_strict]); mirror it so the router matches.
    patterns = list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    patterns += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    kept = []
    if not patterns:
        return kept
    for mname, mod in model.named_modules():
        for pname, p in list(mod._parameters.items()):
            full = f"{mname}.{pname}" if mname else pname
            if p is not None and p.dtype != torch.float32 and any(pat in full for pat in patterns):
                mod._parameters[pname] = torch.nn.Parameter(p.to(torch.float32), requires_grad=False)
                kept.append(full)
        for bname, b in list(mod._buffers.items()):
            full = f"{mname}.{bname}" if mname else bname
            if (
                b is not None
                and b.is_floating_point()
                and b.dtype != torch.float32
                and any(pat in full for pat in patterns)
            ):
                mod._buffers[bname] = b.to(torch.float32)
                kept.append(full)
    return kept


def build_model(torch, transformers, cfg, device: str, materialize: bool):
    """DeepseekV3ForCausalLM in bf16 on `device` with random weights (or left on meta if not materialize)."""
    prev_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = transformers.DeepseekV3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev_dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _keep_fp32(torch, model)
    attn = getattr(model.config, "_attn_implementation", None)
    if attn != "eager":
        _die(f"model built with attn_implementation={attn!r}, expected 'eager'")
    if not materialize:
        return model
    model.to_empty(device=device)
    init_random_weights(torch, model, cfg, device)
    return model


def init_random_weights(torch, model, cfg, device: str) -> None:
    gen_std = 0.02
    with torch.no_grad():
        for mname, mod in model.named_modules():
            is_norm = type(mod).__name__.endswith("RMSNorm") or type(mod).__name__.endswith("LayerNorm")
            for pname, p in mod.named_parameters(recurse=False):
                if is_norm:
                    p.fill_(1.0)
                elif pname == "bias":
                    p.zero_()
                else:
                    p.normal_(0.0, gen_std)
            for bname, b in mod.named_buffers(recurse=False):
                if b is not None:
                    b.zero_()  # e_score_correction_bias; rotary buffers are rebuilt just below
        _rebuild_rotary(torch, model, cfg, device)


# ----------------------------------------------------------------------------------------------------------
# Cache helpers (version-agnostic)
# ----------------------------------------------------------------------------------------------------------


def new_cache(transformers, cfg):
    try:
        return transformers.DynamicCache(config=cfg)
    except TypeError:
        return transformers.DynamicCache()


def cache_layer_tensors(cache, idx: int):
    layers = getattr(cache, "layers", None)
    if layers is not None and len(layers) > idx:
        return layers[idx].keys, layers[idx].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[idx], cache.value_cache[idx]
    _die(f"cannot read layer {idx} of {type(cache).__name__} (no .layers[i].keys nor .key_cache)")


def crop_cache(cache, target_len: int) -> None:
    cur = cache.get_seq_length()
    if cur == target_len:
        return
    # A negative argument means "remove that many tokens" both in 4.x/early 5.x (crop(max_length), negative =
    # relative) and in later 5.x (crop(tokens_to_remove), positive raises).
    cache.crop(-(cur - target_len))
    if cache.get_seq_length() != target_len:
        _die(f"DynamicCache.crop left {cache.get_seq_length()} tokens, expected {target_len}")


def forward_params(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def cache_kwarg_name(params: set[str]) -> str:
    # transformers >= ~5.2x renamed past_key_values -> cache (past_key_values still accepted with a warning).
    return "cache" if "cache" in params else "past_key_values"


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------


class Timer:
    def __init__(self, torch, device: str):
        self.torch = torch
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time_ms(self, fn) -> float:
        self.sync()
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def mark(self):
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def elapsed_ms(self, a, b) -> float:
        if self.cuda:
            return float(a.elapsed_time(b))
        return (b - a) * 1e3


class ModuleTimer:
    """Forward pre/post hooks on the decoder layers and their attention / MLP (and MoE parts)."""

    def __init__(self, timer: Timer, model, cfg):
        self.timer = timer
        self.handles = []
        self.marks: dict[str, list] = {}
        self.samples: dict[str, list[float]] = {}
        for i, layer in enumerate(model.model.layers):
            self._attach(f"layer{i}", layer)
            self._attach(f"layer{i}.attn", layer.self_attn)
            self._attach(f"layer{i}.mlp", layer.mlp)
            for part in ("gate", "experts", "shared_experts"):
                sub = getattr(layer.mlp, part, None)
                if sub is not None and i >= cfg.first_k_dense_replace:
                    self._attach(f"layer{i}.mlp.{part}", sub)

    def _attach(self, key: str, mod) -> None:
        def pre(_m, _args):
            self.marks.setdefault(key, []).append([self.timer.mark(), None])

        def post(_m, _args, _out):
            self.marks[key][-1][1] = self.timer.mark()

        self.handles.append(mod.register_forward_pre_hook(pre))
        self.handles.append(mod.register_forward_hook(post))

    def collect(self) -> None:
        self.timer.sync()
        for key, pairs in self.marks.items():
            total = sum(self.timer.elapsed_ms(a, b) for a, b in pairs if b is not None)
            self.samples.setdefault(key, []).append(total)
        self.marks.clear()

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def median(self, key: str) -> float | None:
        s = self.samples.get(key)
        return statistics.median(s) if s else None


def _stats(samples: list[float]) -> dict:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "mean": statistics.fmean(samples),
        "max": max(samples),
        "all": [round(x, 4) for x in samples],
    }


def _mem_reset(torch, device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _mem_peak(torch, device: str) -> int | None:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return None


def _gib(n: int | None) -> str:
    if n is None:
        return "n/a (cpu)"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


# ----------------------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------------------


def probe_cache_layout(torch, transformers, model, cfg, batch: int, device: str, kw_name: str):
    """Run one [batch, 1] token through a fresh cache; return per-layer (key_shape, value_shape, dtypes)."""
    cache = new_cache(transformers, cfg)
    ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, **{kw_name: cache})
    layout = []
    for i in range(cfg.num_hidden_layers):
        k, v = cache_layer_tensors(cache, i)
        if k is None or k.dim() != 4 or k.shape[-2] != 1 or v.shape[-2] != 1:
            _die(f"unexpected cache tensors in layer {i}: keys {tuple(k.shape)}, values {tuple(v.shape)}")
        layout.append((tuple(k.shape), tuple(v.shape), k.dtype, v.dtype))
    del cache
    return layout


def fill_cache(torch, transformers, cfg, layout, context: int, device: str):
    cache = new_cache(transformers, cfg)
    total = 0
    with torch.inference_mode():
        for i, (ks, vs, kd, vd) in enumerate(layout):
            k = torch.randn((*ks[:2], context, ks[3]), dtype=kd, device=device)
            v = torch.randn((*vs[:2], context, vs[3]), dtype=vd, device=device)
            cache.update(k, v, i)
            total += k.numel() * k.element_size() + v.numel() * v.element_size()
            del k, v
    if cache.get_seq_length() != context:
        _die(f"pre-filled cache reports {cache.get_seq_length()} tokens, expected {context}")
    return cache, total


def verify_decode_step(torch, model, step, cache, args) -> None:
    """One untimed step: attention must see context + 1 keys, logits must be finite, the cache must grow by 1."""
    seen = {}

    def grab(_m, _args, out):
        w = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if w is not None:
            seen["kv_len"] = w.shape[-1]

    h = model.model.layers[0].self_attn.register_forward_hook(grab)
    try:
        with torch.inference_mode():
            out = step()
            finite = bool(torch.isfinite(out.logits).all())
    finally:
        h.remove()
    if cache.get_seq_length() != args.context + 1:
        _die(f"decode step grew the cache to {cache.get_seq_length()}, expected {args.context + 1}")
    if "kv_len" in seen and seen["kv_len"] != args.context + 1:
        _die(f"layer 0 attention saw {seen['kv_len']} keys, expected context + 1 = {args.context + 1}")
    if not finite:
        _die("decode logits are not finite (random-weight init went wrong?)")
    crop_cache(cache, args.context)


def run_decode(torch, transformers, model, cfg, args, timer: Timer, params: set[str]) -> dict:
    kw_name = cache_kwarg_name(params)
    dev = args.device
    layout = probe_cache_layout(torch, transformers, model, cfg, args.batch, dev, kw_name)
    _mem_reset(torch, dev)
    cache, cache_bytes = fill_cache(torch, transformers, cfg, layout, args.context, dev)
    gen = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, 1), generator=gen).to(dev)
    kwargs = {
        "input_ids": ids,
        "position_ids": torch.full((args.batch, 1), args.context, dtype=torch.long, device=dev),
        "use_cache": True,
        kw_name: cache,
    }
    if "cache_position" in params:
        kwargs["cache_position"] = torch.tensor([args.context], dtype=torch.long, device=dev)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1

    def step():
        out = model(**kwargs)
        return out

    verify_decode_step(torch, model, step, cache, args)
    samples = []
    with torch.inference_mode():
        for it in range(args.warmup + args.steps):
            ms = timer.time_ms(step)
            if cache.get_seq_length() != args.context + 1:
                _die(f"decode step grew the cache to {cache.get_seq_length()}, expected {args.context + 1}")
            crop_cache(cache, args.context)
            if it >= args.warmup:
                samples.append(ms)
        # Breakdown in separate passes so the hooks cannot disturb the headline numbers.
        mt = ModuleTimer(timer, model, cfg)
        try:
            for _ in range(max(1, min(args.steps, 5))):
                step()
                mt.collect()
                crop_cache(cache, args.context)
        finally:
            mt.detach()
    peak = _mem_peak(torch, dev)
    n_layers = cfg.num_hidden_layers
    st = _stats(samples)
    res = {
        "batch": args.batch,
        "context": args.context,
        "steps": args.steps,
        "warmup": args.warmup,
        "cache_kwarg": kw_name,
        "cache_layout_layer0": {
            "keys": list(layout[0][0][:2]) + ["seq", layout[0][0][3]],
            "values": list(layout[0][1][:2]) + ["seq", layout[0][1][3]],
        },
        "kv_cache_bytes": cache_bytes,
        "ms_per_step": st,
        "ms_per_layer_median": st["median"] / n_layers,
        "ms_per_layer_min": st["min"] / n_layers,
        "tokens_per_s": args.batch * 1e3 / st["median"],
        "breakdown": _breakdown(mt, cfg),
        "max_memory_allocated_bytes": peak,
    }
    return res


def _breakdown(mt: ModuleTimer, cfg) -> dict:
    n = cfg.num_hidden_layers
    k = min(cfg.first_k_dense_replace, n)
    out = {"per_layer_ms_median": [mt.median(f"layer{i}") for i in range(n)]}

    def summarize(idx: list[int]) -> dict | None:
        if not idx:
            return None
        d = {"layers": idx}
        for key in ("", ".attn", ".mlp", ".mlp.gate", ".mlp.experts", ".mlp.shared_experts"):
            vals = [mt.median(f"layer{i}{key}") for i in idx]
            vals = [v for v in vals if v is not None]
            if vals:
                d[("layer" if key == "" else key[1:]) + "_ms"] = statistics.fmean(vals)
        return d

    out["dense"] = summarize(list(range(k)))
    out["moe"] = summarize(list(range(k, n)))
    layer_sum = sum(v for v in out["per_layer_ms_median"] if v is not None)
    out["layers_sum_ms"] = layer_sum
    return out


def run_prefill(torch, model, cfg, args, timer: Timer, params: set[str]) -> dict:
    dev = args.device
    _mem_reset(torch, dev)
    n = args.prefill_tokens
    gen = torch.Generator(device="cpu").manual_seed(2)
    ids = torch.randint(0, cfg.vocab_size, (1, n), generator=gen).to(dev)
    kwargs = {
        "input_ids": ids,
        "position_ids": torch.arange(n, dtype=torch.long, device=dev).unsqueeze(0),
        "use_cache": False,
    }
    if "cache_position" in params:
        kwargs["cache_position"] = torch.arange(n, dtype=torch.long, device=dev)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1  # as generate() does for the prompt: no [n, vocab] logits

    samples = []
    with torch.inference_mode():
        for it in range(1 + args.prefill_runs):
            ms = timer.time_ms(lambda: model(**kwargs))
            if it >= 1:
                samples.append(ms)
    peak = _mem_peak(torch, dev)
    st = _stats(samples)
    n_layers = cfg.num_hidden_layers
    res = {
        "tokens": n,
        "runs": args.prefill_runs,
        "ms": st,
        "tokens_per_s": n * 1e3 / st["median"],
        "tokens_per_s_per_layer": n * 1e3 / (st["median"] / n_layers),
        "max_memory_allocated_bytes": peak,
    }
    return res


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def config_summary(cfg) -> dict:
    n = cfg.num_hidden_layers
    k = min(cfg.first_k_dense_replace, n)
    return {
        "layers": n,
        "dense_layers": k,
        "moe_layers": n - k,
        "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "experts": cfg.n_routed_experts,
        "experts_per_tok": cfg.num_experts_per_tok,
        "shared_experts": cfg.n_shared_experts,
        "moe_intermediate": cfg.moe_intermediate_size,
        "intermediate": cfg.intermediate_size,
        "q_lora_rank": cfg.q_lora_rank,
        "kv_lora_rank": cfg.kv_lora_rank,
        "qk_nope_head_dim": cfg.qk_nope_head_dim,
        "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "v_head_dim": cfg.v_head_dim,
        "vocab": cfg.vocab_size,
    }


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint dir with config.json (weights are NOT loaded)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=8192, help="tokens in the KV cache of each sequence")
    p.add_argument("--steps", type=int, default=10, help="timed decode steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--prefill-tokens", type=int, default=0, help="also time a prefill of this many tokens")
    p.add_argument("--prefill-runs", type=int, default=3, help="timed prefill runs (after 1 warm-up)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument(
        "--experts-impl",
        default="default,eager",
        help="comma list of transformers experts_implementation values to time, in order; 'default' is what "
        "from_pretrained picks (grouped_mm in 5.x), 'eager' the per-expert loop in modeling_deepseek_v3.py; the "
        "first is the headline (top-level decode/prefill in the JSON)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--dry-run", action="store_true", help="build on the meta device, print sizes, run nothing")
    a = p.parse_args(argv)
    for name in ("batch", "context", "steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.warmup < 0 or a.prefill_tokens < 0 or a.prefill_runs < 1:
        p.error("--warmup/--prefill-tokens must be >= 0 and --prefill-runs >= 1")
    if not a.dry_run and not a.out:
        p.error("--out is required (unless --dry-run)")
    return a


def _set_experts_impl(model, impl: str) -> str:
    cur = getattr(model.config, "_experts_implementation", None)
    if impl == cur:
        return cur
    if not hasattr(model, "set_experts_implementation"):
        _die(f"this transformers cannot switch experts_implementation to {impl!r} (no set_experts_implementation)")
    try:
        model.set_experts_implementation(impl)
    except (ValueError, ImportError) as e:
        _die(f"experts_implementation={impl!r} rejected: {e}")
    return model.config._experts_implementation


def _print_decode(decode: dict, args, cfg) -> None:
    lay = decode["cache_layout_layer0"]
    print(
        f"decode  batch {args.batch} context {args.context}: median {decode['ms_per_step']['median']:.3f} ms/step, "
        f"min {decode['ms_per_step']['min']:.3f} ms; {decode['ms_per_layer_median']:.3f} ms/layer "
        f"(median/{cfg.num_hidden_layers}); {decode['tokens_per_s']:.1f} tok/s; "
        f"KV cache {_gib(decode['kv_cache_bytes'])} (layer0 keys {lay['keys']}, values {lay['values']}); "
        f"peak {_gib(decode['max_memory_allocated_bytes'])}"
    )
    for kind in ("dense", "moe"):
        b = decode["breakdown"][kind]
        if b:
            parts = ", ".join(f"{k[:-3]} {v:.3f}" for k, v in b.items() if k.endswith("_ms"))
            print(f"  {kind} layer (ms, via hooks, mean over layers {b['layers']}): {parts}")


def _print_prefill(prefill: dict, args) -> None:
    if "error" in prefill:
        print(f"prefill {args.prefill_tokens} tokens: FAILED: {prefill['error']}")
        return
    print(
        f"prefill {args.prefill_tokens} tokens: median {prefill['ms']['median']:.2f} ms "
        f"(min {prefill['ms']['min']:.2f}); {prefill['tokens_per_s']:.0f} tok/s; "
        f"{prefill['tokens_per_s_per_layer']:.0f} tok/s per layer; peak {_gib(prefill['max_memory_allocated_bytes'])}"
    )


def _is_oom(torch, e: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or "out of memory" in str(e).lower()


def main(argv=None) -> int:
    args = parse_args(argv)
    torch, transformers = _import_libs()
    impls = [x.strip() for x in args.experts_impl.split(",") if x.strip()]
    if not impls:
        _die("--experts-impl is empty")
    # Built with transformers' default experts_implementation (recorded), then switched per run.
    raw, cfg = load_config(transformers, args.model)
    if args.device.startswith("cuda") and not args.dry_run and not torch.cuda.is_available():
        _die("--device cuda but torch.cuda.is_available() is False (use --device cpu for a smoke test)")
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    model = build_model(torch, transformers, cfg, args.device, materialize=not args.dry_run)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    summary = config_summary(cfg)
    default_experts = getattr(model.config, "_experts_implementation", None)
    mlp = model.model.layers[-1].mlp
    impl = {
        "attn": model.config._attn_implementation,
        "experts_default": default_experts,
        "moe_classes": f"{type(mlp).__name__}/{type(getattr(mlp, 'experts', None)).__name__}",
    }
    print(
        f"transformers {transformers.__version__}, torch {torch.__version__}; {summary['layers']} layers "
        f"({summary['dense_layers']} dense + {summary['moe_layers']} MoE), hidden {summary['hidden']}, "
        f"{summary['experts']} experts top-{summary['experts_per_tok']}; attn={impl['attn']}, "
        f"experts_implementation={default_experts} ({impl['moe_classes']})"
    )
    print(f"parameters: {n_params / 1e9:.3f} B, {param_bytes / 2**30:.2f} GiB; built in {build_s:.1f} s")
    if args.dry_run:
        return 0

    dev = args.device
    if dev.startswith("cuda"):
        gpu_name = torch.cuda.get_device_name(torch.device(dev))
        print(f"device {gpu_name}; after build: max_memory_allocated {_gib(_mem_peak(torch, dev))}")
    else:
        gpu_name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    params = forward_params(model)
    timer = Timer(torch, dev)
    result = {
        "tool": "bench/hf_decode_step.py",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_dir": os.path.abspath(args.model),
        "source_model_type": raw.get("model_type"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "transformers": transformers.__version__,
        },
        "device": {"name": gpu_name, "arg": dev},
        "config": summary,
        "implementation": impl,
        "weights": "random bf16 (normal 0.02, norms 1), not the checkpoint's; router kept as the model declares",
        "parameters": {"count": n_params, "bytes": param_bytes},
        "args": vars(args),
        "decode": None,
        "prefill": None,
        "runs": [],
    }

    def save() -> None:
        # Rewritten after every phase so a later failure (e.g. prefill OOM) keeps what was measured.
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    for n, want in enumerate(impls):
        used = _set_experts_impl(model, default_experts if want == "default" else want)
        print(f"--- experts_implementation={used} ---")
        run = {"experts_impl": used, "decode": None, "prefill": None}
        result["runs"].append(run)
        run["decode"] = run_decode(torch, transformers, model, cfg, args, timer, params)
        _mem_reset(torch, dev)
        _print_decode(run["decode"], args, cfg)
        if n == 0:
            result["decode"] = run["decode"]
        save()
        if args.prefill_tokens:
            try:
                run["prefill"] = run_prefill(torch, model, cfg, args, timer, params)
            except RuntimeError as e:
                if not _is_oom(torch, e):
                    raise
                run["prefill"] = {"tokens": args.prefill_tokens, "error": f"out of memory: {str(e)[:300]}"}
            _mem_reset(torch, dev)
            _print_prefill(run["prefill"], args)
            if n == 0:
                result["prefill"] = run["prefill"]
            save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
