"""The side-by-side benchmark still runs (at a tiny shape; its figures are recorded in docs/benchmarks.md, not here)."""
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import throughput  # noqa: E402


def test_every_peer_trains_on_the_same_batches_and_targets(tmp_path, capsys):
    out = tmp_path / "bench.json"
    throughput.main(["--shapes", "tiny", "--mixes", "chat", "--methods", "lora", "--steps", "4", "--warm", "2",
                     "--batch", "4", "--impls", "trainer", "trainer-flat", "trl", "ftnb", "--json", str(out)])
    rows = {r["impl"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"trainer", "trainer-flat", "trl", "ftnb"}
    assert all(r["tok_s"] > 0 for r in rows.values())
    peers = [rows[k]["losses"] for k in ("trainer", "trainer-flat", "trl")]
    for losses in peers[1:]:  # same weights, batches, order and targets: the peers' curves agree step by step
        assert len(losses) == 4 and max(abs(a - b) for a, b in zip(losses, peers[0])) < 1e-3
    assert rows["ftnb"]["curve_gap"] < 0.01 and len(rows["ftnb"]["losses"]) == 2
    assert rows["trainer"]["pad_share"] > 0.2 and rows["trainer-flat"]["pad_share"] == 0
    table = capsys.readouterr().out
    assert "vs fastest padding-free peer" in table and "| tiny | chat | lora | ftnb |" in table


def test_the_chat_mix_trains_on_answers_only():
    data = throughput.chat_mix(400, 1000)
    lengths = [len(ids) for ids, _ in data]
    assert max(lengths) <= 1024 and 300 < statistics.mean(lengths) < 600
    share = sum(sum(mask) for _, mask in data) / sum(lengths)
    assert 0.5 < share < 0.85  # answers are most tokens of public chat sets, not all of them
    for ids, mask in data:
        assert not any(mask[:throughput.SYSTEM]) and len(ids) == len(mask)


def test_the_step_profile_groups_the_time(capsys):
    import profile_step
    profile_step.main(["--shape", "tiny", "--batch", "3"])
    out = capsys.readouterr().out
    assert "matmul" in out and "attention" in out and "GFLOP/s" in out and "attention segments" in out
