"""Side-by-side throughput: ftnb's loop against the peers a user would otherwise run, in one process, on the same data.

    python bench/throughput.py                      # CPU: the small and SmolLM2-135M shapes; CUDA: 135M and 1.7B
    python bench/throughput.py --shapes small --mixes chat --methods lora --steps 6 --warm 2

Peers (bench/peers.py): transformers' Trainer + peft padding each batch; the Trainer with DataCollatorWithFlattening
(padding-free); TRL's SFTTrainer with padding_free=True and the loss on the answers only. Every side sees the same
batches in the same order, from the same initial weights, with LoRA r=16/alpha=32 on all linear layers (no dropout),
AdamW, cosine schedule, 2 warm-up steps, clipping at 1.0, bf16 on CUDA, fp32 on a CPU.

Two length mixes (`--mixes`):
  random  random tokens, log-normal lengths (median about 180, capped at 1024), every token trained: the mix of
          shared/bench/hf_trainer_peer.py
  chat    chat examples with the loss on the answers only, shaped like public instruction sets (see chat_mix)
Prints one JSON line per measurement and a table at the end; `--json FILE` saves them.
"""
import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SHAPES = {  # Llama shapes (vocabulary 49152, tied embeddings); "tiny" is for the benchmark's own test
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=688),
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536),
    "smollm2-1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=8192),
}
PEAK_FLOPS = {"cuda": 989e12}  # H100/H200 dense bf16; MFU is left out on other devices


