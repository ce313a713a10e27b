"""Calibrate the forgetting probe against an independent benchmark (docs/forgetting.md, "Calibration").

Six runs of the default model on the bundled restaurant examples, from gentle to destructive; for each, the probe's
paired change in accuracy at the end (900 general questions, step 0 against the end) beside the change on ARC-Easy's
validation set scored through lm-evaluation-harness (ftnb.evaluate: the run and its base, in memory), and the rank
correlation between the two. Needs pip install 'ftnb[eval]' and a {question, choices, answer} JSONL copy of
ARC-Easy, which ftnb never bundles.

    python bench/forgetting_calibration.py --arc ../shared/data/arc_easy_validation.jsonl --out calibration.json
    python bench/forgetting_calibration.py --table calibration.json      # the markdown table again
"""
import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import ftnb
from ftnb.core.config import TrainConfig
from ftnb.core.data import bundled
from ftnb.core.durable import write_json
from ftnb.core.paired import change_interval, mcnemar_p, verdict
from ftnb.core.probe import ProbeSuite, mc_trees, score_trees

AGGRESSIVE_FULL = dict(method="full", learning_rate=2e-3, lr_scheduler="constant", epochs=8)
RUNS = {  # name: (what it is, changes to the quick-cpu-demo preset or a preset of its own)
    "lora-defaults": ("LoRA, the demo's settings (r=16 on all linear layers, lr 1e-3 cosine, 4 epochs)", {}),
    "low-forgetting": ("the low-forgetting preset (r=8 on attention, lr 1e-4, 2 epochs)", {"preset": "low-forgetting"}),
    "gentle-full": ("full fine-tuning, lr 5e-5 cosine, 4 epochs", dict(method="full", learning_rate=5e-5)),
    "aggressive-full": ("full fine-tuning, lr 2e-3 constant, 8 epochs", AGGRESSIVE_FULL),
    "aggressive-lora": ("LoRA r=64, alpha=256, lr 5e-3 constant, 10 epochs",
                        dict(lora_r=64, lora_alpha=256, learning_rate=5e-3, lr_scheduler="constant", epochs=10)),
    "aggressive-full-kl": ("the aggressive full fine-tune with KL-to-base (kl_beta 1.0)",
                           dict(AGGRESSIVE_FULL, kl_beta=1.0)),
}


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config(name, output_dir):
    changes = dict(RUNS[name][1])
    preset = changes.pop("preset", "quick-cpu-demo")
    return TrainConfig.from_preset(preset, data=str(bundled("pizza_demo.jsonl")), output_dir=output_dir,
                                   run_name=name, probe_every=-1, **changes)


def read_arc(arc):
    return [json.loads(line) for line in Path(arc).read_text(encoding="utf-8").splitlines() if line.strip()]


def tree_scores(model, tokenizer, arc):
    """"0"/"1" per ARC question, scored by lm-eval's arc_easy rule (the summed log-probability of " choice" after
    "Question: ...\nAnswer:") with the probe's tree scorer in fp32: ~30x faster than lm-eval on a CPU."""
    suite = ProbeSuite(mc=read_arc(arc))
    was = model.training
    model.eval()
    try:
        scores, _ = score_trees(model, mc_trees(suite, tokenizer), 1024)
    finally:
        model.train(was)
    sums = [[float(x.sum()) for x in item] for item in scores]
    return "".join("1" if max(range(len(s)), key=s.__getitem__) == it["answer"] else "0"
                   for s, it in zip(sums, suite.mc))


_BASE = {}


def base_tree_scores(run, arc):
    """The base model's tree_scores, once: LoRA's adapter off, else the base model loaded."""
    if "correct" not in _BASE:
        if hasattr(run.model, "disable_adapter"):
            with run.model.disable_adapter():
                _BASE["correct"] = tree_scores(run.model, run.tokenizer, arc)
        else:
            from ftnb.core.models import load_model
            model, tok, _ = load_model(run.config.model)
            _BASE["correct"] = tree_scores(model, tok, arc)
    return _BASE["correct"]


def check_tree_scorer(r, arc):
    """How many ARC questions the tree scorer answers as lm-eval did, for a run scored with lm-eval (its base with
    the adapter off, and the tuned model)."""
    from ftnb.evaluate import read_benchmarks
    rec = read_benchmarks(r["run"])[0][0]["paired"]["acc"]
    run = ftnb.load_run(r["run"])
    with run.model.disable_adapter():
        base = tree_scores(run.model, run.tokenizer, arc)
    tuned = tree_scores(run.model, run.tokenizer, arc)
    r["arc"].update(scorer="lm-eval", tuned_correct=rec["tuned_correct"],
                    tree_agrees_base=sum(a == b for a, b in zip(base, rec["base_correct"])),
                    tree_agrees_tuned=sum(a == b for a, b in zip(tuned, rec["tuned_correct"])))
    _BASE.setdefault("correct", base)


