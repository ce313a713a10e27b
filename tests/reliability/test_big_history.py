"""A long history opens quickly (what is drawn is downsampled; every evaluation and probe line is kept)."""
import json

from ftnb.panels import ForgettingPanel, TrainingMonitor
from ftnb.core.metrics import MAX_POINTS


def test_a_200k_line_history(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "status.json").write_text(json.dumps({"state": "finished", "step": 200_000, "total_steps": 200_000}))
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        for s in range(1, 200_001):
            fh.write(json.dumps({"step": s, "loss": 1 / s, "lr": 1e-4, "grad_norm": 1.0, "elapsed_s": s}) + "\n")
            if s % 1000 == 0:
                fh.write(json.dumps({"step": s, "val_loss": 2.0, "elapsed_s": s}) + "\n")
            if s % 50_000 == 0:
                fh.write(json.dumps({"step": s, "probe": {"acc": 0.5, "acc_base": 0.5, "acc_low": 0.4, "acc_high": 0.6,
                                                         "retention": 1.0, "kl": 0.0, "ppl": 10.0}}) + "\n")
        fh.write('{"step": 200001, "loss": 0.1')  # a torn last line: a writer died mid-append
    m = TrainingMonitor.open(tmp_path)
    xs = list(m.chart.data[0].x)
    assert len(xs) <= MAX_POINTS and xs[-1] == 200_000 and xs == sorted(xs)
    assert len(m.chart.data[1].x) == 200 and len(m.history.probe) == 4
    assert "step 200000/200000" in m.progress_label.value
    panel = ForgettingPanel(run_dir=tmp_path)
    assert [s for s, _ in panel.points] == [50_000, 100_000, 150_000, 200_000]
