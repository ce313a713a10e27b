"""Weights that turn to NaN between two log lines: the run stops at the next checkpoint instead of saving it, says which
checkpoint is intact, and pruning never removes the last finite one."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

import ftnb
from ftnb import RunDir, RunError


def poison_at(index):
    """A regulariser that gives the step numbered `index` (from 0) NaN gradients: its update makes the weights NaN."""
    def poison(model, step):
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * (float("nan") if step == index else 0.0)

    def install(ev):
        if ev.kind == "start":
            ev.run.extra_loss.append(poison)
    return install


def finite(folder):
    weights = load_file(folder / "adapter" / "adapter_model.safetensors")
    return all(torch.isfinite(t).all() for t in weights.values())


# log_every=5 and save_every=2: the checkpoints of steps 2 and 4 fall between log lines (the NaN shows in the loss
# only at step 5, after the poisoned update was saved)
@pytest.mark.parametrize("poisoned,message,kept", [
    (3, "the loss became non-finite by step 4: training diverged.*the checkpoint of step 2 is intact", [2]),
    (2, "the weights became non-finite by step 2: training diverged.*no checkpoint was saved before it", []),
], ids=["nan-in-step-3", "nan-in-step-2"])
def test_nan_between_log_lines_never_reaches_a_checkpoint(tiny_cfg, qa_data, poisoned, message, kept):
    with pytest.raises(RunError) as failed:
        ftnb.train(tiny_cfg, qa_data, run_name="nan", log_every=5, save_every=2, keep_checkpoints=2, probe=False,
                   subscribers=[poison_at(poisoned - 1)])
    rd = RunDir(f"{tiny_cfg.output_dir}/nan")
    assert all(finite(folder) for _, folder in rd.checkpoints())
    assert [s for s, _ in rd.checkpoints()] == kept
    assert all(json.loads((folder / "trainer_state.json").read_text())["finite"] for _, folder in rd.checkpoints())
    assert re.search(message, str(failed.value))  # and it says which checkpoint is there
    st = rd.status()
    assert st["state"] == "failed" and st["error"] == f"RunError: {failed.value}"
    if kept:
        run = ftnb.resume(rd.path)  # without the poison
        assert run.run_dir.status()["state"] == "finished" and finite(rd.path)
        assert [m["step"] for m in rd.metrics() if "loss" in m] == [5, 10]
    else:
        with pytest.raises(RunError, match="no checkpoint"):
            ftnb.resume(rd.path)


def test_pruning_keeps_the_newest_finite_checkpoint(tmp_path):
    rd = RunDir(tmp_path)
    for step, state in [(2, {"finite": True}), (4, {"finite": True}), (6, {}), (8, {})]:  # 6, 8: not known finite
        (rd.checkpoints_path / f"step-{step}").mkdir(parents=True)
        (rd.checkpoints_path / f"step-{step}" / "trainer_state.json").write_text(json.dumps({"step": step, **state}))
    rd.prune_checkpoints(1)
    assert [s for s, _ in rd.checkpoints()] == [4, 8]
    rd.prune_checkpoints(1, protect={8})
    assert [s for s, _ in rd.checkpoints()] == [4, 8]
