"""Reliability figures for docs/reliability.md: streaming validation of a big JSONL file, and opening a run with a
million metric lines in the monitor.

    python bench/reliability.py [--gb 1.0] [--lines 1000000]
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def big_jsonl(path, gb):
    good = json.dumps({"messages": [{"role": "user", "content": "What time do you close on Sundays? " * 3},
                                    {"role": "assistant", "content": "We close at 9pm on Sundays. " * 4}]})
    bad = json.dumps({"messages": [{"role": "user", "content": "a question with no answer"}]})
    block = "".join((bad if i % 100 == 0 else good) + "\n" for i in range(1000)).encode()
    with open(path, "wb") as fh:
        for _ in range(int(gb * 1e9 / len(block)) + 1):
            fh.write(block)
    return path.stat().st_size


def long_history(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "status.json").write_text(json.dumps({"state": "finished", "step": n, "total_steps": n}))
    with open(folder / "metrics.jsonl", "w") as fh:
        for s in range(1, n + 1):
            fh.write(json.dumps({"step": s, "epoch": s / 1000, "loss": 2 / (1 + s / 1e5), "lr": 1e-4, "grad_norm": 0.5,
                                 "tokens": s * 500, "targets": s * 100, "tokens_per_s": 100.0, "elapsed_s": s * 0.1,
                                 "train_s": s * 0.09}) + "\n")
            if s % 1000 == 0:
                fh.write(json.dumps({"step": s, "epoch": s / 1000, "val_loss": 1.9, "elapsed_s": s * 0.1}) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--lines", type=int, default=1_000_000)
    args = ap.parse_args()
    from ftnb.core.data import validate
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "big.jsonl"
        size = big_jsonl(p, args.gb)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        report = validate(p)
        dt = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"validate_bytes": size, "rows": report.rows, "bad": report.bad, "seconds": round(dt, 1),
                          "rows_per_s": round(report.rows / dt), "max_rss_growth_mb": round((rss1 - rss0) / 1024, 1)}))
    from ftnb.panels import TrainingMonitor
    TrainingMonitor()  # the widget classes' first import and build are not part of opening a run
    with tempfile.TemporaryDirectory() as d:
        long_history(Path(d) / "run", args.lines)
        size = (Path(d) / "run" / "metrics.jsonl").stat().st_size
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            m = TrainingMonitor.open(Path(d) / "run")
            times.append(time.perf_counter() - t0)
        print(json.dumps({"metric_lines": args.lines, "file_mb": round(size / 1e6), "open_seconds": [round(t, 2) for t in times],
                          "points_drawn": len(m.chart.data[0].x), "eval_points": len(m.chart.data[1].x)}))


if __name__ == "__main__":
    main()
