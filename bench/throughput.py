"""Side-by-side throughput: ftnb's loop against the HF `Trainer` + peft, in one process, same model/data/settings.

    python bench/throughput.py                      # CPU: a small shape; CUDA: SmolLM2-135M and -1.7B shapes
    python bench/throughput.py --shapes small --methods lora full --steps 12 --warm 4

Data: random token sequences with log-normal lengths (median about 180, capped at 1024), the mix of
shared/bench/hf_trainer_peer.py. The Trainer pads each batch to its longest sequence (as users run it); ftnb packs the
same sequences without padding. Both see the same batches in the same order, from the same initial weights, with
LoRA r=16/alpha=32 on all linear layers (no dropout), AdamW, cosine schedule, 2 warm-up steps, bf16 on CUDA.
Prints one JSON line per measurement and a table at the end; `--json FILE` saves them.
"""
import argparse
import functools
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


def make_sequences(n, vocab):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (L,), generator=g).tolist() for L in lengths(n)]


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
    """Largest gap between ftnb's logged losses (each the mean over `warm` steps) and the Trainer's per-step losses
    averaged over the same steps: the two runs see the same batches in the same order from the same weights."""
    windows = [peer[k * warm:(k + 1) * warm] for k in range(len(ours))]
    return max(abs(loss - sum(w) / len(w)) for loss, w in zip(ours, windows))


def order(n_seqs, batch, steps, seed):
    from ftnb.core.batching import StepPlan
    plan = StepPlan(n_seqs, batch, epochs=1, max_steps=steps, seed=seed)
    return [plan.indices(s) for s in range(steps)]


def run_ftnb(shape, method, seqs, batch, steps, warm, device, lr, compile=False, attn="auto"):
    import ftnb
    from ftnb.core.batching import Tokenized
    from ftnb.core.data import ChatData, DataReport
    from ftnb.core.formats import Example
    model = build_model(shape, device, attn)
    n_params = sum(p.numel() for p in model.parameters())
    data = ChatData([Example(text="x", row=i + 1) for i in range(len(seqs))], DataReport("bench"))
    data.tokenized = [Tokenized(s, [True] * len(s), i + 1) for i, s in enumerate(seqs)]
    with tempfile.TemporaryDirectory() as out:
        cfg = ftnb.TrainConfig(model="bench-random", method=method, lora_r=16, lora_alpha=32, lora_dropout=0.0,
                               batch_size=batch, max_steps=steps, learning_rate=lr, warmup_steps=2, max_grad_norm=1.0,
                               log_every=warm, val_fraction=0, save_every=10 ** 9, max_seq_len=1024,
                               output_dir=out, device=str(device), seed=0, probe=False, compile=compile)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run = ftnb.train(cfg, data, base_model=(model, _Tok()))
        logs = [m for m in run.metrics() if "loss" in m]
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    a, b = next(m for m in logs if m["step"] == warm), logs[-1]
    tok_s = tokens_per_s(a, b)
    del run, model
    return dict(impl="ftnb", tok_s=tok_s, peak_gb=peak, loss=b["loss"], losses=[m["loss"] for m in logs],
                n_params=n_params, seconds=b["train_s"] - a["train_s"])


def tokens_per_s(first, last):
    """Real tokens per second of training between two logged rows of metrics.jsonl."""
    return (last["tokens"] - first["tokens"]) / (last["train_s"] - first["train_s"])


class _Tok:
    """The loop needs a tokenizer only to save it; the benchmark's data is already token ids."""
    eos_token_id = 0

    def save_pretrained(self, path):
        pass


