"""Two processes (gloo on CPU), data parallel (DDP) or sharded (FSDP), train the same run as one process: same losses,
same weights, one writer."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ftnb
from ftnb.core.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]

LAUNCHED = """
import json, sys, ftnb
job = json.loads(sys.argv[1])
stop_at = job.pop("stop_at", None)
stopper = lambda ev: ev.run.request_stop() if ev.kind == "log" and ev.step == stop_at else None
if "resume" in job:
    ftnb.resume(job["resume"])
else:
    ftnb.train(ftnb.TrainConfig(**job), subscribers=[stopper])
"""


def launch(job, tmp_path, launcher="torchrun"):
    """Two processes on CPU (gloo), each running ftnb.train (or resume) as `job` says; started by torchrun or by
    `accelerate launch` with the DDP or FSDP config file the docs give (launcher "accelerate-ddp"/"accelerate-fsdp")."""
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
             if launcher == "torchrun" else
             [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / f"docs/accelerate-{launcher.split('-')[1]}.yaml"), "--main_process_port", "0"])
    proc = subprocess.run(start + [str(script), json.dumps(job)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(run_dir):
    rows = RunDir(run_dir).metrics()
    return ([(r["step"], (r["loss"], r["grad_norm"]), r["tokens"]) for r in rows if "loss" in r],
            [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r])


def assert_same_curves(a, b):
    (train_a, val_a), (train_b, val_b) = losses(a), losses(b)
    assert [s for s, _, _ in train_a] == [s for s, _, _ in train_b]
    assert [t for _, _, t in train_a] == [t for _, _, t in train_b]  # tokens count the whole step, every process
    for (_, x, _), (_, y, _) in zip(train_a, train_b):  # loss and gradient norm
        assert x == pytest.approx(y, rel=1e-4)
    assert [s for s, _ in val_a] == [s for s, _ in val_b] and val_a
    for (_, x), (_, y) in zip(val_a, val_b):
        assert x == pytest.approx(y, rel=1e-4)


def weights(run_dir):
    folder = RunDir(run_dir).weights_path
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.fixture
def job(tmp_path, qa_data):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in qa_data + qa_data[:6]))  # 30 rows: 24 train, 6 val
    # micro_batch_tokens = max_seq_len: each process splits its share into several passes, not always as many as
    # the other process; dropout off, because each process draws its own dropout masks
    return dict(model="tiny", data=str(data), output_dir=str(tmp_path / "runs"), batch_size=5, max_steps=6,
                learning_rate=1e-3, lora_dropout=0.0, max_seq_len=64, micro_batch_tokens=64, probe=False,
                log_every=1, eval_every=3, save_every=3, val_fraction=0.2, device="cpu")


def test_two_processes_stop_and_resume_like_one_process_straight(job, tiny_path, tmp_path):
    # started data parallel (DDP, torchrun), stopped at step 2 and resumed with the layers sharded (FSDP, accelerate
    # launch with the docs' config): the probe and sample answers then run on process 0 with the layers gathered there
    job = {**job, "probe": True, "sample_prompts": ["What is 2 plus 2?"]}
    one = ftnb.train(ftnb.TrainConfig(**job, run_name="one"))
    two = tmp_path / "runs" / "two"
    launch({**job, "run_name": "two", "stop_at": 2}, tmp_path)
    assert RunDir(two).status()["state"] == "stopped" and RunDir(two).status()["step"] == 2
    launch({"resume": str(two)}, tmp_path, launcher="accelerate-fsdp")

    assert RunDir(two).status()["state"] == "finished"
    assert_same_curves(one.run_dir.path, two)
    w1, w2 = weights(one.run_dir.path), weights(two)
    assert w1.keys() == w2.keys() and w1
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    probes = [sorted(p.name for p in (run / "probe").glob("step-*.json")) for run in (one.run_dir.path, two)]
    assert probes[0] == probes[1] and len(probes[0]) >= 3
    for name in probes[0]:
        a, b = (json.loads((run / "probe" / name).read_text())["summary"] for run in (one.run_dir.path, two))
        assert a["retention"] == pytest.approx(b["retention"], abs=1e-6)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-3, abs=1e-6)
    answers = [[r["samples"] for r in RunDir(run).metrics() if r.get("samples")] for run in (one.run_dir.path, two)]
    assert answers[0] == answers[1] and answers[0]
    # process 0 alone wrote the run directory: one meta.json naming both processes, nothing else beside the run
    assert json.loads((two / "meta.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]
    assert not [p for p in two.rglob("*") if p.name.startswith(".")]


def test_full_fine_tuning_with_regularisers_sharded_then_data_parallel(job, tiny_path, tmp_path):
    # full fine-tuning, one example per step: process 1 joins every exchange with passes of weight 0. Sharded (FSDP)
    # up to step 3: the embeddings and output layer stay whole (gradients averaged by hand), L2-SP's anchor is sharded
    # like its weights, KL-to-base runs on every process; then resumed data parallel (DDP) from the gathered checkpoint,
    # where the regularisers' backward comes before the gradient exchange
    job = {**job, "method": "full", "learning_rate": 1e-4, "batch_size": 1, "max_steps": 5, "l2sp_alpha": 0.5,
           "kl_beta": 0.1, "gradient_checkpointing": True}
    one = ftnb.train(ftnb.TrainConfig(**job, run_name="one"))
    two = tmp_path / "runs" / "two"
    launch({**job, "run_name": "two", "stop_at": 3}, tmp_path, launcher="accelerate-fsdp")
    assert RunDir(two).status()["step"] == 3
    launch({"resume": str(two)}, tmp_path)
    assert RunDir(two).status()["state"] == "finished"
    assert_same_curves(one.run_dir.path, two)
    w1, w2 = weights(one.run_dir.path), weights(two)
    assert w1.keys() == w2.keys() and w1
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