def lengths(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(torch.randn(n, generator=g) * 0.7 + math.log(180)).clamp(16, 1024).long().tolist()


# chat_mix's sources: (share, turns (low, high), median user-turn tokens, median answer tokens). The medians are chosen
# after the per-dataset mean prompt and completion lengths that Wang et al. report in Table 1 of "How Far Can Camels Go?"
# (2023, arXiv:2306.04751; Llama tokens): single-turn instruction sets such as Dolly and Alpaca (prompts of about
# 30-120 tokens, answers of 65-90), OpenAssistant (about 1.6 turns, 35-token prompts, 210-token answers) and ShareGPT
# (about 3.2 turns of several hundred answer tokens). Log-normal spread (sigma 0.8) around each median.
CHAT_SOURCES = [(0.4, (1, 1), 70, 80), (0.3, (1, 2), 35, 210), (0.3, (2, 5), 70, 340)]
SYSTEM, USER_OVERHEAD, ANSWER_HEAD, ANSWER_END = 20, 5, 3, 2  # SmolLM2's ChatML: system block, per-turn tokens


def chat_mix(n, vocab, max_len=1024, seed=2):
    """(ids, mask) of n chat examples rendered as SmolLM2's template would: a system block, then user turns and
    answers; mask marks the answers and their end-of-turn tokens, the only targets. An example keeps its turns up to
    the last answer that fits in max_len (ftnb's overlong='turns'); a first answer that does not fit is cut."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda median: max(1, int(math.exp(torch.randn((), generator=g).item() * 0.8) * median))  # noqa: E731
    out = []
    for _ in range(n):
        u, acc = torch.rand((), generator=g).item(), 0.0
        for share, (lo, hi), user, answer in CHAT_SOURCES:
            acc += share
            if u <= acc:
                break
        turns = int(torch.randint(lo, hi + 1, (), generator=g))
        mask = [False] * SYSTEM
        for t in range(turns):
            turn = [False] * (USER_OVERHEAD + draw(user) + ANSWER_HEAD) + [True] * (draw(answer) + ANSWER_END)
            if len(mask) + len(turn) > max_len:
                if t == 0:
                    mask = (mask + turn)[:max_len]
                break
            mask += turn
        ids = torch.randint(0, vocab, (len(mask),), generator=g).tolist()
        out.append((ids, mask))
    return out


def make_data(mix, n, vocab):
    if mix == "chat":
        return chat_mix(n, vocab)
    g = torch.Generator().manual_seed(1)
    return [(ids, [True] * len(ids)) for ids in (torch.randint(0, vocab, (L,), generator=g).tolist()
                                                 for L in lengths(n))]


def build_model(shape, device, attn="auto"):
    from transformers import LlamaConfig, LlamaForCausalLM
    kw = {} if attn == "auto" else {"attn_implementation": attn}
    cfg = LlamaConfig(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048, **SHAPES[shape], **kw)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device)


def flops_per_token(model_cfg, n_params, method, avg_len):
    """Matmul FLOPs: 4 x params for LoRA (forward + activation gradients), 6 x for full, plus attention."""
    attn = 2 * 2 * model_cfg.num_hidden_layers * model_cfg.hidden_size * avg_len
    return (4 if method == "lora" else 6) * n_params + (2 if method == "lora" else 3) * attn


def curve_gap(ours, peer, warm):
    """Largest gap between ftnb's logged losses (each the mean over `warm` steps) and a peer's per-step losses
    averaged over the same steps: the runs see the same batches in the same order from the same weights. (ftnb's
    window mean is over the window's targets, the peer's over its steps: equal when the steps carry equal targets.)"""
    windows = [peer[k * warm:(k + 1) * warm] for k in range(len(ours))]
    return max(abs(loss - sum(w) / len(w)) for loss, w in zip(ours, windows))


def run_ftnb(shape, method, data, batch, steps, warm, device, lr, compile=False, attn="auto"):
    import ftnb
    from ftnb.core.batching import Tokenized
    from ftnb.core.data import ChatData, DataReport
    from ftnb.core.formats import Example
    model = build_model(shape, device)
    n_params = sum(p.numel() for p in model.parameters())
    chat = ChatData([Example(text="x", row=i + 1) for i in range(len(data))], DataReport("bench"))
    chat.tokenized = [Tokenized(ids, mask, i + 1) for i, (ids, mask) in enumerate(data)]
    with tempfile.TemporaryDirectory() as out:
        cfg = ftnb.TrainConfig(model="bench-random", method=method, lora_r=16, lora_alpha=32, lora_dropout=0.0,
                               batch_size=batch, max_steps=steps, learning_rate=lr, warmup_steps=2, max_grad_norm=1.0,
                               log_every=warm, val_fraction=0, save_every=10 ** 9, max_seq_len=1024,
                               output_dir=out, device=str(device), seed=0, probe=False, compile=compile,
                               attn_implementation=attn)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run = ftnb.train(cfg, chat, base_model=(model, _Tok()))
        logs = [m for m in run.metrics() if "loss" in m]
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    a, b = next(m for m in logs if m["step"] == warm), logs[-1]
    tok_s = tokens_per_s(a, b)
    del run, model
    return dict(impl="ftnb" if attn == "auto" else f"ftnb-{attn}", tok_s=tok_s, peak_gb=peak, loss=b["loss"],
                losses=[m["loss"] for m in logs], n_params=n_params, seconds=b["train_s"] - a["train_s"], pad_share=0.0)


def tokens_per_s(first, last):
    """Real tokens per second of training between two logged rows of metrics.jsonl."""
    return (last["tokens"] - first["tokens"]) / (last["train_s"] - first["train_s"])


class _Tok:
    """The loop needs a tokenizer only to save it; the benchmark's data is already token ids."""
    eos_token_id = 0

    def save_pretrained(self, path):
        pass


def run_peer(impl, shape, method, data, batch, steps, warm, device, lr, padded_accumulation=1):
    import peers
    return peers.run(impl, build_model(shape, device), method, data, batch, steps, warm, device, lr,
                     padded_accumulation)


def cell(r):
    """The table cell a measurement belongs to: what the implementations are compared on."""
    return r["shape"], r["mix"], r["method"]


PADDING_FREE = ("trainer-flat", "trl")  # the peers a speed-minded user picks; the table's ratio is to the fastest


def main(argv=None):
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["smollm2-135m", "smollm2-1.7b"] if cuda else ["small", "smollm2-135m"],
                    choices=list(SHAPES))
    ap.add_argument("--mixes", nargs="+", default=["random", "chat"], choices=["random", "chat"])
    ap.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--impls", nargs="+", default=["trainer", "trainer-flat", "trl", "ftnb"],
                    choices=["trainer", "trainer-flat", "trl", "ftnb", "ftnb-sdpa"],
                    help="ftnb-sdpa: ftnb with attn_implementation='sdpa' (the packed row under one mask)")
    ap.add_argument("--batch", type=int, default=16 if cuda else 8)
    ap.add_argument("--steps", type=int, default=50 if cuda else 6)
    ap.add_argument("--warm", type=int, default=10 if cuda else 2)
    ap.add_argument("--compile", action="store_true", help="ftnb with compile=True (torch.compile of each layer)")
    ap.add_argument("--attn", default="auto", choices=["auto", "segments", "sdpa", "flex_attention", "eager"],
                    help="ftnb's attention (the peers keep SDPA); 'auto': per-example SDPA on a CPU")
    ap.add_argument("--padded-accumulation", type=int, default=1, metavar="N",
                    help="the padded Trainer takes each batch as N accumulated parts (same step, less memory)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    assert args.steps % args.warm == 0, "--steps must be a multiple of --warm (ftnb logs every --warm steps)"
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device("cuda" if cuda else "cpu")
    machine = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    results = []
    for shape in args.shapes:
        for mix in args.mixes:
            data = make_data(mix, args.batch * args.steps, 49152)
            for method in args.methods:
                if shape == "smollm2-1.7b" and method == "full":
                    continue  # the peer measured 1.7B with LoRA only
                lr = 2e-4 if method == "lora" else 2e-5
                for impl in args.impls:
                    try:
                        if impl.startswith("ftnb"):
                            r = run_ftnb(shape, method, data, args.batch, args.steps, args.warm, device, lr,
                                         compile=args.compile, attn="sdpa" if impl == "ftnb-sdpa" else args.attn)
                        else:
                            r = run_peer(impl, shape, method, data, args.batch, args.steps, args.warm, device, lr,
                                         args.padded_accumulation)
                    except torch.OutOfMemoryError:
                        r = dict(impl=impl, error="out of memory")
                    gc.collect()
                    if cuda:
                        torch.cuda.empty_cache()
                    r.update(shape=shape, mix=mix, method=method, batch=args.batch, steps=args.steps, device=machine,
                             date=time.strftime("%Y-%m-%d"))
                    if "tok_s" in r and device.type in PEAK_FLOPS:
                        from transformers import LlamaConfig
                        mc = LlamaConfig(vocab_size=49152, **SHAPES[shape])
                        avg = sum(len(ids) for ids, _ in data) / len(data)
                        r["mfu"] = r["tok_s"] * flops_per_token(mc, r["n_params"], method, avg) / PEAK_FLOPS[device.type]
                    peers_done = [x for x in results if cell(x) == cell(r)
                                  and "losses" in x and not x["impl"].startswith("ftnb")]
                    if r["impl"].startswith("ftnb") and "losses" in r and peers_done:
                        r["curve_gap"] = max(curve_gap(r["losses"], x["losses"], args.warm) for x in peers_done)
                    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                                      if k != "losses"}), flush=True)
                    results.append(r)
    print(table(results, args.warm, machine))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


