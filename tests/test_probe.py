import json
import math
import re

import pytest
import torch

import ftnb
from ftnb.core.forgetting import MIN_QUESTIONS, SLOWER, ForgettingProbe, best_within_budget
from ftnb.core.models import load_model
from ftnb.core.probe import ProbeSuite, Tree, probe_precision, format_summary, run_probe, score_trees, summarize, topk_kl, wilson


@pytest.fixture(scope="module")
def tiny(tiny_path):
    model, tok, _ = load_model(tiny_path)
    return model, tok


@pytest.fixture(scope="module")
def suite():
    s = ProbeSuite.default()
    return ProbeSuite(mc=s.mc[:40], prompts=s.prompts[:6], questions=s.questions[:3], texts=s.texts, text_tokens=300)


def by_hand(model, tok, prefix_text, cont_text):
    pre = tok(prefix_text, add_special_tokens=False)["input_ids"]
    cont = tok(cont_text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([pre + cont])).logits[0].float(), -1)
    return sum(float(logp[len(pre) - 1 + k, t]) for k, t in enumerate(cont))


def test_bundled_suite_size():
    s = ProbeSuite.default()
    assert len(s.mc) >= 150 and all(3 <= len(it["choices"]) <= 5 for it in s.mc)
    assert {it["category"] for it in s.mc} >= {"science", "geography", "history", "arithmetic", "language",
                                                 "common_sense"}


def test_multiple_choice_scores_equal_log_probs_summed_by_hand(tiny, suite):
    model, tok = tiny
    res = run_probe(model, tok, suite, precision="fp32")
    assert res["precision"] == "fp32"
    for item, sums, pred, pred_norm in list(zip(suite.mc, res["mc"]["logprob"], res["mc"]["pred"],
                                                 res["mc"]["pred_norm"]))[:12]:
        manual = [by_hand(model, tok, f"Question: {item['question']}\nAnswer:", f" {c}") for c in item["choices"]]
        assert sums == pytest.approx(manual, abs=1e-4)
        assert pred == max(range(len(manual)), key=manual.__getitem__)
        per_byte = [m / len(f" {c}".encode()) for m, c in zip(manual, item["choices"])]
        assert pred_norm == max(range(len(per_byte)), key=per_byte.__getitem__)


def test_tree_rows_match_separate_forwards(tiny):
    model, tok = tiny
    trees = [Tree([5, 6, 7], [[8, 9], [10], [11, 12, 13]]), Tree([20, 21], [[22], [23, 24]])]
    for max_tokens in (1000, 9):  # all trees in one row, and one tree per row
        scores, _ = score_trees(model, trees, max_tokens=max_tokens)
        for t, per_branch in zip(trees, scores):
            for b, got in zip(t.branches, per_branch):
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([t.prefix + b])).logits[0], -1)
                want = [float(logp[len(t.prefix) - 1 + k, x]) for k, x in enumerate(b)]
                assert got.tolist() == pytest.approx(want, abs=1e-5)


def test_topk_kl_is_exact_when_k_covers_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(3, 50, generator=g), -1)
    logq = torch.log_softmax(torch.randn(3, 50, generator=g), -1)
    exact = (logp.exp() * (logp - logq)).sum(1)
    v, i = logp.topk(50, -1)
    assert topk_kl((i, v), logq).tolist() == pytest.approx(exact.tolist(), abs=1e-5)
    v, i = logp.topk(10, -1)
    approx = topk_kl((i, v), logq)
    assert (approx <= exact + 1e-6).all() and (approx > 0).all()


def test_probe_leaves_weights_and_rng_untouched(tiny, suite):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.train()
    run_probe(model, tok, suite)
    assert model.training
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_with_the_probe_gives_the_same_losses(tiny_cfg, qa_data):
    a = ftnb.train(tiny_cfg, qa_data, probe=False, lora_dropout=0.1)
    b = ftnb.train(tiny_cfg, qa_data, probe=True, lora_dropout=0.1)
    la = [m["loss"] for m in a.metrics() if "loss" in m]
    assert la == [m["loss"] for m in b.metrics() if "loss" in m]


