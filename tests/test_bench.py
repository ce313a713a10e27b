"""The side-by-side benchmark still runs (at a tiny shape; its figures are recorded in docs/benchmarks.md, not here)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import throughput  # noqa: E402


def test_benchmark_runs_both_sides_on_the_same_batches(tmp_path, capsys):
    out = tmp_path / "bench.json"
    throughput.main(["--shapes", "tiny", "--methods", "lora", "--steps", "4", "--warm", "2", "--batch", "4",
                     "--json", str(out)])
    peer, ours = json.loads(out.read_text())
    assert (peer["impl"], ours["impl"]) == ("trainer", "ftnb")
    assert peer["tok_s"] > 0 and ours["tok_s"] > 0 and len(peer["losses"]) == 4 and len(ours["losses"]) == 2
    assert ours["curve_gap"] < 0.01  # same weights, same batches in the same order: the curves agree
    assert peer["pad_share"] > 0.3 and "speed-up" in capsys.readouterr().out
