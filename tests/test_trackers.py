"""report_to: each tracker holds what metrics.jsonl holds, read back with the tracker's own reader, offline."""
import glob
import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ftnb
from ftnb import ConfigError, RunDir

NAMED = ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/reg_loss", "eval/val_loss",
         "probe/acc", "probe/retention", "probe/retention_low", "probe/retention_high", "probe/kl", "probe/ppl")


def expected(run_dir):
    """{tag: [(step, value)]} of every number in metrics.jsonl, as the trackers should hold it."""
    out = {}
    for row in RunDir(run_dir).metrics():
        values = row["probe"] if row["kind"] == "probe" else row
        for k, v in values.items():
            if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(f"{row['kind']}/{k}", []).append((row["step"], v))
    return out


def assert_same(got, want):
    assert set(got) == set(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, qa_rows):
    """One run (probe on, a KL regulariser for reg_loss) reported to TensorBoard, MLflow and W&B, offline."""
    out = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR",
                    "WANDB_PROJECT"):
            mp.delenv(var, raising=False)
        run = ftnb.train(model="tiny", data=qa_rows, output_dir=str(out), run_name="tracked", epochs=2, batch_size=4,
                         learning_rate=1e-3, val_fraction=0.2, kl_beta=0.1, lora_r=4,
                         report_to=["tensorboard", "mlflow", "wandb"])
    assert run.state == "finished"
    want = expected(run.run_dir.path)
    assert set(NAMED) <= set(want) and len(want["probe/acc"]) == 3  # baseline, epoch 1, end
    return run.run_dir.path, want


@pytest.fixture(scope="module")
def qa_rows():
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]


def tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_the_metrics_and_the_settings(tracked):
    path, want = tracked
    acc, got = tensorboard_scalars(path / "tensorboard")
    assert_same(got, want)
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lora_r"].number_value == 4 and hparams["model"].string_value == "tiny"
    assert json.loads(hparams["report_to"].string_value) == ["tensorboard", "mlflow", "wandb"]


def test_mlflow_holds_the_metrics_and_the_settings(tracked):
    from mlflow import MlflowClient
    path, want = tracked
    saved = json.loads((path / "trackers.json").read_text())["mlflow"]
    assert saved["tracking_uri"] == f"sqlite:///{path / 'mlflow.db'}"  # in the run folder
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["lora_r"] == "4" and run.data.params["learning_rate"] == "0.001"
    got = {tag: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, tag),
                                                     key=lambda m: (m.step, m.timestamp))]
           for tag in run.data.metrics}
    assert_same(got, want)
    assert not any(path.parent.glob("mlruns")) and not os.path.exists("mlartifacts")  # nothing outside the run


def wandb_records(path):
    """The records of a W&B transaction log (.wandb): a 7-byte header, then LevelDB-style log blocks of 32 KiB whose
    records (7-byte header: crc, length, type full/first/middle/last) hold wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, part, records = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # padding to the block's end
            pos += left
            continue
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            records.append(pb.Record.FromString(part))
            part = b""
    return records


def test_wandb_offline_holds_the_metrics_and_the_settings(tracked):
    path, want = tracked
    [log] = glob.glob(str(path / "wandb" / "offline-run-*" / "*.wandb"))
    got, config = {}, {}
    for rec in wandb_records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            for k, v in row.items():
                if not k.startswith("_"):
                    got.setdefault(k, []).append((row["_step"], v))
        elif kind == "run":
            config = {u.key: json.loads(u.value_json) for u in rec.run.config.update}
    assert_same(got, want)
    assert config["lora_r"] == 4 and config["report_to"] == ["tensorboard", "mlflow", "wandb"]
    assert json.loads((path / "trackers.json").read_text())["wandb"]["id"] in log


TRACKIO = """
import json, sys, ftnb
rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]
run = ftnb.train(model="tiny", data=rows, output_dir=sys.argv[1], run_name="tio", max_steps=4, batch_size=4,
                 eval_every=2, probe=False, report_to=["trackio"])
from trackio.sqlite_storage import SQLiteStorage
print("RESULT", json.dumps({"state": run.state, "logs": SQLiteStorage.get_logs("ftnb", "tio"),
                  "config": SQLiteStorage.get_run_config("ftnb", "tio")}, default=str))
