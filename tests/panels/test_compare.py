import ftnb
from ftnb.core.comparison import config_diff, pareto_front
from ftnb.panels import RunComparison


def test_pareto_front_and_config_diff():
    pts = [(1.0, 0.90), (1.2, 0.99), (0.9, 0.80), (1.3, 0.95), (1.0, 0.85)]
    assert pareto_front(pts) == [2, 0, 1]
    assert config_diff([{"a": 1, "b": 2}, {"a": 1, "b": 3}]) == {"b": [2, 3]}


def test_pick_runs_overlay_diff_and_trade_off(tiny_cfg, qa_data):
    a = ftnb.train(tiny_cfg, qa_data, run_name="gentle", learning_rate=1e-4)
    b = ftnb.train(tiny_cfg, qa_data, run_name="hard", learning_rate=5e-3, lora_r=32)
    panel = RunComparison(tiny_cfg.output_dir)
    assert len(panel.picker.options) == 2
    panel.picker.value = tuple(p for _, p in panel.picker.options)
    res = panel.result
    names = [r["name"] for r in res["runs"]]
    assert sorted(names) == ["gentle", "hard"]
    assert len(panel.curves.data) == 4
    for i, r in enumerate(res["runs"]):
        assert list(panel.curves.data[2 * i].y) == r["train"][1]
        assert list(panel.curves.data[2 * i + 1].x) == r["val"][0]
    assert "learning_rate" in panel.diff.value and "lora_r" in panel.diff.value
    xs = list(panel.scatter.data[0].x)
    assert sorted(xs) == sorted(p[0] for p in res["points"])
    assert 1 <= len(panel.scatter.data[1].x) <= 2  # the Pareto front
