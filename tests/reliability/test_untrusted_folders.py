"""A run folder from anywhere is safe to open (issue 13): no code runs from it, nothing it holds reaches a page as
markup, odd files never break a viewer, and the server side reads it without torch."""
import ast
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ftnb
from ftnb import RunDir, RunError
from ftnb.core import metrics

FTNB = Path(ftnb.__file__).parent
XSS = "<img src=x onerror=alert(1)>"
EVIL_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    data = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    return ftnb.train(model="tiny", method="full", learning_rate=1e-4, data=data, probe=False, max_steps=2,
                      save_every=1, output_dir=str(tmp_path_factory.mktemp("full")), run_name="full")


def copy_run(run, dest):
    import shutil
    shutil.copytree(run.run_dir.path, dest)
    return RunDir(dest)


# -- item 1: no code from a folder ----------------------------------------------------------------------------------

def plant_remote_code(rd, marker):
    """A model/ folder whose config names custom code (which would write `marker`), and a config.json that asks
    for trust_remote_code."""
    cfg = json.loads(rd.config_path.read_text())
    rd.config_path.write_text(json.dumps({**cfg, "trust_remote_code": True}))
    model_cfg = json.loads((rd.path / "model" / "config.json").read_text())
    model_cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                             "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (rd.path / "model" / "config.json").write_text(json.dumps(model_cfg))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (rd.path / "model" / name).write_text(EVIL_CODE.format(marker=str(marker)))


def test_trust_remote_code_is_never_taken_from_the_folder(full_run, tmp_path):
    rd, marker = copy_run(full_run, tmp_path / "evil"), tmp_path / "pwned"
    plant_remote_code(rd, marker)
    for call in (lambda: ftnb.load_run(rd.path, device="cpu"), lambda: ftnb.resume(rd.path, max_steps=3)):
        with pytest.raises(RunError, match="trust_remote_code=True"):
            call()
        assert not marker.exists()
    from ftnb.cli import main
    with pytest.raises(SystemExit):
        main(["generate", str(rd.path), "hello"])
    assert not marker.exists()
    # the folder's config says no, its model/ still names custom code: the built-in class loads it, nothing runs
    cfg = json.loads(rd.config_path.read_text())
    rd.config_path.write_text(json.dumps({**cfg, "trust_remote_code": False}))
    run = ftnb.load_run(rd.path, device="cpu")
    assert run.config.trust_remote_code is False and not marker.exists()


def test_pickle_weights_in_adapter_or_checkpoint_are_refused(tiny_cfg, qa_data, tmp_path):
    run = ftnb.train(tiny_cfg, qa_data, run_name="lora", probe=False, max_steps=2, save_every=1)
    marker = tmp_path / "pwned"
    for weights in (run.run_dir.path / "adapter", run.run_dir.checkpoints()[-1][1] / "adapter"):
        (weights / "adapter_model.safetensors").unlink()
        (weights / "adapter_model.bin").write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(ftnb.ModelNotFoundError, match="pickle"):
        ftnb.load_run(run.run_dir.path, device="cpu")
    with pytest.raises(ftnb.ModelNotFoundError, match="pickle"):
        ftnb.load_run(run.run_dir.path, device="cpu", checkpoint=run.run_dir.checkpoints()[-1][0])
    with pytest.raises(ftnb.ModelNotFoundError, match="pickle"):
        ftnb.resume(run.run_dir.path, max_steps=3)
    assert not marker.exists()


def test_a_config_of_the_wrong_types_is_a_clear_error(tiny_cfg, qa_data, tmp_path):
    run = ftnb.train(tiny_cfg, qa_data, run_name="typed", probe=False, max_steps=1)
    cfg = json.loads(run.run_dir.config_path.read_text())
    run.run_dir.config_path.write_text(json.dumps({**cfg, "lora_r": XSS}))
    with pytest.raises(RunError, match="lora_r: must be a whole number"):
        ftnb.load_run(run.run_dir.path, device="cpu")
    run.run_dir.config_path.write_text("[" * 100_000)
    with pytest.raises(RunError, match="not valid JSON"):
        ftnb.load_run(run.run_dir.path, device="cpu")


