"""Where one of ftnb's training passes spends its time: torch.profiler over a forward and backward pass of
bench/throughput.py's data, grouped into matmuls, attention, element-wise work, the output layer's softmax and the rest.

    python bench/profile_step.py                       # SmolLM2-135M's shape, chat mix, LoRA, batch 8
    python bench/profile_step.py --attn sdpa --method full
"""
import argparse
import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

GROUPS = [("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")),
          ("attention", ("scaled_dot_product", "flash_attention")),
          ("softmax and loss", ("log_softmax", "nll_loss", "cross_entropy")),
          ("element-wise", ("aten::mul", "aten::add", "aten::silu", "aten::pow", "aten::rsqrt", "aten::mean",
                            "aten::neg", "aten::cat", "aten::div", "aten::sub", "aten::fill_", "aten::copy_",
                            "aten::sum", "aten::index", "aten::embedding", "aten::where"))]


def group_of(name):
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def main(argv=None):
    import throughput
    from ftnb.core import attention
    from ftnb.core.batching import Tokenized, micro_batches, pack
    from ftnb.core.loss import loss_sum, split_head
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", choices=list(throughput.SHAPES))
    ap.add_argument("--mix", default="chat", choices=["random", "chat"])
    ap.add_argument("--method", default="lora", choices=["lora", "full"])
    ap.add_argument("--attn", default="segments", choices=["segments", "sdpa"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pass-tokens", type=int, default=2048, help="tokens per pass (ftnb's CPU default)")
    args = ap.parse_args(argv)
    model = throughput.build_model(args.shape, torch.device("cpu"), "sdpa")
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    if args.attn == "segments":
        attention.use_segments(model)
    data = throughput.make_data(args.mix, args.batch, 49152)
    passes = [pack(g) for g in micro_batches([Tokenized(ids, mask) for ids, mask in data], args.pass_tokens)]
    parts = split_head(model)

    def step():
        for b in passes:
            loss_sum(model, b, parts).backward()
    step()  # warm-up
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # the times: without shapes and FLOPs, which cost
        step()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as counted:  # the matmuls' FLOPs
        step()
    mm_flops = sum(e.flops or 0 for e in counted.key_averages() if group_of(e.key) == "matmul")
    total, groups, top = 0.0, defaultdict(float), []
    for e in prof.key_averages():
        t = e.self_cpu_time_total / 1e6
        total += t
        groups[group_of(e.key)] += t
        top.append((t, e.key, e.count))
    tokens = sum(b.n_tokens for b in passes)
    print(f"{args.shape}, {args.mix} mix, {args.method}, attention {args.attn}: {len(passes)} passes, {tokens:,} "
          f"tokens, {total:.1f} s of CPU time ({torch.get_num_threads()} threads)")
    for g, t in sorted(groups.items(), key=lambda x: -x[1]):
        print(f"  {g:<18}{t:7.2f} s  {t / total:6.1%}")
    print(f"matmuls: {mm_flops / 1e12:.2f} TFLOP at {mm_flops / groups['matmul'] / 1e9:.0f} GFLOP/s")
    print("top operators:")
    for t, key, count in sorted(top, reverse=True)[:8]:
        print(f"  {key[:48]:<50}{t:7.2f} s  {count:6d} calls")


if __name__ == "__main__":
    main()
