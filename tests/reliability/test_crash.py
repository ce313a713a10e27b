"""SIGKILL at the worst moments: inside a step, while a checkpoint is written, while a metrics line is appended, and at
random times. Afterwards every file is whole, status.json tells the truth, and resuming ends with exactly the weights of
a run that never stopped."""
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import ftnb
from ftnb import RunDir

DATA = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]
SETTINGS = dict(model="tiny", epochs=3, batch_size=4, probe=False, save_every=2, val_fraction=0.2, lora_dropout=0.1,
                seed=3, learning_rate=1e-3)

SCRIPT = """
import importlib, json, os, signal, sys
import torch
import ftnb, ftnb.core.loss as L, ftnb.core.rundir as R
out, name, mode, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if mode == "checkpoint":  # die halfway through writing a checkpoint's optimizer state
    real_save, n = torch.save, [0]
    def save(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            n[0] += 1
            if n[0] == at:
                open(f, "wb").write(b"half an optimizer")
                die()
        return real_save(obj, f, *a, **k)
    torch.save = save
elif mode == "metrics":  # die in the middle of appending a metrics line
    real_append = R.RunDir.append_metrics
    def append(self, kind, step, data):
        if step == at and kind == "train":
            open(self.metrics_path, "a").write('{"kind": "train", "step": %d, "loss": 1.2' % at)
            die()
        return real_append(self, kind, step, data)
    R.RunDir.append_metrics = append
elif mode == "step":  # die inside a step, between two micro-batches' backward passes
    real_loss, n = L.loss_sum, [0]
    def loss_sum(*a, **k):
        n[0] += 1
        if n[0] == at:
            die()
        return real_loss(*a, **k)
    L.loss_sum = loss_sum
    importlib.import_module("ftnb.core.train").loss_sum = loss_sum  # the module (ftnb.train is the function)
elif mode == "prune":  # die halfway through deleting an old checkpoint (its optimizer state gone, the rest still there)
    real_rmtree = R.shutil.rmtree
    def rmtree(p, *a, **k):
        name = os.path.basename(p)
        if "step-" in name and ".tmp-" not in name:
            os.unlink(os.path.join(p, "optimizer.pt"))
            die()
        return real_rmtree(p, *a, **k)
    R.shutil.rmtree = rmtree
data = json.loads(os.environ["FTNB_TEST_DATA"])
ftnb.train(data=data, output_dir=out, run_name=name, **json.loads(os.environ["FTNB_TEST_SETTINGS"]))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = ftnb.train(data=DATA, output_dir=str(tmp_path_factory.mktemp("ref")), run_name="ref", **SETTINGS)
    return load_file(run.run_dir.path / "adapter" / "adapter_model.safetensors")


def launch(tmp_path, name, mode, at):
    env = {**__import__("os").environ, "FTNB_TEST_DATA": json.dumps(DATA), "FTNB_TEST_SETTINGS": json.dumps(SETTINGS)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), name, mode, str(at)], env=env)


def check_whole(rd):
    """Every JSON file parses, metrics.jsonl has no torn line but the last, checkpoints are complete or absent."""
    for p in rd.path.rglob("*.json"):
        if not any(part.startswith(".tmp-") for part in p.parts):
            json.loads(p.read_text())
    lines = rd.metrics_path.read_bytes().split(b"\n") if rd.metrics_path.exists() else [b""]
    for line in lines[:-1]:
        json.loads(line)
    for step, folder in rd.checkpoints():
        torch.load(folder / "optimizer.pt", weights_only=True)
        load_file(folder / "adapter" / "adapter_model.safetensors")
        assert json.loads((folder / "trainer_state.json").read_text())["step"] == step


def resume_and_compare(rd, reference):
    if not rd.checkpoints():
        with pytest.raises(ftnb.RunError, match="no checkpoint"):
            ftnb.resume(rd.path)
        return False
    run = ftnb.resume(rd.path)
    assert run.run_dir.status()["state"] == "finished"
    assert not list(rd.checkpoints_path.glob(".tmp-*"))  # the half-written checkpoint was cleared away
    assert not list(rd.checkpoints_path.glob(".old-*"))  # and so was the half-deleted one
    final = load_file(rd.path / "adapter" / "adapter_model.safetensors")
    assert final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)
    steps = [m["step"] for m in rd.metrics() if "loss" in m]
    assert steps == sorted(set(steps)) and steps[-1] == run.total_steps  # no duplicated or torn lines after resume
    return True


@pytest.mark.parametrize("mode,at", [("checkpoint", 2), ("metrics", 5), ("step", 13), ("prune", 0)])
def test_kill_at_the_worst_moment(tmp_path, reference, mode, at):
    proc = launch(tmp_path, "run", mode, at)
    assert proc.wait(120) == -signal.SIGKILL
    rd = RunDir(tmp_path / "run")
    check_whole(rd)
    assert rd.status()["state"] == "interrupted"  # status.json says "running", but its process is gone
    assert ftnb.list_runs(tmp_path)[0]["state"] == "interrupted"
    if mode == "checkpoint":
        assert [s for s, _ in rd.checkpoints()] == [2]  # step 4's checkpoint is absent, not half there
    if mode == "prune":
        # step 2's checkpoint is gone, not half there (step 5, the best validation step so far, is saved whatever
        # save_every says, and pruning step 2 after it was the moment of the kill)
        assert [s for s, _ in rd.checkpoints()] == [4, 5]
    assert resume_and_compare(rd, reference)


def test_kill_at_random_times(tmp_path, reference):
    rng = random.Random(11)
    resumed = 0
    for trial in range(3):
        proc = launch(tmp_path, f"r{trial}", "none", 0)
        rd = RunDir(tmp_path / f"r{trial}")
        deadline = time.time() + 120
        while not rd.checkpoints() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        check_whole(rd)
        if rd.status().get("state") != "finished":
            resumed += resume_and_compare(rd, reference)
    assert resumed >= 1