def table(results, warm, machine):
    """Markdown: one row per measurement; the ratio is to the fastest padding-free peer of the same shape, mix and
    method (to the padded Trainer where neither ran)."""
    f = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
    lines = ["| shape | mix | method | implementation | real tokens/s | peak GB | MFU | padding | final loss | curve gap "
             "| vs fastest padding-free peer |", "|" + "---|" * 11]
    for r in results:
        if "tok_s" not in r:
            lines.append(f"| {r['shape']} | {r['mix']} | {r['method']} | {r['impl']} | {r['error']} |||||||")
            continue
        same = [x for x in results if cell(x) == cell(r) and "tok_s" in x]
        base = [x["tok_s"] for x in same if x["impl"] in PADDING_FREE] or [x["tok_s"] for x in same
                                                                            if x["impl"] == "trainer"]
        ratio = r["tok_s"] / max(base) if base else float("nan")
        lines.append(f"| {r['shape']} | {r['mix']} | {r['method']} | {r['impl']} | {r['tok_s']:,.0f} | "
                     f"{f(r['peak_gb'], '.1f')} | {f(r.get('mfu'), '.1%')} | {f(r.get('pad_share'), '.0%')} | "
                     f"{r['loss']:.4f} | {f(r.get('curve_gap'), '.4f')} | {ratio:.2f}x |")
    lines.append(f"\n({machine}, {time.strftime('%Y-%m-%d')}; curve gap: the largest difference between ftnb's loss "
                 f"and any peer's over each {warm}-step window)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
