import json
import math
import threading

import pytest
import torch

import ftnb
from ftnb import DataError, Recorder, RunDir, RunError
from ftnb.core.rundir import list_runs


def losses(run_dir):
    return [(m["step"], m["loss"]) for m in RunDir(run_dir).metrics() if "loss" in m]


def test_lora_run_writes_a_complete_run_directory(tiny_cfg, qa_data):
    rec = Recorder()
    run = ftnb.train(tiny_cfg, qa_data, subscribers=[rec])
    rd = run.run_dir
    assert rd.status()["state"] == "finished" and rd.status()["step"] == run.total_steps == 10
    assert ftnb.TrainConfig.load(rd.config_path) == tiny_cfg
    data = json.loads(rd.data_path.read_text())
    assert data["train_examples"] + data["val_examples"] == 24 and len(data["train_hash"]) == 64
    train_lines = [m for m in rd.metrics() if "loss" in m]
    assert [m["step"] for m in train_lines] == list(range(1, 11))
    for m in train_lines:
        assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "elapsed_s"} <= set(m)
    assert train_lines[-1]["tokens"] > train_lines[0]["tokens"] > 0
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    assert [m["step"] for m in rd.metrics() if "val_loss" in m] == [5, 10]  # each epoch end
    assert [e.kind for e in rec.events][:2] == ["data", "start"] and rec.events[-1].kind == "finished"
    assert "19 of 24 rows kept" not in rec.events[0].data["summary"] and "24 of 24 rows kept" in \
        rec.events[0].data["summary"]
    # the adapter loads with plain peft, without ftnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(ftnb.resolve_model("tiny"))
    tuned = PeftModel.from_pretrained(base, str(rd.path / "adapter"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(tuned(ids).logits, run.model.eval()(ids).logits, atol=1e-5, rtol=1e-5)
    assert (rd.path / "adapter" / "adapter_model.safetensors").exists()
    assert not list(rd.path.rglob("*.tmp")) and not (rd.path / "run.lock").exists()


def test_same_seed_same_run(tiny_cfg, qa_data):
    a = ftnb.train(tiny_cfg, qa_data, max_steps=4)
    b = ftnb.train(tiny_cfg, qa_data, max_steps=4)
    c = ftnb.train(tiny_cfg, qa_data, max_steps=4, seed=7)
    assert losses(a.run_dir.path) == losses(b.run_dir.path) != losses(c.run_dir.path)


class StopAt:
    def __init__(self, step):
        self.step = step

    def __call__(self, ev):
        if ev.kind == "log" and ev.step == self.step:
            ev.run.request_stop()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_stop_and_resume_reproduce_the_uninterrupted_curve(tiny_cfg, qa_data, method):
    cfg = tiny_cfg.replace(method=method, epochs=3, lora_dropout=0.1)  # dropout: the RNG stream must be restored too
    whole = ftnb.train(cfg, qa_data, run_name=f"whole-{method}")
    part = ftnb.train(cfg, qa_data, run_name=f"part-{method}", subscribers=[StopAt(7)])
    assert part.run_dir.status()["state"] == "stopped" and part.run_dir.checkpoints()[-1][0] == 7
    resumed = ftnb.resume(part.run_dir.path)
    assert resumed.run_dir.status()["state"] == "finished"
    assert losses(resumed.run_dir.path) == losses(whole.run_dir.path)  # exact on CPU
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    out = "model" if method == "full" else "adapter"
    assert (resumed.run_dir.path / out).is_dir()


def test_stop_file_is_honoured(tiny_cfg, qa_data):
    def touch(ev):
        if ev.kind == "log" and ev.step == 3:
            ev.run.run_dir.request_stop()  # what `ftnb stop` and the JupyterLab sidebar do
    run = ftnb.train(tiny_cfg, qa_data, subscribers=[touch], eval_every=3)
    assert run.run_dir.status()["state"] == "stopped" and run.step == 3
    assert not run.run_dir.stop_path.exists()
    assert [m["step"] for m in run.metrics() if "val_loss" in m] == [3]  # the stop step's validation is kept


def test_stop_event_from_another_thread(tiny_cfg, qa_data):
    stop = threading.Event()
    stop.set()
    run = ftnb.train(tiny_cfg, qa_data, stop_event=stop)
    assert run.run_dir.status()["state"] == "stopped" and run.step == 1


def test_divergence_stops_with_a_clear_message(tiny_cfg, qa_data):
    def poison(model, step):  # from the third step on, NaN gradients: the weights turn to NaN
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * (float("nan") if step >= 2 else 0.0)
    rec = Recorder()

    def install(ev):
        if ev.kind == "start":
            ev.run.extra_loss.append(poison)
    with pytest.raises(RunError, match="loss became nan at step 4.*Lower learning_rate"):
        ftnb.train(tiny_cfg, qa_data, subscribers=[install, rec])
    run_dir = RunDir(rec.events[0].run.run_dir.path)
    assert run_dir.status()["state"] == "failed" and "diverged" in run_dir.status()["error"]


def test_bad_data_fails_before_any_folder_is_made(tiny_cfg, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl.*line 1.*missing assistant turn"):
        ftnb.train(tiny_cfg, str(p))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_existing_run_is_never_overwritten(tiny_cfg, qa_data):
    ftnb.train(tiny_cfg, qa_data, run_name="mine", max_steps=1)
    before = (RunDir(tiny_cfg.output_dir + "/mine").metrics_path).read_bytes()
    with pytest.raises(RunError, match="already holds a run"):
        ftnb.train(tiny_cfg, qa_data, run_name="mine", max_steps=1)
    assert RunDir(tiny_cfg.output_dir + "/mine").metrics_path.read_bytes() == before


def test_one_writer_per_run(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, run_name="locked", subscribers=[StopAt(1)])
    rd = run.run_dir
    rd.lock_path.write_text(json.dumps({"pid": 1, "host": __import__("socket").gethostname()}))  # pid 1 is alive
    with pytest.raises(RunError, match="being written by process 1"):
        ftnb.resume(rd.path)
    rd.lock_path.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": __import__("socket").gethostname()}))
    assert ftnb.resume(rd.path).run_dir.status()["state"] == "finished"  # a dead process's lock is taken over


def test_interrupted_runs_are_reported_as_such(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, max_steps=2)
    st = json.loads(run.run_dir.status_path.read_text())
    run.run_dir.status_path.write_text(json.dumps({**st, "state": "running", "pid": 2 ** 22 + 12345}))
    assert run.run_dir.status()["state"] == "interrupted"
    [summary] = list_runs(tiny_cfg.output_dir)
    assert summary["state"] == "interrupted" and math.isfinite(summary["loss"])


def test_full_fine_tune_writes_a_transformers_folder(tiny_cfg, qa_data):
    from transformers import AutoModelForCausalLM
    run = ftnb.train(tiny_cfg, qa_data, method="full", max_steps=3, learning_rate=1e-4)
    m = AutoModelForCausalLM.from_pretrained(run.run_dir.path / "model")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, run.model.eval()(ids).logits)
    loaded = ftnb.load_run(run.run_dir.path)
    assert loaded.generate("hello", max_new_tokens=4) == run.generate("hello", max_new_tokens=4)


def test_sample_answers_at_each_evaluation(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, sample_prompts=["What is 2 plus 2?"], eval_every=3, max_steps=6)
    evals = [m for m in run.metrics() if "val_loss" in m]
    assert [m["step"] for m in evals] == [3, 6]
    assert evals[0]["samples"][0]["prompt"] == "What is 2 plus 2?" and isinstance(evals[0]["samples"][0]["answer"], str)


def test_micro_batch_size_does_not_change_the_result(tiny_cfg, qa_data):
    tiny_cfg = tiny_cfg.replace(lora_dropout=0.0)  # dropout masks depend on how tokens are grouped
    a = ftnb.train(tiny_cfg, qa_data, max_steps=3, micro_batch_tokens=1024, val_fraction=0)
    b = ftnb.train(tiny_cfg, qa_data, max_steps=3, micro_batch_tokens=64, max_seq_len=64, val_fraction=0)
    for (_, x), (_, y) in zip(losses(a.run_dir.path), losses(b.run_dir.path)):
        assert x == pytest.approx(y, rel=1e-5)


def trainer_lrs(name, lr, warmup, total):
    """The learning rate after each of `total` steps of transformers' own schedule (what a Trainer logs)."""
    from transformers import get_scheduler
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    out = []
    for _ in range(total):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


@pytest.mark.parametrize("schedule,name", [("cosine", "cosine"), ("linear", "linear"),
                                           ("constant", "constant_with_warmup")])
def test_learning_rate_follows_the_transformers_schedule(tiny_cfg, qa_data, schedule, name):
    cfg = tiny_cfg.replace(lr_scheduler=schedule, warmup_steps=3, max_steps=8, probe=False, val_fraction=0)
    run = ftnb.train(cfg, qa_data)
    logged = [m["lr"] for m in run.metrics() if m["kind"] == "train"]
    assert logged == trainer_lrs(name, cfg.learning_rate, 3, 8)  # the same numbers, not just close


def test_resume_continues_the_same_schedule(tiny_cfg, qa_data):
    cfg = tiny_cfg.replace(warmup_steps=4, probe=False, epochs=2)
    part = ftnb.train(cfg, qa_data, subscribers=[StopAt(3)])  # stopped inside the warm-up
    resumed = ftnb.resume(part.run_dir.path)
    logged = [m["lr"] for m in resumed.metrics() if m["kind"] == "train"]
    assert logged == trainer_lrs("cosine", cfg.learning_rate, 4, 10)