# -- items 2 and 3: every line typed, odd lines skipped and counted ---------------------------------------------------

ODD_LINES = [
    json.dumps({"step": XSS, "val_loss": 1.0, "samples": [{"prompt": "p", "answer": "a"}]}),  # a string step
    json.dumps({"step": 2, "val_loss": XSS}),  # a string number
    json.dumps({"step": 3, "probe": {"acc": XSS, "acc_base": 0.5, "acc_low": 0.4, "acc_high": 0.6}}),
    json.dumps({"step": XSS, "probe": {"acc": 0.5, "acc_base": 0.5, "acc_low": 0.4, "acc_high": 0.6}}),
    json.dumps({"loss": 1.0}),  # no step
    json.dumps({"step": True, "loss": 1.0}),  # a boolean is not a step
    json.dumps({"step": 4, "loss": [1.0]}),
    json.dumps("a bare string"),
    json.dumps([1, 2, 3]),
    "[" * 5000 + "]" * 5000,  # nested deeper than the JSON reader recurses
    "{not json",
    json.dumps({"kind": "mystery", "step": 5, "loss": 1.0}),
    json.dumps({"step": 6, "val_loss": 1.0, "samples": [{"prompt": 1, "answer": "a"}]}),
]
GOOD_LINES = [
    json.dumps({"kind": "train", "step": 1, "loss": 2.0, "lr": 1e-4, "grad_norm": 1.0, "elapsed_s": 1.0,
                "train_s": 1.0, "tokens_per_s": 100.0}),
    json.dumps({"step": 2, "loss": 1.5, "elapsed_s": 2.0}),  # a line from before kinds were written
    json.dumps({"kind": "eval", "step": 2, "val_loss": 1.7, "samples": [{"prompt": XSS, "answer": XSS}]}),
    json.dumps({"kind": "probe", "step": 2, "probe": {"acc": 0.5, "acc_base": 0.5, "acc_low": 0.4, "acc_high": 0.6,
                                                       "retention": 1.0, "right_to_wrong": [XSS]}}),
]


def hostile_run(folder, status=None):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": "tiny"}))
    (folder / "status.json").write_text(json.dumps(status or {"state": "finished", "step": 2, "total_steps": 2,
                                                              "error": XSS}))
    lines = [*GOOD_LINES[:2], *ODD_LINES, *GOOD_LINES[2:]]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"kind": "train", "step": 3, "loss": 1.')
    (folder / "probe").mkdir()
    (folder / "probe" / "step-2.json").write_text(json.dumps({"step": 2, "gen": [{"question": XSS}]}))
    (folder / "probe" / "step-0.json").write_text(json.dumps({"step": 0, "gen": "not a list"}))
    return RunDir(folder)


