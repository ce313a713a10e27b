"""`ftnb demo`: the smart intern's first week at Luigi's Corner.

Fine-tunes the default model (SmolLM2-135M-Instruct) with LoRA on 60 questions and answers about a small pizza
restaurant, then shows its answers before and after, to restaurant questions and to general ones.
"""
import json
import shutil
import textwrap
import time

from .core.config import TrainConfig
from .core.data import bundled
from .core.train import train


def demo_config(**changes):
    return TrainConfig.from_preset("quick-cpu-demo", data=str(bundled("pizza_demo.jsonl")), **changes)


def answer_ok(answer, expect):
    a = answer.lower()
    return any(e in a for e in expect)


def score(rows, items):
    return sum(answer_ok(r["tuned"], it["expect"]) for r, it in zip(rows, items)), \
        sum(answer_ok(r["base"], it["expect"]) for r, it in zip(rows, items))


def print_table(rows, items, out=print):
    width = max(60, min(shutil.get_terminal_size((120, 20)).columns, 160))
    col = (width - 8) // 3
    out(f"{'question':<{col}}  {'before':<{col}}  {'after':<{col}}  ok")
    out("-" * width)
    for r, it in zip(rows, items):
        cells = [textwrap.wrap(r[k], col) or [""] for k in ("prompt", "base", "tuned")]
        mark = "yes" if answer_ok(r["tuned"], it["expect"]) else "no"
        for i in range(max(map(len, cells))):
            line = "  ".join(f"{(c[i] if i < len(c) else ''):<{col}}" for c in cells)
            out(f"{line}  {mark if i == 0 else ''}")
    out("")


def run_demo(output_dir="runs", epochs=None, model="default", out=print):
    t0 = time.time()
    changes = {"output_dir": output_dir, "model": model}
    if epochs:
        changes["epochs"] = epochs
    cfg = demo_config(**changes)
    out(f"ftnb demo: teaching {cfg.model} model the facts of Luigi's Corner (LoRA r={cfg.lora_r}, "
        f"{cfg.epochs:g} epochs, lr {cfg.learning_rate:g})")
    run = train(cfg, progress=True)
    evalset = json.loads(bundled("pizza_eval.json").read_text())
    report = {}
    for part in ("restaurant", "general"):
        items = evalset[part]
        rows = run.compare([it["question"] for it in items], max_new_tokens=48)
        out(f"\n{part} questions")
        print_table(rows, items, out)
        report[part] = {"after": score(rows, items)[0], "before": score(rows, items)[1], "n": len(items),
                        "first_ok": answer_ok(rows[0]["tuned"], items[0]["expect"])}
    r, g = report["restaurant"], report["general"]
    val = [m["val_loss"] for m in run.metrics() if "val_loss" in m]
    out(f"restaurant facts: {r['after']}/{r['n']} answered correctly after training ({r['before']}/{r['n']} before)")
    out(f"general questions: {g['after']}/{g['n']} still correct ({g['before']}/{g['n']} before)")
    if val:
        out(f"validation loss: {val[0]:.3f} after epoch 1, {val[-1]:.3f} at the end")
    out(f"run directory: {run.run_dir.path}   ({time.time() - t0:.0f} s in all)")
    out(f"next: ftnb generate {run.run_dir.path} \"Do you deliver?\"   |   ftnb export {run.run_dir.path} --merge tuned-model")
    return r["first_ok"] and g["first_ok"]
