"""Checkpoints you choose (issue 15): the best step is always on disk and never pruned, load_run / generate / export
take "best", "last" or a step, and early stopping ends a run whose validation loss stopped improving."""
import pytest
import torch
from safetensors.torch import load_file

import ftnb
from ftnb import RunError
from ftnb.cli import main

# arithmetic to train on, colours to validate on: the validation loss falls, then rises as the model overfits
DATA = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]
VAL = [{"messages": [{"role": "user", "content": f"Name colour {c}."},
                     {"role": "assistant", "content": f"The colour {c} is nice."}]} for c in ("red", "blue", "green")]
SETTINGS = dict(model="tiny", max_steps=16, batch_size=4, learning_rate=0.1, lr_scheduler="constant", eval_every=2,
                keep_checkpoints=1, probe=False)


def adapter_weights(folder):
    return load_file(folder / "adapter_model.safetensors")


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    return ftnb.train(data=DATA, val_data=VAL, output_dir=str(tmp_path_factory.mktemp("ck")), run_name="r",
                      **SETTINGS)


def test_the_best_step_is_kept_and_loaded_on_request(overfit, capsys, tmp_path):
    rd = overfit.run_dir
    evals = [(m["step"], m["val_loss"]) for m in rd.metrics() if m["kind"] == "eval"]
    best = min(evals, key=lambda e: e[1])[0]
    assert best not in (2, 16)  # the curve falls, then rises: the best is in the middle
    # save_every=0 saves at epoch ends (steps 6 and 12) and keep_checkpoints=1 prunes: the best stays anyway
    assert rd.status()["best_checkpoint"] == best and [s for s, _ in rd.checkpoints()] == [best, 16]
    chosen = ftnb.load_run(rd.path, device="cpu", checkpoint="best")
    assert chosen.weights == f"the best checkpoint of step {best}" and chosen.best_checkpoint == best
    saved = adapter_weights(rd.path / "checkpoints" / f"step-{best}" / "adapter")
    from peft import get_peft_model_state_dict
    assert same({k: v for k, v in get_peft_model_state_dict(chosen.model).items()}, saved)
    last = ftnb.load_run(rd.path, device="cpu", checkpoint="last")
    assert last.weights == "the final weights (step 16)"
    assert same(get_peft_model_state_dict(last.model), adapter_weights(rd.path / "adapter"))
    assert ftnb.load_run(rd.path, device="cpu", checkpoint=best).weights == f"checkpoint of step {best}"
    with pytest.raises(RunError, match=rf"no checkpoint at step 7 \(it has {best}, 16\)"):
        ftnb.load_run(rd.path, device="cpu", checkpoint=7)
    with pytest.raises(RunError, match="'best', 'last' or a step"):
        ftnb.load_run(rd.path, device="cpu", checkpoint="newest")
    main(["generate", str(rd.path), "Name colour red.", "--checkpoint", "best", "--max-new-tokens", "4"])
    assert f"(the best checkpoint of step {best})" in capsys.readouterr().out
    from ftnb.export import export
    assert export(rd.path, tmp_path / "merged", checkpoint="best")["weights"] == f"the best checkpoint of step {best}"


def test_early_stopping(tmp_path):
    """min_delta far above any change: the first evaluation stays the best, two more end the run."""
    run = ftnb.train(data=DATA, val_data=VAL, output_dir=str(tmp_path), run_name="early", early_stopping_patience=2,
                     early_stopping_min_delta=10.0, **SETTINGS)
    st = run.run_dir.status()
    assert st["state"] == "finished" and st["step"] == 6 and st["best_checkpoint"] == 2
    assert st["reason"].startswith("early stopping: the validation loss did not improve by more than 10 in 2 "
                                   "evaluations (best ")
    assert [m["step"] for m in run.metrics() if m["kind"] == "eval"] == [2, 4, 6]
    assert (run.run_dir.path / "adapter").is_dir() and 2 in dict(run.run_dir.checkpoints())
    assert ftnb.load_run(run.run_dir.path, device="cpu", checkpoint="best").weights == \
        "the best checkpoint of step 2"


def test_the_best_within_the_forgetting_budget_is_kept(tmp_path):
    run = ftnb.train(data=DATA, val_data=VAL, output_dir=str(tmp_path), run_name="budget",
                     **{**SETTINGS, "probe": True, "eval_every": 4, "min_retention": 0.01})
    points = [m["step"] for m in run.metrics() if m["kind"] == "probe"]
    assert points == [0, 4, 8, 12, 16]
    best = run.run_dir.status()["best_checkpoint"]
    evals = {m["step"]: m["val_loss"] for m in run.metrics() if m["kind"] == "eval"}
    assert best == min(evals, key=evals.get) and best in dict(run.run_dir.checkpoints())
    assert ftnb.load_run(run.run_dir.path, device="cpu", checkpoint="best").weights.endswith(f"step {best}")
