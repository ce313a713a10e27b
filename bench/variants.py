"""LoRA, DoRA and QLoRA side by side on the default model, in one process: real tokens/s and the loss.

    python bench/variants.py                  # SmolLM2-135M-Instruct, bundled pizza data, batch 8, 7 steps
    python bench/variants.py --steps 20 --device cuda

The first step is not timed (it allocates and warms up); LoRA runs first and last, so drift of a shared machine shows.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from throughput import tokens_per_s  # noqa: E402

VARIANTS = {"lora": {}, "dora": {"use_dora": True}, "qlora-4bit": {"quantize": "4bit"}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    import ftnb
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    order = ["lora", "dora", "qlora-4bit", "lora"]
    results = []
    with tempfile.TemporaryDirectory() as out:
        for name in order:
            cfg = ftnb.TrainConfig(model=args.model, data=str(ftnb.bundled("pizza_demo.jsonl")), max_steps=args.steps,
                                   batch_size=args.batch, max_seq_len=256, probe=False, val_fraction=0, log_every=1,
                                   output_dir=out, device=args.device, **VARIANTS[name])
            rows = [m for m in ftnb.train(cfg).metrics() if "loss" in m]
            r = {"variant": name, "tok_s": round(tokens_per_s(rows[0], rows[-1]), 1), "first_loss": rows[0]["loss"],
                 "last_loss": rows[-1]["loss"], "steps": args.steps, "batch": args.batch}
            print(json.dumps(r), flush=True)
            results.append(r)
    lora = sum(r["tok_s"] for r in results if r["variant"] == "lora") / 2
    for r in results:
        print(f"{r['variant']:<12}{r['tok_s']:>8.1f} tok/s {r['tok_s'] / lora:>6.2f}x LoRA")


if __name__ == "__main__":
    main()
