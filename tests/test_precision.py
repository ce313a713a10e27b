"""precision: what 'auto' picks for each device, and fp16 with loss scaling, on CPU (torch autocasts to float16 there
and has a CPU GradScaler); tests/test_cuda.py runs the same on a GPU."""
import json

import pytest
import torch

import ftnb
from ftnb import ConfigError
from ftnb.core.train import amp_dtype, resolve_precision


@pytest.mark.parametrize("device,capability,chosen", [
    ("cuda", (7, 5), "fp16"),   # T4: no native bf16
    ("cuda", (7, 0), "fp16"),   # V100
    ("cuda", (8, 0), "bf16"),   # A100
    ("cuda", (8, 6), "bf16"),   # RTX 30xx
    ("cuda", (9, 0), "bf16"),   # H100
    ("cuda:1", (6, 1), "fp16"),
    ("cpu", None, "fp32"),
    ("mps", None, "fp32"),
])
def test_auto_precision_fits_the_device(device, capability, chosen):
    assert resolve_precision("auto", device, capability) == chosen


@pytest.mark.parametrize("asked", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept(asked):
    assert resolve_precision(asked, "cuda", (7, 5)) == resolve_precision(asked, "cpu") == asked
    cfg = ftnb.TrainConfig(precision=asked)
    assert amp_dtype(cfg, torch.device("cpu")) == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[asked]


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="'fp16'"):
        ftnb.TrainConfig(precision="fp8")


def train_rows(run):
    return [m for m in run.metrics() if m["kind"] == "train"]


def test_fp16_trains_on_cpu_with_a_half_precision_base_and_counts_skipped_steps(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, precision="fp16", device="cpu", probe=False, epochs=4)
    assert run.state == "finished"
    frozen = {p.dtype for p in run.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in run.model.parameters() if p.requires_grad}
    assert frozen == {torch.float16} and trained == {torch.float32}  # fp32 adapters over an fp16 base
    rows = train_rows(run)
    assert all(isinstance(r["skipped_steps"], int) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_gradients_are_unscaled_before_clipping(tiny_cfg, qa_data):
    cfg = tiny_cfg.replace(probe=False, max_steps=2, val_fraction=0, lora_dropout=0.0, max_grad_norm=1.0)
    fp32 = train_rows(ftnb.train(cfg, qa_data, precision="fp32"))
    fp16 = train_rows(ftnb.train(cfg, qa_data, precision="fp16"))
    assert fp32[0]["skipped_steps"] is None and fp16[0]["skipped_steps"] == 0  # counted under fp16 only
    # the logged norm is the true gradient's (times 65,536 if clipping saw the scaled one)
    assert fp16[0]["grad_norm"] == pytest.approx(fp32[0]["grad_norm"], rel=0.05)
    assert fp16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=0.01)


def test_a_step_with_overflowing_gradients_is_skipped_and_counted(tiny_cfg, qa_data):
    def overflow_at_step_3(ev):  # an inf gradient in one adapter while step 3 computes its gradients
        if ev.kind == "start":
            run = ev.run
            p = next(p for p in run.model.parameters() if p.requires_grad)
            p.register_hook(lambda g: g * float("inf") if run.step == 2 else g)
    cfg = tiny_cfg.replace(probe=False, max_steps=6, val_fraction=0, precision="fp16", save_every=3)
    run = ftnb.train(cfg, qa_data, subscribers=[overflow_at_step_3])
    assert run.state == "finished"
    rows = train_rows(run)
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1, 1, 1]
    assert rows[2]["grad_norm"] == float("inf") and all(r["loss"] == r["loss"] for r in rows)
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    last = run.run_dir.checkpoints()[-1][1]
    optim = torch.load(last / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in optim["state"].values()} == {5}  # six steps planned, five taken
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 1 and state["scaler"]["scale"] == 2.0 ** 15  # backed off once


def test_fp16_stop_and_resume_reproduce_the_curve(tiny_cfg, qa_data):
    cfg = tiny_cfg.replace(precision="fp16", probe=False, epochs=2, lora_dropout=0.0)

    def stop_at_4(ev):
        if ev.kind == "log" and ev.step == 4:
            ev.run.request_stop()
    whole = ftnb.train(cfg, qa_data, run_name="whole")
    part = ftnb.train(cfg, qa_data, run_name="part", subscribers=[stop_at_4])
    resumed = ftnb.resume(part.run_dir.path)
    key = lambda rows: [(r["step"], r["loss"], r["lr"], r["skipped_steps"]) for r in rows]  # noqa: E731
    assert key(train_rows(resumed)) == key(train_rows(whole))
