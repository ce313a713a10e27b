"""Before anything runs: how much memory a config needs and how long an epoch takes on this device.

Parameter counts come from the model's config alone (the model is built on the `meta` device, no weights are read).
Speed comes from a half-second matmul measurement of this device, times an efficiency factor measured with ftnb's own
loop (see docs/benchmarks.md); it is an estimate, shown as one.
"""
import functools
import os
import time

import torch

from .models import ATTENTION_TARGETS, LOAD_LOCK, pick_device, resolve_model

# achieved FLOP/s of training / matmul FLOP/s, by device and method (docs/benchmarks.md, "The form's time estimate");
# LoRA counts 4 x params FLOPs a token against full training's 6 x, but saves less time than that on a CPU
LOOP_EFFICIENCY = {"cpu": {"lora": 0.50, "full": 0.65}}
OTHER_EFFICIENCY = 0.25  # CUDA and MPS: from the first version of the loop, not re-measured since
OUTPUT_LAYERS = ("lm_head", "embed_out", "output")  # names of the output layer: neither adapted nor quantised


@functools.lru_cache(maxsize=8)
def model_shape(name):
    """(total params, {linear module name: (in, out)}, config) of a model, without loading its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM
    path = resolve_model(name)
    cfg = AutoConfig.from_pretrained(path)
    with LOAD_LOCK, torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    linears = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    total = sum(p.numel() for p in model.parameters())
    return total, linears, cfg


def lora_params(linears, cfg):
    targets = cfg.lora_targets.strip()
    out_layer = {n for n in linears if n.endswith(OUTPUT_LAYERS)}
    if targets == "all-linear":
        chosen = [n for n in linears if n not in out_layer]
    else:
        names = ATTENTION_TARGETS if targets == "attention" else [t.strip() for t in targets.split(",")]
        chosen = [n for n in linears if n.split(".")[-1] in names]
    return sum(cfg.lora_r * (i + o) for n, (i, o) in linears.items() if n in chosen)


@functools.lru_cache(maxsize=4)
def matmul_flops(device_type):
    """FLOP/s of a square fp32 (CPU) or bf16 (GPU) matmul on this device, measured for about half a second."""
    dev = torch.device(device_type)
    n = 1024 if device_type == "cpu" else 8192
    dtype = torch.float32 if device_type == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        a @ b
        reps += 1
    if device_type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def available_memory(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def activation_bytes_per_token(mcfg, cfg, bf16):
    """Memory one token of a forward pass keeps for the backward pass (a deliberately generous rule: 34 x hidden
    values per layer, after Korthikanti et al. 2022), plus its share of the output layer's logits."""
    hidden = getattr(mcfg, "hidden_size", 1024)
    layers = getattr(mcfg, "num_hidden_layers", 12)
    per_layer = hidden * 34 * (2 if bf16 else 4) / (4 if cfg.gradient_checkpointing else 1)
    return layers * per_layer + getattr(mcfg, "vocab_size", 32000) * 4 / 8


def estimate(cfg, tokens_per_epoch, device=None, measure=True):
    """{memory_gb: {weights, gradients, optimizer, activations, total}, available_gb, fits, seconds_per_epoch, ...}."""
    device = pick_device(cfg.device) if device is None else torch.device(device)
    total, linears, mcfg = model_shape(cfg.model)
    bf16 = device.type == "cuda" and cfg.precision != "fp32"
    w_bytes = 2 if (bf16 and cfg.method == "lora") else 4
    trainable = lora_params(linears, cfg) if cfg.method == "lora" else total
    weights = total * w_bytes
    if cfg.quantize != "none":  # linear layers quantised (NF4 with its scales, or int8); the rest upcast to fp32
        quantised = sum(i * o for n, (i, o) in linears.items() if not n.endswith(OUTPUT_LAYERS))
        weights = quantised * (0.53 if cfg.quantize == "4bit" else 1.02) + (total - quantised) * 4
    tokens = cfg.micro_batch_tokens or max(cfg.max_seq_len, 16384 if device.type == "cuda" else 2048)
    tokens = min(tokens, cfg.batch_size * cfg.max_seq_len)
    mem = {"weights": weights, "gradients": trainable * 4, "optimizer": trainable * 8,
           "activations": activation_bytes_per_token(mcfg, cfg, bf16) * tokens}
    mem["total"] = sum(mem.values())
    avail = available_memory(device)
    flops_per_token = (4 if cfg.method == "lora" else 6) * total
    efficiency = LOOP_EFFICIENCY.get(device.type, {}).get(cfg.method, OTHER_EFFICIENCY)
    speed = matmul_flops(device.type) * efficiency if measure else None
    tok_s = speed / flops_per_token if speed else None
    return {"device": str(device), "params": total, "trainable_params": trainable,
            "memory_gb": {k: round(v / 1e9, 3) for k, v in mem.items()},
            "available_gb": round(avail / 1e9, 1) if avail else None,
            "fits": avail is None or mem["total"] < 0.9 * avail,
            "tokens_per_s": round(tok_s) if tok_s else None, "tokens_per_epoch": tokens_per_epoch,
            "seconds_per_epoch": _significant(tokens_per_epoch / tok_s) if tok_s else None}


def _significant(x, digits=3):
    """`x` to `digits` significant digits: a tiny model's epoch takes milliseconds, which must not round to 0."""
    return float(f"{x:.{digits}g}")