"""


def test_trackio_holds_the_metrics(tmp_path):
    pytest.importorskip("trackio")
    # trackio reads TRACKIO_DIR when imported: a process of its own keeps its store in tmp_path
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    env.pop("TRACKIO_SPACE_ID", None)
    env.pop("TRACKIO_SERVER_URL", None)
    r = subprocess.run([sys.executable, "-c", TRACKIO, str(tmp_path / "runs")], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["state"] == "finished" and out["config"]["report_to"] == ["trackio"]
    got = {}
    for entry in out["logs"]:
        for k, v in entry.items():
            if "/" in k:
                got.setdefault(k, []).append((entry["step"], v))
    assert_same(got, expected(tmp_path / "runs" / "tio"))


def test_a_failing_tracker_is_detached_and_training_goes_on(tiny_cfg, qa_data, monkeypatch):
    from ftnb.core import trackers
    closed = []

    def broken(self, values, step):
        raise RuntimeError("tracker down")
    monkeypatch.setattr(trackers.TensorBoard, "log", broken)
    original = trackers.TensorBoard.close
    monkeypatch.setattr(trackers.TensorBoard, "close", lambda self, how: closed.append(how) or original(self, how))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = ftnb.train(tiny_cfg, qa_data, max_steps=3, probe=False, report_to=["tensorboard"])
    assert run.state == "finished" and run.step == 3
    said = [str(w.message) for w in caught if "tracker down" in str(w.message)]
    assert len(said) == 1 and "tensorboard tracker" in said[0] and "detached" in said[0]
    assert closed == ["failed"]  # closed once, when it failed; never again
    assert len(run.metrics()) == 3 + 1  # metrics.jsonl is complete: 3 train lines, 1 evaluation


def test_a_missing_tracker_package_names_the_extra(tiny_cfg, qa_data, monkeypatch):
    from ftnb.core import trackers
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"report_to: 'wandb' needs wandb.*pip install 'ftnb\[wandb\]'"):
        ftnb.train(tiny_cfg, qa_data, report_to=["tensorboard", "wandb"])
    assert not os.path.exists(tiny_cfg.output_dir) or not os.listdir(tiny_cfg.output_dir)  # no half-made run


def test_report_to_is_checked_and_a_flag(tmp_path, qa_data):
    with pytest.raises(ConfigError, match="report_to: must name each of 'tensorboard'"):
        ftnb.TrainConfig(report_to=["neptune"])
    with pytest.raises(ConfigError, match="at most once"):
        ftnb.TrainConfig(report_to=["wandb", "wandb"])
    from ftnb.core.config import TRACKERS
    from ftnb.core.trackers import CLASSES
    assert set(TRACKERS) == set(CLASSES)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in qa_data))
    from ftnb.cli import main
    main(["train", "--model", "tiny", "--data", str(data), "--output-dir", str(tmp_path / "runs"), "--run-name", "cli",
          "--max-steps", "2", "--no-probe", "--report-to", "tensorboard"])
    assert json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())["report_to"] == ["tensorboard"]
    assert list((tmp_path / "runs" / "cli" / "tensorboard").glob("events.out.tfevents.*"))
    with pytest.raises(SystemExit):
        main(["train", "--report-to", "neptune"])


def test_a_resumed_run_continues_the_same_tracker_runs(tiny_cfg, qa_data, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def interrupt_at_3(ev):  # after step 3 was logged; the last checkpoint is step 2's
        if ev.kind == "log" and ev.step == 3:
            raise KeyboardInterrupt
    cfg = tiny_cfg.replace(probe=False, report_to=["tensorboard", "mlflow"], save_every=2, run_name="again")
    with pytest.raises(KeyboardInterrupt):
        ftnb.train(cfg, qa_data, subscribers=[interrupt_at_3])
    path = RunDir(f"{cfg.output_dir}/again").path
    first = json.loads((path / "trackers.json").read_text())["mlflow"]["run_id"]
    done = ftnb.resume(path)
    assert done.state == "finished"
    want = expected(path)
    assert [s for s, _ in want["train/loss"]] == list(range(1, 11))
    _, got = tensorboard_scalars(path / "tensorboard")
    assert_same(got, want)  # step 3's first copy is hidden (purged) by TensorBoard
    from mlflow import MlflowClient
    saved = json.loads((path / "trackers.json").read_text())["mlflow"]
    assert saved["run_id"] == first
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert client.get_run(first).info.status == "FINISHED"
    history = sorted(client.get_metric_history(first, "train/loss"), key=lambda m: (m.step, m.timestamp))
    latest = {m.step: m.value for m in history}  # MLflow keeps both copies of step 3: the later one counts
    assert_same({"train/loss": sorted(latest.items())}, {"train/loss": want["train/loss"]})