def measure(name, output_dir, arc, scorer="ftnb"):
    """One run trained, probed and scored on `arc`: with lm-eval (ftnb eval: the run and its base), or with the
    same scoring rule in the probe's tree scorer (checked against lm-eval on the first run)."""
    from ftnb.evaluate import benchmark
    t0 = time.monotonic()
    run = ftnb.train(config(name, output_dir))
    train_s = time.monotonic() - t0
    metrics = run.metrics()
    probe = [m["probe"] for m in metrics if m["kind"] == "probe"][-1]
    val = [m["val_loss"] for m in metrics if m["kind"] == "eval"]
    if scorer == "lm-eval":
        rec = next(iter(benchmark(run.run_dir.path, [arc]).values()))
        p = rec["paired"]["acc"]
        arc_res = {"base": rec["metrics"]["acc"]["base"], "tuned": rec["metrics"]["acc"]["tuned"],
                   "seconds": rec.get("seconds"), "base_correct": p["base_correct"], "tuned_correct": p["tuned_correct"]}
    else:
        tuned = tree_scores(run.model, run.tokenizer, arc)
        base_correct = base_tree_scores(run, arc)
        arc_res = {"base": base_correct.count("1") / len(base_correct), "tuned": tuned.count("1") / len(tuned),
                   "base_correct": base_correct, "tuned_correct": tuned}
        lost = sum(1 for b, t in zip(base_correct, tuned) if b == "1" and t == "0")
        gained = sum(1 for b, t in zip(base_correct, tuned) if b == "0" and t == "1")
        ci = change_interval(lost, gained, len(tuned))
        p = {"n": len(tuned), "lost": lost, "gained": gained, "difference": ci["change"],
             "difference_low": ci["change_low"], "difference_high": ci["change_high"],
             "p_value": mcnemar_p(lost, gained), "verdict": verdict(ci["change"], ci["change_low"], ci["change_high"])}
    return {"name": name, "what": RUNS[name][0], "run": str(run.run_dir.path), "train_s": round(train_s, 1),
            "val_loss": val[-1] if val else None, "best_val_loss": min(val) if val else None,
            "probe": {k: probe.get(k) for k in ("n", "acc", "acc_base", "change", "change_low", "change_high",
                                                "p_value", "verdict", "judgement", "kl", "ppl", "ppl_base",
                                                "retention", "retention_low", "retention_high")}
            | {"lost": len(probe.get("right_to_wrong") or []), "gained": len(probe.get("wrong_to_right") or [])},
            "warning": (run.run_dir.status() or {}).get("warning"),
            "arc": {"n": p["n"], "change": p["difference"], "change_low": p["difference_low"],
                    "change_high": p["difference_high"], "p_value": p["p_value"], "verdict": p["verdict"],
                    "lost": p["lost"], "gained": p["gained"], "scorer": scorer, **arc_res}}


def ranks(xs):
    order = sorted(range(len(xs)), key=xs.__getitem__)
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(xs, ys):
    """Spearman's rank correlation (Pearson's on the ranks, ties at their mean rank)."""
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def table(results):
    pts = lambda c, lo, hi: f"{c * 100:+.1f} ({lo * 100:+.1f} to {hi * 100:+.1f})"  # noqa: E731
    lines = ["| run | val loss (best) | probe: change, points (95% CI) | probe verdict | judgement | KL | perplexity "
             "| ARC-Easy: change, points (95% CI) | ARC-Easy verdict |", "|" + "---|" * 9]
    for r in results["runs"]:
        p, a = r["probe"], r["arc"]
        lines.append(f"| {r['name']}: {r['what']} | {r['val_loss']:.2f} ({r['best_val_loss']:.2f}) "
                     f"| {pts(p['change'], p['change_low'], p['change_high'])} | {p['verdict']} | {p['judgement']} "
                     f"| {p['kl']:.2f} | {p['ppl']:.1f} | {pts(a['change'], a['change_low'], a['change_high'])} "
                     f"| {a['verdict']} |")
    rho = spearman([r["probe"]["change"] for r in results["runs"]], [r["arc"]["change"] for r in results["runs"]])
    lines.append(f"\nSpearman's rank correlation between the probe's change and ARC-Easy's: {rho:.2f} "
                 f"({len(results['runs'])} runs; {results['date']}, {results['machine']})")
    flips = [(r["probe"]["lost"] + r["probe"]["gained"]) / r["probe"]["n"] for r in results["runs"]]
    lines.append("Flip rates (questions that changed answer, of the probe's): "
                 + ", ".join(f"{r['name']} {f:.1%}" for r, f in zip(results["runs"], flips)))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arc", help="ARC-Easy as {question, choices, answer} JSONL")
    ap.add_argument("--out", default="calibration.json")
    ap.add_argument("--output-dir", default="runs-calibration")
    ap.add_argument("--only", nargs="*", default=list(RUNS))
    ap.add_argument("--scorer", choices=("lm-eval", "ftnb"), default="lm-eval",
                    help="how the first run is scored on ARC (the others: ftnb's tree scorer, checked on the first)")
    ap.add_argument("--table", metavar="JSON", help="print the table of a results file and stop")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    results.update(date=date.today().isoformat(), machine=f"{cpu_name()}, "
                   f"{__import__('os').cpu_count()} cores", arc=str(args.arc))
    done = {r["name"] for r in results["runs"]}
    for name in args.only:
        if name in done:
            continue
        results["runs"].append(measure(name, args.output_dir, args.arc, args.scorer if name == args.only[0]
                                       else "ftnb"))
        write_json(out, results)  # one run at a time: a long calibration can be resumed
        print(json.dumps(results["runs"][-1], indent=1))
    for r in results["runs"]:
        if r["arc"].get("scorer") in (None, "lm-eval") and "tree_agrees_base" not in r["arc"]:
            check_tree_scorer(r, args.arc)
            write_json(out, results)
    results["runs"].sort(key=lambda r: list(RUNS).index(r["name"]))
    write_json(out, results)
    print(table(results))


if __name__ == "__main__":
    main()
