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
from ftnb.core.models import decoder_layers
from ftnb.core.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]

LAUNCHED = """
import json, os, sys, ftnb
for job in json.loads(sys.argv[1]):
    if "fsdp" in job:  # the switch `accelerate launch` sets for an FSDP config
        os.environ["ACCELERATE_USE_FSDP"] = str(job.pop("fsdp")).lower()
    stop_at = job.pop("stop_at", None)
    stopper = lambda ev: ev.run.request_stop() if ev.kind == "log" and ev.step == stop_at else None
    if "resume" in job:
        ftnb.resume(job["resume"])
    else:
        run = ftnb.train(ftnb.TrainConfig(**job), subscribers=[stopper])
        assert run.run_dir.status()["state"] == "stopped" and run.step == stop_at
"""


def launch(jobs, tmp_path, launcher="torchrun"):
    """Two processes on CPU (gloo) that run ftnb.train or resume for each of `jobs` in turn (a job's "fsdp" shards the
    layers or not, whatever the launcher said); started by torchrun or by `accelerate launch` with the DDP or FSDP
    config file the docs give (launcher "accelerate-ddp" / "accelerate-fsdp"). Two runs in one launch save a start-up
    of some 10 s."""
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
             if launcher == "torchrun" else
             [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / f"docs/accelerate-{launcher.split('-')[1]}.yaml"), "--main_process_port", "0"])
    proc = subprocess.run(start + [str(script), json.dumps(jobs)], env=env, capture_output=True, text=True, timeout=300)
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


def assert_same_run(a, b):
    """Same curves and same final weights (rel 1e-4)."""
    assert_same_curves(a, b)
    w1, w2 = weights(a), weights(b)
    assert w1.keys() == w2.keys() and w1
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)


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
    # launched by torchrun: data parallel up to a stop at step 2, then resumed with the layers sharded (FSDP), where
    # the probe and the sample answers run on process 0 with the layers gathered there
    job = {**job, "probe": True, "sample_prompts": ["What is 2 plus 2?"]}
    one = ftnb.train(ftnb.TrainConfig(**job, run_name="one"))
    two = tmp_path / "runs" / "two"
    launch([{**job, "run_name": "two", "stop_at": 2}, {"resume": str(two), "fsdp": True}], tmp_path)

    assert RunDir(two).status()["state"] == "finished"
    assert_same_run(one.run_dir.path, two)
    probes = [sorted(p.name for p in (run / "probe").glob("step-*.json")) for run in (one.run_dir.path, two)]
    assert probes[0] == probes[1] and len(probes[0]) >= 3
    for name in probes[0]:
        a, b = (json.loads((run / "probe" / name).read_text())["summary"] for run in (one.run_dir.path, two))
        assert a["retention"] == pytest.approx(b["retention"], abs=1e-6)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-3, abs=1e-6)
    answers = [[r["samples"] for r in RunDir(run).metrics() if r.get("samples")] for run in (one.run_dir.path, two)]
    assert answers[0] == answers[1] and answers[0]
    # process 0 alone wrote the run directory: one meta.json naming both processes, nothing else beside the run;
    # sharded, it held its half of the layers and the whole embeddings
    meta = json.loads((two / "meta.json").read_text())
    assert meta["processes"] == 2 and meta["sharded"]
    layers = sum(p.numel() for layer in decoder_layers(one.model) for p in layer.parameters())
    assert meta["params_per_process"] == pytest.approx(meta["params"] - layers / 2, rel=0.01)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]
    assert not [p for p in two.rglob("*") if p.name.startswith(".")]


def test_full_fine_tuning_with_regularisers_sharded_then_data_parallel(job, tiny_path, tmp_path):
    # full fine-tuning, one example per step: process 1 joins every exchange with passes of weight 0. Launched with
    # the docs' FSDP config, sharded up to a stop at step 3: the embeddings and output layer stay whole (gradients
    # averaged by hand), L2-SP's anchor is sharded like its weights, KL-to-base runs on every process; then resumed
    # data parallel (DDP) from the gathered checkpoint, where the regularisers' backward comes before the exchange
    job = {**job, "method": "full", "learning_rate": 1e-4, "batch_size": 1, "max_steps": 5, "l2sp_alpha": 0.5,
           "kl_beta": 0.1, "gradient_checkpointing": True}
    one = ftnb.train(ftnb.TrainConfig(**job, run_name="one"))
    two = tmp_path / "runs" / "two"
    launch([{**job, "run_name": "two", "stop_at": 3}, {"resume": str(two), "fsdp": False}], tmp_path, "accelerate-fsdp")
    assert RunDir(two).status()["state"] == "finished"
    assert_same_run(one.run_dir.path, two)


def test_fsdp_settings_come_from_the_accelerate_environment(monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    from ftnb import ConfigError
    from ftnb.core.distributed import _fsdp_settings
    # the docs' config files are what `accelerate launch --config_file` reads (the FSDP one is launched above)
    assert load_config_from_file(str(REPO / "docs/accelerate-ddp.yaml")).distributed_type.value == "MULTI_GPU"
    fsdp = load_config_from_file(str(REPO / "docs/accelerate-fsdp.yaml"))
    assert fsdp.distributed_type.value == "FSDP" and fsdp.fsdp_config["fsdp_reshard_after_forward"] is True
    for name in ("ACCELERATE_USE_FSDP", "FSDP_RESHARD_AFTER_FORWARD", "FSDP_SHARDING_STRATEGY", "FSDP_OFFLOAD_PARAMS",
                 "FSDP_ACTIVATION_CHECKPOINTING"):
        monkeypatch.delenv(name, raising=False)
    assert _fsdp_settings() == (False, True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    assert _fsdp_settings() == (True, True)
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "SHARD_GRAD_OP")  # fsdp_version 1 configs
    assert _fsdp_settings() == (True, False)
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "true")  # version 2 configs say it directly
    assert _fsdp_settings() == (True, True)
    monkeypatch.delenv("FSDP_RESHARD_AFTER_FORWARD")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "NO_SHARD")
    with pytest.raises(ConfigError, match="'no_shard' is not supported.*accelerate-ddp.yaml"):
        _fsdp_settings()
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "FULL_SHARD")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(ConfigError, match="offload_params is not supported.*more GPUs.*quantize"):
        _fsdp_settings()
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "false")
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    with pytest.raises(ConfigError, match="activation_checkpointing is not supported.*gradient_checkpointing"):
        _fsdp_settings()
