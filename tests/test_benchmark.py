"""Real benchmarks one call away: lm-evaluation-harness scores a run and its base in memory (ftnb eval, ftnb.evaluate,
the forgetting panel's "Check on a benchmark"), the scores are stored in the run folder and read back typed."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")  # the test extra installs it: CI runs all of these

import ftnb  # noqa: E402
from ftnb.cli import main  # noqa: E402
from ftnb.core import paired  # noqa: E402
from ftnb.core.errors import DataError, RunError  # noqa: E402
from ftnb.evaluate import benchmark, harness, mc_task, read_benchmarks, results  # noqa: E402

ARC = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc_easy_validation.jsonl"  # never in the repo
QUESTIONS = [{"question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), str(i)], "answer": 0}
             for i in range(8)]


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


@pytest.fixture
def lora_run(tiny_cfg, qa_data):
    return ftnb.train(tiny_cfg, qa_data, learning_rate=5e-3, probe=False).run_dir.path


def files_under(folder):
    return {p.relative_to(folder) for p in Path(folder).rglob("*")}


def test_lora_run_and_its_base_are_scored_in_memory_and_stored(lora_run, questions, monkeypatch):
    import peft
    import transformers
    real_load_run, calls = harness.load_run, []

    def load_once(*args, **kw):  # the run loads as usual; after that nothing may be written or loaded again
        run = real_load_run(*args, **kw)
        for cls, name in ((transformers.AutoModelForCausalLM, "from_pretrained"),
                          (transformers.PreTrainedModel, "from_pretrained"),
                          (transformers.PreTrainedModel, "save_pretrained"), (peft.PeftModel, "from_pretrained"),
                          (peft.PeftModel, "save_pretrained")):
            monkeypatch.setattr(cls, name, lambda *a, **k: pytest.fail("a model was loaded or written"))
        return run

    def score(model, *args, **kw):
        adapter_off = any(getattr(m, "disable_adapters", None) is True for m in model.modules())  # peft's LoRA layers
        calls.append((model, adapter_off))
        return real_score(model, *args, **kw)
    real_score = harness.score
    monkeypatch.setattr(harness, "load_run", load_once)
    monkeypatch.setattr(harness, "score", score)
    before = files_under(lora_run)
    res = benchmark(lora_run, [str(questions)])
    assert [(m is calls[0][0], off) for m, off in calls] == [(True, False), (True, True)]  # one model: tuned, base
    assert files_under(lora_run) - before == {Path("benchmarks"), Path("benchmarks/mc_questions-final.json")}
    rec = res["mc_questions"]
    assert (rec["n"], rec["limit"], rec["checkpoint"], rec["base_from"]) == (8, None, "final", "adapter off")
    assert rec["source"] == str(questions) and rec["lm_eval_version"] and rec["seconds"] > 0
    for name in ("acc", "acc_norm"):
        m, p = rec["metrics"][name], rec["paired"][name]
        assert 0 <= m["base"] <= 1 and 0 <= m["tuned"] <= 1 and m["base_stderr"] >= 0
        assert m["difference"] == pytest.approx(m["tuned"] - m["base"])
        assert len(p["base_correct"]) == len(p["tuned_correct"]) == p["n"] == 8
        assert p["base_correct"].count("1") / 8 == pytest.approx(m["base"])
        assert p["tuned_correct"].count("1") / 8 == pytest.approx(m["tuned"])
        flips = list(zip(p["base_correct"], p["tuned_correct"]))
        assert (p["lost"], p["gained"]) == (flips.count(("1", "0")), flips.count(("0", "1")))
        assert p["difference"] == pytest.approx(m["difference"])  # paired and unpaired agree on the mean
        lo, hi = p["difference_low"], p["difference_high"]  # the probe's paired interval (tests/test_paired.py)
        assert (lo, hi) == pytest.approx(tuple(paired.change_interval(p["lost"], p["gained"], 8)[k]
                                               for k in ("change_low", "change_high")))
        assert lo < p["difference"] < hi and p["verdict"] == paired.verdict(p["difference"], lo, hi)
        assert p["p_value"] == paired.mcnemar_p(p["lost"], p["gained"])
    stored, skipped = read_benchmarks(lora_run)
    assert stored == [rec] and not skipped


def test_full_fine_tune_base_is_loaded_separately_never_written(tiny_cfg, qa_data, questions, monkeypatch):
    import transformers
    run_dir = ftnb.train(tiny_cfg.replace(method="full"), qa_data, probe=False).run_dir.path
    loaded = []
    real_load_model = harness.load_model

    def load_model(name, *args, **kw):
        loaded.append(name)
        return real_load_model(name, *args, **kw)
    monkeypatch.setattr(harness, "load_model", load_model)
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", lambda *a, **k: pytest.fail("written"))
    before = files_under(run_dir)
    rec = benchmark(run_dir, str(questions), limit=5)["mc_questions"]
    assert loaded == ["tiny"] and rec["base_from"] == "loaded separately" and rec["n"] == 5
    assert files_under(run_dir) - before == {Path("benchmarks"), Path("benchmarks/mc_questions-final-limit5.json")}
    assert rec["paired"]["acc"]["n"] == 5 and rec["metrics"]["acc"]["base"] is not None


def test_cli_eval_with_mc_file_local_yaml_and_include_path(lora_run, questions, tmp_path, capsys):
    main(["eval", str(lora_run), "--mc-file", str(questions), "--limit", "4"])
    out = capsys.readouterr().out
    assert "the final weights" in out and "base: adapter off" in out and "right->wrong" in out
    assert "mc_questions" in out and "acc_norm" in out and "±" in out
    assert re.search(r"mc_questions acc: (no detectable change|forgot|improved).*95% CI.*McNemar p = ", out)
    assert out.strip().endswith(str(Path(lora_run) / "benchmarks" / "mc_questions-final-limit4.json"))
    # a user's own task YAML: as a file, and by name from a folder of them (--include-path); no base this time
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    cfg = {**mc_task(questions), "task": "my_arith"}
    (tasks / "my_arith.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    main(["eval", str(lora_run), "--tasks", str(tasks / "my_arith.yaml"), "--no-base", "--limit", "3"])
    out = capsys.readouterr().out
    assert "base: not scored" in out and "my_arith" in out
    main(["eval", str(lora_run), "--include-path", str(tasks), "--tasks", "my_arith", "--limit", "2"])
    rec = {r["task"] + str(r["limit"]): r for r in read_benchmarks(lora_run)[0]}
    assert rec["my_arith3"]["metrics"]["acc"]["base"] is None and not rec["my_arith3"]["paired"]
    assert rec["my_arith2"]["n"] == 2 and rec["my_arith2"]["source"] == "my_arith"
    assert rec["mc_questions4"]["n"] == 4
    with pytest.raises(SystemExit):  # a clear line, not a traceback
        main(["eval", str(lora_run)])
    assert "--mc-file" in capsys.readouterr().err


def test_mc_file_uses_lm_evals_arc_easy_prompt_and_bad_lines_are_named(questions, tmp_path):
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml
    arc = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml", resolve_func=False)
    cfg = mc_task(questions)
    assert cfg["doc_to_text"] == arc["doc_to_text"] == "Question: {{question}}\nAnswer:"
    assert cfg["output_type"] == arc["output_type"] and cfg["metric_list"] == arc["metric_list"]
    assert cfg.get("target_delimiter", " ") == " " and "fewshot" not in json.dumps(cfg)  # " " + choice, 0-shot
    assert cfg["task"] == "mc_questions" and cfg["dataset_kwargs"]["data_files"]["test"] == str(questions)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(QUESTIONS[0]) + "\n" + json.dumps({**QUESTIONS[1], "answer": 3}) + "\n")
    with pytest.raises(DataError, match="line 2"):
        mc_task(bad)
    with pytest.raises(DataError, match="no questions"):
        (tmp_path / "empty.jsonl").write_text("\n")
        mc_task(tmp_path / "empty.jsonl")


def test_hub_task_names_reach_lm_eval_unchanged(lora_run, monkeypatch):
    """Online users name lm-eval's tasks; offline we check they reach simple_evaluate as given, are known to lm-eval,
    and that a misspelt one fails before any model is loaded."""
    import lm_eval.evaluator
    assert harness.task_specs("arc_easy, hellaswag") == ["arc_easy", "hellaswag"]
    monkeypatch.setattr(harness, "load_run", lambda *a, **k: pytest.fail("loaded a model for an unknown task"))
    with pytest.raises(RunError, match="no task 'arc_eazy'.*arc_easy"):
        benchmark(lora_run, "arc_eazy")
    monkeypatch.undo()
    asked = []

    def fake(model, tasks, task_manager, limit, **kw):
        asked.append(list(tasks))
        acc = 0.5 if len(asked) == 1 else 0.25  # tuned, then base
        sample = lambda i: {"doc_id": i, "filter": "none", "metrics": ["acc"], "acc": float(i < 4 * acc)}  # noqa
        return {"results": {"arc_easy": {"alias": "arc_easy", "sample_len": 4, "acc,none": acc,
                                         "acc_stderr,none": "N/A"}},
                "higher_is_better": {"arc_easy": {"acc": True}}, "samples": {"arc_easy": [sample(i) for i in range(4)]}}
    monkeypatch.setattr(lm_eval.evaluator, "simple_evaluate", fake)
    rec = benchmark(lora_run, "arc_easy", limit=4)["arc_easy"]
    assert asked == [["arc_easy"], ["arc_easy"]]
    assert rec["metrics"]["acc"] == {"base": 0.25, "base_stderr": None, "tuned": 0.5, "tuned_stderr": None,
                                     "difference": 0.25, "higher_is_better": True}
    assert (rec["paired"]["acc"]["lost"], rec["paired"]["acc"]["gained"]) == (0, 1)


def test_hostile_results_files_are_read_without_error(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    good = results.build("t", {"n": 2, "metrics": {"acc": (0.5, 0.1)}, "higher_is_better": {"acc": True},
                               "correct": {"acc": {0: 1, 1: 0}}},
                         {"metrics": {"acc": (1.0, float("nan"))}, "correct": {"acc": {0: 1, 1: 1}}},
                         source="t", weights="w", checkpoint=3, base_from="adapter off", limit=None,
                         lm_eval_version="0.4", seconds=1.0, batch_size=16)
    path = results.write(tmp_path, good)
    assert path.name == "t-step3.json" and json.loads(path.read_text())["metrics"]["acc"]["base_stderr"] is None
    (folder / "torn.json").write_text('{"task": "x", "metr')
    (folder / "list.json").write_text("[1, 2]")
    (folder / "deep.json").write_text("[" * 100000 + "]" * 100000)
    (folder / "no-metrics.json").write_text('{"task": "x", "checkpoint": "final"}')
    (folder / "huge.json").write_bytes(b" " * (results.MAX_BYTES + 1))
    (folder / "link.json").symlink_to(path)
    (folder / ".t-step3.json.abcd.tmp").write_text("{")
    (folder / "odd.json").write_text(json.dumps({
        "task": "odd", "checkpoint": "final", "n": -1, "limit": "all", "date": 5,
        "metrics": {"acc": {"base": "0.5", "tuned": 0.7, "higher_is_better": "yes"}, "f1": [1], "7": {}},
        "paired": {"acc": {"n": 3, "lost": 1, "gained": 0, "difference": -0.3, "base_correct": "10",
                           "tuned_correct": "0x0"}, "acc_norm": {"n": 1}}}))
    recs, skipped = results.read_all(tmp_path)
    assert [r["task"] for r in recs] == ["odd", "t"] and len(skipped) == 6
    odd = recs[0]
    assert odd["n"] is None and odd["limit"] is None and odd["date"] is None
    assert odd["metrics"] == {"acc": {"base": None, "base_stderr": None, "tuned": 0.7, "tuned_stderr": None,
                                      "difference": None, "higher_is_better": None},
                              "7": dict.fromkeys(("base", "base_stderr", "tuned", "tuned_stderr", "difference",
                                                  "higher_is_better"))}
    assert odd["paired"] == {"acc": {"n": 3, "lost": 1, "gained": 0, "difference": -0.3, "difference_low": None,
                                     "difference_high": None, "p_value": None, "verdict": None,
                                     "base_correct": None, "tuned_correct": None}}
    t = recs[1]
    assert t["checkpoint"] == 3 and t["metrics"]["acc"]["difference"] == -0.5
    p = t["paired"]["acc"]
    assert (p["lost"], p["gained"], p["base_correct"], p["tuned_correct"]) == (1, 0, "11", "10")


def test_forgetting_panel_checks_on_a_benchmark(lora_run, questions):
    from ftnb.panels import ForgettingPanel
    panel = ForgettingPanel(run_dir=lora_run)
    assert panel.bench_out.value == ""  # nothing stored yet
    panel.bench_tasks.value, panel.bench_limit.value = str(questions), 3
    panel.bench_button.click()
    panel._bench_thread.join(300)
    assert "<td>mc_questions</td><td>final</td><td>3</td><td>acc</td>" in panel.bench_out.value
    assert re.search(r"<b>(no detectable change|forgot|improved).*</b> \(.*points \(95% CI", panel.bench_out.value)
    assert panel.bench_button.disabled is False
    again = ForgettingPanel(run_dir=lora_run)  # stored in the run folder: shown when the run is opened again
    assert again.bench_out.value == panel.bench_out.value
    panel.bench_tasks.value = "missing.jsonl"
    panel.bench_button.click()
    panel._bench_thread.join(300)
    assert "missing.jsonl: cannot read it" in panel.bench_out.value
    panel.close()
    again.close()


@pytest.mark.skipif(not ARC.exists(), reason="the ARC-Easy file lives in ../shared/data, outside the repo")
def test_arc_easy_file_scores_through_the_mc_path(lora_run, capsys):
    main(["eval", str(lora_run), "--mc-file", str(ARC), "--limit", "20"])
    rec = read_benchmarks(lora_run)[0][0]
    assert rec["task"] == "mc_arc_easy_validation" and rec["n"] == 20 and rec["paired"]["acc"]["n"] == 20
    assert "mc_arc_easy_validation" in capsys.readouterr().out


def test_the_core_never_imports_the_benchmarks_and_they_need_lm_eval_only_to_score():
    code = ("import sys\n"
            "for name in ('lm_eval', 'ftnb.evaluate'): sys.modules[name] = None\n"
            "import importlib, pkgutil, ftnb.core\n"
            "for m in pkgutil.walk_packages(ftnb.core.__path__, 'ftnb.core.'): importlib.import_module(m.name)\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "from ftnb.evaluate import benchmark, read_benchmarks\n"
            "print(read_benchmarks('.'))\n"
            "try:\n    benchmark('.', 'arc_easy')\nexcept Exception as e:\n    print(type(e).__name__, e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    missing = "RunError benchmarks need lm-evaluation-harness: pip install 'ftnb[eval]'"
    assert r.stdout.splitlines() == ["([], [])", missing], r.stderr