def test_probe_schedule_files_and_kl(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, learning_rate=5e-3)
    probes = [m for m in run.metrics() if "probe" in m]
    assert [m["step"] for m in probes] == [0, 5, 10]  # baseline, each evaluation (epoch ends), the end
    assert probes[0]["probe"]["kl"] == 0 and probes[0]["probe"]["retention"] == 1
    assert probes[-1]["probe"]["kl"] > 0
    folder = run.run_dir.path / "probe"
    detail = json.loads((folder / "step-10.json").read_text())
    assert len(detail["mc_pred"]) == len(ProbeSuite.default().mc) and len(detail["gen"]) == 8
    baseline = json.loads((folder / "baseline.json").read_text())["result"]
    suite = ProbeSuite.default()
    with run.model.disable_adapter():  # the same weights with the adapter off are the base model again
        off = run_probe(run.model, run.tokenizer, suite, baseline=baseline)
    assert off["kl"]["mean"] < 1e-6
    assert summarize(suite, off, baseline)["retention"] == 1.0
    assert "retention" in format_summary(probes[-1]["probe"])


def test_probe_results_reproduce_for_the_same_run_and_seed(tiny_cfg, qa_data):
    a = ftnb.train(tiny_cfg, qa_data, run_name="a", learning_rate=5e-3)
    b = ftnb.train(tiny_cfg, qa_data, run_name="b", learning_rate=5e-3)
    for step in (5, 10):
        ja, jb = (json.loads((r.run_dir.path / "probe" / f"step-{step}.json").read_text()) for r in (a, b))
        for d in (ja, jb):
            d.pop("seconds")
            d["summary"].pop("seconds")
        assert ja == jb


def test_budget_picks_the_lowest_val_loss_within_budget():
    points = [(10, 2.0, 1.0), (20, 1.5, 0.97), (30, 1.2, 0.90), (40, 1.1, 0.80)]
    assert best_within_budget(points, 0.95) == 20
    assert best_within_budget(points, 0.85) == 30
    assert best_within_budget(points, 0.5) == 40
    assert best_within_budget(points, 1.01) is None


def test_budget_stop_and_best_checkpoint_in_a_run(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, min_retention=1.5, budget_action="stop", learning_rate=5e-3)
    st = run.run_dir.status()
    assert st["state"] == "stopped" and st["step"] == 5
    assert re.match(r"retention \d+\.\d% \(95% CI -?\d+\.\d% to \d+\.\d%\) fell below the budget 150% at step 5: ",
                    st["reason"])
    run = ftnb.train(tiny_cfg, qa_data, min_retention=0.01, epochs=3, keep_checkpoints=1)
    budget = json.loads((run.run_dir.path / "probe" / "budget.json").read_text())
    best = min((p[1], p[0]) for p in budget["points"])[1]
    assert run.run_dir.status()["best_checkpoint"] == best == run.best_checkpoint
    assert best in [s for s, _ in run.run_dir.checkpoints()]  # kept although keep_checkpoints=1


