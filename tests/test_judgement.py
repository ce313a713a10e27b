"""One judgement from all the forgetting signals, and collapse that is never silent (issue 19, items 3 and 4)."""
import pytest

import ftnb
from ftnb.core.judgement import KL_DRIFT, PPL_DRIFT, collapse, degenerate, judge

DATA = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]


@pytest.mark.parametrize("text,why", [
    ("", "empty"), ("   \n", "empty"), ("......", "repeats '.'"), ("DDDDDDDDDDDD", "repeats 'D'"),
    ("is is is is is is is is", "repeats 'is' (8 of 8 words)"),
    ("the the the the the cat the the", "repeats 'the' (7 of 8 words)"),
])
def test_degenerate_answers(text, why):
    assert degenerate(text) == why


@pytest.mark.parametrize("text", ["We close at 9pm on Sundays.", "Paris.", "Yes, yes, we do deliver within 3 km.",
                                  "1, 2, 3, 4, 5, 6, 7, 8"])
def test_answers_that_read_like_answers(text):
    assert degenerate(text) is None


def test_collapse_needs_a_change_for_the_worse():
    fine, broken = ["We close at 9pm.", "Yes, we deliver."], ["......", "......"]
    assert collapse(broken, fine).startswith("collapse: 2 of 2 answers degenerate")
    assert collapse(broken, broken) is None  # a model that never answered well did not collapse
    assert collapse(broken) is None  # nothing to compare with
    assert collapse(val_loss=7.5, best_val=3.4).startswith("collapse: the validation loss 7.50 is far above")
    assert collapse(val_loss=1.9, best_val=1.0) is None  # less than a nat above its best
    assert collapse(val_loss=3.3, best_val=1.7) is None  # up by more than a nat, but not doubled


def test_the_judgement_rule():
    calm = {"verdict": "no detectable change", "change_high": 0.02, "kl": 0.2, "ppl_change": 0.05}
    assert judge(calm)[0] == "stable"
    assert judge({**calm, "kl": KL_DRIFT})[0] == "drifting"
    state, signals = judge({**calm, "ppl_change": 2.16})
    assert state == "drifting" and "perplexity +216% (at least +50%: drifting)" in signals
    assert judge({**calm, "verdict": "forgot 4.0 points (1.0 to 7.0)", "change_high": -0.01})[0] == "forgetting"
    assert judge(calm, "collapse: 8 of 8 answers degenerate")[0] == "collapsed"


def poison_from(step_index):
    """From the step numbered `step_index` on, every update pushes all weights one way: the validation loss soars."""
    def poison(model, step):
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * (1.0 if step >= step_index else 0.0)

    def install(ev):
        if ev.kind == "start":
            ev.run.extra_loss.append(poison)
    return install


@pytest.mark.parametrize("action", ["mark", "stop"])
def test_a_collapse_is_never_silent(tmp_path, action):
    run = ftnb.train(model="tiny", data=DATA, method="full", output_dir=str(tmp_path), run_name="r", max_steps=16,
                     batch_size=4, learning_rate=0.02, lr_scheduler="constant", eval_every=2, probe=False,
                     val_fraction=0.25, budget_action=action, subscribers=[poison_from(8)])
    st = run.run_dir.status()
    assert st["warning"].startswith("collapse: the validation loss") and "far above its best" in st["warning"]
    assert ftnb.list_runs(tmp_path)[0]["warning"] == st["warning"]  # what the sidebar and `ftnb runs` read
    if action == "stop":  # a forgetting budget that stops: the run stops with the collapse as its reason
        assert st["state"] == "stopped" and st["reason"] == st["warning"] and st["step"] < 16
    else:
        assert st["state"] == "finished"
    from ftnb.panels import TrainingMonitor
    assert "collapse" in TrainingMonitor.open(run.run_dir.path).warning.value


def test_the_first_collapse_warning_is_kept(tmp_path):
    from ftnb.core.run import Run
    run = Run(ftnb.TrainConfig(model="tiny", output_dir=str(tmp_path)), tmp_path / "r")
    run.warn("collapse: the validation loss 16.19 is far above its best 4.51", 21)
    run.warn("collapse: 8 of 8 answers degenerate (empty)", 70)  # later, and worse: the start matters more
    assert run.warning == "collapse: the validation loss 16.19 is far above its best 4.51 (step 21)"
    assert not run.stop_event.is_set()  # budget_action "mark" and no early stopping: training goes on
