"""`ftnb demo`: the smart intern's first week at Luigi's Corner.

Fine-tunes the default model (SmolLM2-135M-Instruct) with LoRA on 60 questions and answers about a small pizza
restaurant, then shows its answers before and after, to restaurant questions and to general ones.
"""
import json
import shutil
import textwrap
import time

from .core.comparison import run_curves
from .core.config import TrainConfig
from .core.data import bundled
from .core.probe import ProbeSuite, format_summary
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


def probe_cost(run, metrics):
    """How much of the training time the probe added (a baseline taken from the cache costs nothing), from the run's
    metrics lines."""
    from .core.rundir import read_json
    logs = [m for m in metrics if m["kind"] == "train"]
    spent = sum(m["probe"]["seconds"] or 0 for m in metrics if m["kind"] == "probe" and m["step"] > 0)
    base = read_json(run.run_dir.path / "probe" / "baseline.json", default={}) or {}
    if base and not base.get("cached"):
        spent += base["result"]["seconds"]["total"]
    train_s = logs[-1]["train_s"] if logs else 0
    return (f"probe cost: {spent:.0f} s against {train_s:.0f} s of training ({spent / max(train_s, 1e-9):.0%})"
            + ("" if base.get("cached", True) else "; the baseline is now cached for this model"))


DEMO_PROBE_SHARE = 0.25  # the probe may add at most a quarter of the training time


def run_demo(output_dir="runs", epochs=None, model="default", out=print):
    t0 = time.time()
    # all 900 questions take ~35-55 s on 2 CPU cores, half the demo's training: the demo probes at step 0 (cached per
    # model) and at the end, with as many questions as fit in a quarter of the training time
    changes = {"output_dir": output_dir, "model": model, "probe_every": -1, "probe_time_share": DEMO_PROBE_SHARE}
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
        after, before = score(rows, items)
        report[part] = {"after": after, "before": before, "n": len(items),
                        "first_ok": answer_ok(rows[0]["tuned"], items[0]["expect"])}
    r, g = report["restaurant"], report["general"]
    metrics = run.metrics()  # read once: validation, probe and timing lines
    val = [m["val_loss"] for m in metrics if m["kind"] == "eval"]
    out(f"restaurant facts: {r['after']}/{r['n']} answered correctly after training ({r['before']}/{r['n']} before)")
    out(f"general questions: {g['after']}/{g['n']} still correct ({g['before']}/{g['n']} before)")
    if val:
        out(f"validation loss: {val[0]:.3f} after epoch 1, {val[-1]:.3f} at the end")
    probes = [m for m in metrics if m["kind"] == "probe"]
    if probes:
        out("\nforgetting probe (general knowledge, step 0 against the end):\n" + format_summary(probes[-1]["probe"]))
        out(probe_cost(run, metrics))
        asked, every = probes[-1]["probe"]["n"], len(ProbeSuite.default().mc)
        if asked < every:
            out(f"({asked} of the {every} questions fit in {DEMO_PROBE_SHARE:.0%} of the training time here; "
                f"all of them, for a narrower interval: ftnb probe {run.run_dir.path})")
    out(f"run directory: {run.run_dir.path}   ({time.time() - t0:.0f} s in all)")
    out(f"next: ftnb generate {run.run_dir.path} \"Do you deliver?\"   |   ftnb export {run.run_dir.path} --merge tuned-model")
    return r["first_ok"] and g["first_ok"]


# -- `ftnb demo --forgetting`: the contrast measured in docs/forgetting.md -----------------------------------------

def contrast_configs(**changes):
    """An aggressive full fine-tune (high constant learning rate, 8 epochs) and the demo's LoRA run."""
    return {
        "aggressive-full": demo_config(method="full", learning_rate=2e-3, lr_scheduler="constant", epochs=8,
                                       probe_every=14, run_name="aggressive-full", **changes),
        "lora-defaults": demo_config(probe_every=0, run_name="lora-defaults", **changes),
    }


def trade_off_points(path):
    """[(step, val_loss, retention, retention_low, retention_high)] at the steps that have both."""
    c = run_curves(path)
    val = dict(zip(*c["val"]))
    return [(s, val[s], p["retention"], p["retention_low"], p["retention_high"]) for s, p in c["probe"] if s in val]


def save_trade_off_figure(paths, out):
    """Validation loss against retention along each run (one marker per probe), as HTML (plotly) and PNG (when
    matplotlib is installed). Returns the files written."""
    import plotly.graph_objects as go
    points = {name: trade_off_points(path) for name, path in paths.items()}
    fig = go.Figure()
    written = []
    for name, pts in points.items():
        fig.add_scatter(x=[p[1] for p in pts], y=[p[2] for p in pts], mode="lines+markers+text", name=name,
                        text=[f"step {p[0]}" for p in pts], textposition="top right",
                        error_y=dict(type="data", symmetric=False, array=[p[4] - p[2] for p in pts],
                                     arrayminus=[p[2] - p[3] for p in pts]))
    fig.add_hline(y=0.95, line_dash="dash", annotation_text="budget 95%")
    fig.update_layout(xaxis_title="task validation loss (lower: learned more)",
                      yaxis_title="retention of general knowledge (95% CI)", width=760, height=480)
    html = f"{out}.html"
    fig.write_html(html, include_plotlyjs="cdn")
    written.append(html)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    plt.figure(figsize=(7.6, 4.8))
    for name, pts in points.items():
        xs, ys = [p[1] for p in pts], [p[2] for p in pts]
        plt.errorbar(xs, ys, yerr=[[p[2] - p[3] for p in pts], [p[4] - p[2] for p in pts]], marker="o", capsize=3,
                     label=name)
        for p in pts:
            plt.annotate(f"step {p[0]}", (p[1], p[2]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    plt.axhline(0.95, linestyle="--", color="grey", label="forgetting budget (95%)")
    plt.xlabel("task validation loss (lower: learned more)")
    plt.ylabel("retention of general knowledge (95% CI)")
    plt.title("Learning versus forgetting: SmolLM2-135M-Instruct on the Luigi's Corner data")
    plt.legend()
    plt.tight_layout()
    plt.savefig(f"{out}.png", dpi=120)
    written.append(f"{out}.png")
    return written


def run_forgetting_demo(output_dir="runs-forgetting", model="default", out=print):
    """Both contrast runs, their forgetting summaries, and the learning-versus-forgetting figure."""
    runs = {}
    for name, cfg in contrast_configs(output_dir=output_dir, model=model).items():
        out(f"\n== {name}: {cfg.method}, learning rate {cfg.learning_rate:g}, {cfg.epochs:g} epochs")
        runs[name] = train(cfg, progress=True)
        last = [m["probe"] for m in runs[name].metrics() if m["kind"] == "probe"][-1]
        out(format_summary(last))
        answers = runs[name].generate(["What time do you close on Sundays?", "What is the capital of France?"], 40)
        out("  Sundays? " + answers[0] + "\n  France?  " + answers[1])
    files = save_trade_off_figure({n: r.run_dir.path for n, r in runs.items()}, f"{output_dir}/learning-vs-forgetting")
    out("\nfigure: " + ", ".join(files))
    return runs