def test_user_probe_items(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text('{"question": "What is our wifi password?", "choices": ["pizza123", "luigi"], "answer": 1}\n'
                 '{"question": "Who founded us?", "expect": ["Luigi"]}\n{"text": "Some text."}\n')
    s = ProbeSuite.default(p)
    assert s.mc[-1]["question"] == "What is our wifi password?" and s.questions[-1]["expect"] == ["luigi"]
    assert s.texts[-1] == "Some text."
    p.write_text('{"question": "x", "choices": ["a"], "answer": 3}\n')
    with pytest.raises(ftnb.DataError, match="2\\+ choices"):
        ProbeSuite.default(p)


def test_wilson_interval():
    lo, hi = wilson(90, 180)
    assert lo == pytest.approx(0.4275, abs=1e-3) and hi == pytest.approx(0.5725, abs=1e-3)
    assert wilson(0, 10)[0] == 0 and math.isclose(sum(wilson(5, 10)), 1.0)


def test_replay_and_regularisers_train(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, replay_fraction=0.25, kl_beta=0.5, max_steps=4)
    data = json.loads(run.run_dir.data_path.read_text())
    # 24 examples: 5 held out, 19 trained on, plus round(0.25 / 0.75 * 19) = 6 general ones
    assert data["replay_examples"] == 6 and data["train_examples"] == 25
    logs = [m for m in run.metrics() if "loss" in m]
    assert all(m["reg_loss"] >= 0 for m in logs) and logs[-1]["reg_loss"] > 0
    full = ftnb.train(tiny_cfg, qa_data, method="full", l2sp_alpha=1.0, max_steps=3, learning_rate=1e-3, probe=False)
    regs = [m["reg_loss"] for m in full.metrics() if "loss" in m]
    assert regs[0] == 0 and regs[-1] > 0
    with pytest.raises(ftnb.ConfigError, match="l2sp_alpha"):
        tiny_cfg.replace(l2sp_alpha=1.0)


def test_precision_auto_is_bf16_only_where_native(monkeypatch):
    assert probe_precision("cpu", "fp32") == "fp32" and probe_precision("cpu", "bf16") == "bf16"
    for avx512_bf16, amx, want in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert probe_precision("cpu") == want
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # an older torch: fp32
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert probe_precision("cpu") == "fp32"


def test_a_pass_uses_its_baselines_precision(tiny, suite):
    model, tok = tiny
    base = run_probe(model, tok, suite, precision="bf16")
    again = run_probe(model, tok, suite, baseline=base, precision="fp32")  # the baseline's precision wins
    assert base["precision"] == again["precision"] == "bf16"
    assert again["mc"]["logprob"] == base["mc"]["logprob"] and again["kl"]["mean"] < 1e-6
    exact = run_probe(model, tok, suite, precision="fp32")
    assert exact["mc"]["logprob"] != base["mc"]["logprob"]  # bf16 really was used
    assert [x for row in base["mc"]["logprob"] for x in row] == pytest.approx(
        [x for row in exact["mc"]["logprob"] for x in row], abs=0.5)
    old = {k: v for k, v in exact.items() if k != "precision"}  # measured before precisions were recorded: fp32
    assert run_probe(model, tok, suite, baseline=old)["precision"] == "fp32"


def test_the_time_share_sets_how_many_questions_a_probe_asks():
    cfg = ftnb.TrainConfig(model="tiny", probe_quick=300, probe_time_share=0.25)
    probe = ForgettingProbe(cfg)
    assert len(probe.suite.mc) == 900
    probe.baseline = {"seconds": {"mc": 90.0, "ppl": 1.0, "gen": 1.0, "kl": 4.0, "total": 96.0}}  # 0.1 s a question
    # 25% of 100 s of training, less the rest of a pass (1 + 1 + 4 / 2 s: the baseline's drift also generated), the
    # base model's times made slower by SLOWER for the adapters of the tuned one
    assert SLOWER == 1.2 and probe.questions(step=28, total_steps=28, train_s=100) == int((25 - 4.8) / 0.12)
    assert probe.questions(step=7, total_steps=28, train_s=400) == 300  # probe_quick between step 0 and the end
    probe.spent, probe.last_s = 20.0, (0.1, 3.0)  # after a pass: what the probes took, the last one's times
    assert probe.questions(step=28, total_steps=28, train_s=100) == MIN_QUESTIONS  # 25 - 20 - 3 s: the minimum
    assert probe.questions(step=28, total_steps=28, train_s=200) == 270  # 50 - 20 - 3 s at 0.1 s a question
    assert probe.questions(step=28, total_steps=28, train_s=1000) == 900  # all fit
    cfg.probe_time_share = 0
    assert probe.questions(step=28, total_steps=28, train_s=1) == 900  # no limit


def test_a_demo_like_run_keeps_its_probes_within_the_share(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, probe_every=-1, probe_time_share=0.25)
    metrics = run.metrics()
    end = [m["probe"] for m in metrics if m["kind"] == "probe"][-1]
    train_s = [m["train_s"] for m in metrics if m["kind"] == "train"][-1]
    assert MIN_QUESTIONS <= end["n"] <= 900 and train_s > 0  # how many fit depends on this machine's speeds
    detail = json.loads((run.run_dir.path / "probe" / f"step-{run.total_steps}.json").read_text())
    assert len(detail["mc_pred"]) == end["n"]  # the questions asked are the ones recorded and compared
