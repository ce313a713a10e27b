"""Comparing runs: their curves, how their configs differ, and the learning-versus-forgetting trade-off.
(Not named `compare`: `ftnb.compare` is the function that compares base and tuned answers.)"""
from . import metrics
from .rundir import RunDir, read_untrusted_json


def run_curves(path):
    """{train: (steps, losses), val: (steps, val_losses), probe: [(step, summary)], config, status, skipped} of one
    run; `config` is config.json as plain JSON ({} when unreadable), `skipped` the odd metrics lines left out."""
    rd = RunDir(path)
    train, val, probe = ([], []), ([], []), []
    rows, skipped = metrics.read(rd.metrics_path)
    for m in rows:
        if m["kind"] == "probe":
            probe.append((m["step"], m["probe"]))
        elif m["kind"] == "eval":
            val[0].append(m["step"])
            val[1].append(m["val_loss"])
        else:
            train[0].append(m["step"])
            train[1].append(m["loss"])
    config = read_untrusted_json(rd.config_path)[0]
    return {"name": rd.path.name, "path": str(rd.path), "train": train, "val": val, "probe": probe,
            "config": config if isinstance(config, dict) else {}, "status": rd.status(), "skipped": skipped}


def config_diff(configs):
    """{field: [value per run]} for the fields whose values differ between the configs (dicts)."""
    keys = sorted(set().union(*[c.keys() for c in configs])) if configs else []
    return {k: [c.get(k) for c in configs] for k in keys if len({repr(c.get(k)) for c in configs}) > 1}


def trade_off_point(curves):
    """(final validation loss, final retention) of a run, or None when it has no validation or probe."""
    if not curves["val"][1] or not curves["probe"]:
        return None
    retention = curves["probe"][-1][1].get("retention")
    return None if retention is None else (curves["val"][1][-1], retention)


def pareto_front(points):
    """Indices of the points (val_loss, retention) that no other point beats on both: lower loss, higher retention."""
    front = []
    for i, (loss, ret) in enumerate(points):
        if not any((l2 <= loss and r2 >= ret) and (l2 < loss or r2 > ret) for j, (l2, r2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def compare_runs(paths):
    """Everything the comparison panel shows, as plain data."""
    curves = [run_curves(p) for p in paths]
    points = [trade_off_point(c) for c in curves]
    have = [i for i, p in enumerate(points) if p is not None]
    front = [have[i] for i in pareto_front([points[i] for i in have])]
    return {"runs": curves, "config_diff": config_diff([c["config"] for c in curves]), "points": points,
            "pareto": front}