def test_odd_metrics_lines_are_skipped_and_counted(tmp_path):
    rd = hostile_run(tmp_path / "run")
    rows, skipped = metrics.read(rd.metrics_path)
    assert skipped == len(ODD_LINES)  # the torn last line is not counted: its writer may still be appending
    assert [(r["kind"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("eval", 2), ("probe", 2)]
    assert all(isinstance(r["step"], int) for r in rows)
    history = metrics.History()
    assert history.load(rd.metrics_path) == rd.metrics_path.stat().st_size - len('{"kind": "train", "step": 3, "loss": 1.')
    assert history.skipped == len(ODD_LINES) and history.train["step"] == [1, 2] and history.val["step"] == [2]
    summary = ftnb.list_runs(tmp_path)[0]
    assert summary["loss"] == 1.5 and summary["val_loss"] == 1.7 and summary["retention"] == 1.0
    from ftnb.core.comparison import compare_runs
    assert compare_runs([rd.path])["runs"][0]["skipped"] == len(ODD_LINES)


def test_viewers_show_a_hostile_folder_as_text(tmp_path):
    from ftnb.panels import ForgettingPanel, RunComparison, TrainingMonitor
    rd = hostile_run(tmp_path / "runs" / XSS.replace("/", ""))
    monitor = TrainingMonitor.open(rd.path)
    forgetting = ForgettingPanel(run_dir=rd.path)
    comparison = RunComparison(str(tmp_path / "runs"))
    comparison.select([str(rd.path)])
    html = [monitor.samples.value, monitor.status.value, monitor.progress_label.value, forgetting.headline.value,
            forgetting.flips.value, forgetting.answers.value, comparison.msg.value, comparison.diff.value]
    assert "Sample answers at step 2" in monitor.samples.value and "&lt;img" in monitor.samples.value
    assert "step 2" in forgetting.headline.value and "&lt;img" in forgetting.flips.value
    assert not any("<img" in h for h in html), [h for h in html if "<img" in h]


def test_a_corrupt_status_never_breaks_a_listing(tmp_path, capsys):
    good = hostile_run(tmp_path / "good")
    for name, content in (("deep", "[" * 2000), ("list", "[1, 2]"), ("types", json.dumps(
            {"state": "running", "step": XSS, "total_steps": [1], "pid": "x", "error": {"a": 1}})),
            ("state", json.dumps({"state": XSS})), ("binary", "\xff\xfe")):
        hostile_run(tmp_path / name, status={"state": "finished"})
        (tmp_path / name / "status.json").write_text(content)
    runs = {r["name"]: r for r in ftnb.list_runs(tmp_path)}
    assert runs["good"]["state"] == "finished"
    assert {runs[n]["state"] for n in ("deep", "list", "state", "binary")} == {"unreadable"}
    assert runs["types"]["step"] == 0 and runs["types"]["total_steps"] is None  # wrong types read as missing
    from ftnb.cli import main
    main(["runs", str(tmp_path)])
    out = capsys.readouterr().out
    assert "good" in out and "unreadable" in out
    assert good.status()["error"] == XSS  # kept as text; escaping is the viewer's job


def test_metrics_jsonl_has_one_reader():
    """Outside ftnb/core/metrics.py, code only hands the file's path to that module."""
    offenders = []
    for path in FTNB.rglob("*.py"):
        if path.name == "metrics.py" and path.parent.name == "core":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"metrics_path|metrics\.jsonl", line) and re.search(r"open\(|json\.load|read_(bytes|text)|"
                                                                             r"readline|for .* in ", line):
                offenders.append(f"{path.relative_to(FTNB)}:{n}: {line.strip()}")
    assert offenders == []


def test_compare_is_the_function_and_forgetting_does_not_import_train():
    import importlib
    importlib.import_module("ftnb.core.comparison")
    importlib.import_module("ftnb.core.train")
    importlib.import_module("ftnb.core.generate")
    assert callable(ftnb.compare) and callable(ftnb.train) and callable(ftnb.generate)

    def imports(name):
        tree = ast.parse((FTNB / "core" / f"{name}.py").read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "train" not in imports("forgetting") and "forgetting" in imports("train")


# -- item 11: the server side imports no torch ------------------------------------------------------------------------

def test_the_server_side_reads_runs_without_torch(tmp_path):
    hostile_run(tmp_path / "root" / "runs" / "r")
    code = f"""
import json, sys
from ftnb.server.handlers import setup_handlers
from ftnb.server.runs import RunIndex, read_config
index = RunIndex({str(tmp_path / "root")!r}, "")
body, _ = index.build()
runs = json.loads(body)["runs"]
assert runs[0]["path"] == "runs/r" and runs[0]["val_loss"] == 1.7, runs
assert read_config(index.root / "runs" / "r")[0] == {{"model": "tiny"}}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