def run_trainer(shape, method, seqs, batch, steps, warm, device, lr):
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    model = build_model(shape, device)
    n_params = sum(p.numel() for p in model.parameters())
    if method == "lora":
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    batches = order(len(seqs), batch, steps, seed=0)
    ordered = [seqs[i] for b in batches for i in b]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(ordered)

        def __getitem__(self, i):
            return {"input_ids": ordered[i]}

    def collate(items):  # pad to the longest in the batch, as users do
        L = max(len(x["input_ids"]) for x in items)
        ids = torch.zeros(len(items), L, dtype=torch.long)
        att = torch.zeros(len(items), L, dtype=torch.long)
        for i, x in enumerate(items):
            ids[i, :len(x["input_ids"])] = torch.tensor(x["input_ids"])
            att[i, :len(x["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": att, "labels": ids.masked_fill(att == 0, -100)}

    class Timer(TrainerCallback):
        t0 = t1 = None
        losses = []

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warm:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                Timer.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                Timer.losses.append(logs["loss"])

    class InOrder(Trainer):  # the same batches, in the same order, as ftnb's plan
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
                                 bf16=device.type == "cuda", logging_steps=1, save_strategy="no", report_to=[],
                                 optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch",
                                 dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False,
                                 lr_scheduler_type="cosine", warmup_steps=2, max_grad_norm=1.0, use_cpu=device.type == "cpu")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tr = InOrder(model=model, args=args, train_dataset=DS(), data_collator=collate, callbacks=[Timer()])
        tr.remove_callback(PrinterCallback)  # it prints every log dict
        tr.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - Timer.t0
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    timed = [seqs[i] for b in batches[warm:] for i in b]
    real = sum(map(len, timed))
    padded = sum(max(len(seqs[i]) for i in b) * len(b) for b in batches[warm:])
    del tr, model
    return dict(impl="trainer", tok_s=real / dt, peak_gb=peak, loss=Timer.losses[-1], losses=list(Timer.losses),
                n_params=n_params, pad_share=1 - real / padded, seconds=dt)


def main(argv=None):
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["smollm2-135m", "smollm2-1.7b"] if cuda else ["small"],
                    choices=list(SHAPES))
    ap.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50 if cuda else 8)
    ap.add_argument("--warm", type=int, default=10 if cuda else 4)
    ap.add_argument("--compile", action="store_true", help="ftnb with compile=True (torch.compile of each layer)")
    ap.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flex_attention", "eager"],
                    help="ftnb's attention kernel (the Trainer keeps SDPA)")
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
        for method in args.methods:
            if shape == "smollm2-1.7b" and method == "full":
                continue  # the peer measured 1.7B with LoRA only
            seqs = make_sequences(args.batch * args.steps, 49152)
            lr = 2e-4 if method == "lora" else 2e-5
            for fn in (run_trainer, functools.partial(run_ftnb, compile=args.compile, attn=args.attn)):
                try:
                    r = fn(shape, method, seqs, args.batch, args.steps, args.warm, device, lr)
                except torch.OutOfMemoryError:
                    r = dict(impl="trainer" if fn is run_trainer else "ftnb", error="out of memory")
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                r.update(shape=shape, method=method, batch=args.batch, steps=args.steps, device=machine,
                         date=time.strftime("%Y-%m-%d"))
                if "tok_s" in r and device.type in PEAK_FLOPS:
                    from transformers import LlamaConfig
                    mc = LlamaConfig(vocab_size=49152, **SHAPES[shape])
                    avg = sum(map(len, seqs)) / len(seqs)
                    r["mfu"] = r["tok_s"] * flops_per_token(mc, r["n_params"], method, avg) / PEAK_FLOPS[device.type]
                if r["impl"] == "ftnb" and "losses" in r and "losses" in results[-1]:
                    r["curve_gap"] = curve_gap(r["losses"], results[-1]["losses"], args.warm)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                                  if k != "losses"}), flush=True)
                results.append(r)
    print(f"\n{'shape':<14}{'method':<7}{'impl':<9}{'real tok/s':>11}{'peak GB':>9}{'MFU':>7}{'pad':>6}"
          f"{'final loss':>11}{'curve gap':>10}{'speed-up':>9}")
    for r in results:
        peer = next((x for x in results if x["shape"] == r["shape"] and x["method"] == r["method"]
                     and x["impl"] == "trainer" and "tok_s" in x), None)
        if "tok_s" not in r:
            print(f"{r['shape']:<14}{r['method']:<7}{r['impl']:<9}{r['error']:>11}")
            continue
        up = r["tok_s"] / peer["tok_s"] if peer else float("nan")
        f = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
        print(f"{r['shape']:<14}{r['method']:<7}{r['impl']:<9}{r['tok_s']:>11,.0f}{f(r['peak_gb'], '.1f'):>9}"
              f"{f(r.get('mfu'), '.1%'):>7}{f(r.get('pad_share'), '.0%'):>6}{r['loss']:>11.3f}"
              f"{f(r.get('curve_gap'), '.4f'):>10}{up:>8.2f}x")
    print(f"({machine}, {time.strftime('%Y-%m-%d')}; curve gap: the largest difference between ftnb's loss and the "
          f"Trainer's over each {args.warm}-step window; loss curves: see --json)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
