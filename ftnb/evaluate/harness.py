"""A run scored on real benchmarks through lm-evaluation-harness (pip install 'ftnb[eval]'): the tuned model and
its base, both in memory (LoRA: the same weights with the adapter off; full fine-tuning: the base model loaded once
the tuned one is scored), handed to lm-eval as model objects, never written to disk for it to load again. The scores
go to the run folder (results.py).
"""
import difflib
import json
import re
import time
from pathlib import Path

from ..core.errors import DataError, RunError
from ..core.models import load_model
from ..core.rundir import RunDir
from ..core.saved import choose_weights, load_run
from . import results

MC_TASK = Path(__file__).parent / "tasks" / "ftnb_mc.yaml"
BATCH_SIZE = 16  # loglikelihood requests per forward pass
BOOTSTRAP_ITERS = 1000  # stderr of the metrics lm-eval bootstraps (f1, bleu; its default 100000 takes minutes); a
                        # mean (acc, acc_norm) has a closed-form stderr whatever this is


def require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise RunError("benchmarks need lm-evaluation-harness: pip install 'ftnb[eval]'") from None
    return lm_eval


def benchmark(run_dir, tasks, limit=None, checkpoint=None, base=True, include_path=None, batch_size=BATCH_SIZE,
              device="auto", trust_remote_code=False):
    """Score a run's model, and its base model, on lm-eval tasks, and store each task's scores in the run folder
    (benchmarks/<task>-<weights>.json). Returns {task: record} (the record as results.py reads it back, with its
    `path`): per metric base, tuned, their stderr and difference; per 0/1 metric the paired view (flips).

    tasks: a list or a comma-separated string of lm-eval task names ("arc_easy", "hellaswag", "mmlu": lm-eval
        downloads their data from the Hub), task YAML files, or JSONL files of {question, choices, answer}
        (scored with lm-eval's arc_easy prompt, see mc_task).
    limit: only the first `limit` documents of each task: a quick look, not a score to compare (stored under a
        file name of its own).
    checkpoint: "last" (the final weights; default), "best" or a step number.
    base: also score the base model (LoRA: the same weights with the adapter off, no second copy; full fine-tuning:
        the base loaded separately after the tuned model is scored). False halves the time; no differences then.
    include_path: a folder of your own task YAML files, named in `tasks`.
    batch_size: requests per forward pass: larger is faster until memory runs out.
    """
    lm_eval = require_lm_eval()
    specs = task_specs(tasks)
    manager = task_manager(specs, include_path)
    rd = RunDir(run_dir)
    chosen = choose_weights(rd, checkpoint)
    run = load_run(rd.path, device, chosen.step if chosen.from_checkpoint else "last", trust_remote_code)
    t0 = time.monotonic()
    tuned = score(run.model, run.tokenizer, specs, manager, limit, batch_size)
    base_scores, base_from = None, None
    if base and hasattr(run.model, "disable_adapter"):
        with run.model.disable_adapter():
            base_scores = score(run.model, run.tokenizer, specs, manager, limit, batch_size)
        base_from = "adapter off"
    elif base:
        name, dev = run.config.model, run.model.device
        run.model = None  # the tuned model goes before the base comes: one model in memory at a time
        model, tokenizer, _ = load_model(name, dev, trust_remote_code=trust_remote_code)
        base_scores = score(model, tokenizer, specs, manager, limit, batch_size)
        base_from = "loaded separately"
        del model
    about = {"weights": run.weights, "checkpoint": chosen.step if chosen.from_checkpoint else "final",
             "base_from": base_from, "limit": limit, "lm_eval_version": lm_eval.__version__,
             "seconds": time.monotonic() - t0, "batch_size": batch_size}
    out = {}
    for task, scores in tuned.items():
        rec = results.build(task, scores, (base_scores or {}).get(task), source=source_of(task, specs), **about)
        path = results.write(rd.path, rec)
        out[task], _ = results.read(path)
    return out


def score(model, tokenizer, specs, manager, limit=None, batch_size=BATCH_SIZE):
    """{task: {n, metrics: {metric: (value, stderr)}, higher_is_better, correct: {metric: {doc_id: 0 or 1}}}} of a
    model in memory on lm-eval task specs (with lm-eval's own defaults: its few-shot setting and seeds)."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=list(specs), task_manager=manager, limit=limit, log_samples=True,
                          bootstrap_iters=BOOTSTRAP_ITERS)
    scores = {}
    for task, row in out["results"].items():
        metrics = {}
        for key, value in row.items():
            metric, _, kind = key.partition(",")  # "acc,none", "acc_stderr,none": metric, filter
            if kind and not metric.endswith("_stderr"):
                stderr = row.get(f"{metric}_stderr,{kind}")
                metrics[metric if kind == "none" else key] = (_number(value), _number(stderr))
        n = row.get("sample_len") or out.get("n-samples", {}).get(task, {}).get("effective")
        scores[task] = {"n": n, "metrics": metrics, "higher_is_better": out.get("higher_is_better", {}).get(task) or {},
                        "correct": correct_by_doc(out.get("samples", {}).get(task, []))}
    return scores


def _number(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # lm-eval writes "N/A"


def correct_by_doc(samples):
    """{metric: {doc_id: 0 or 1}} from lm-eval's logged samples, for each metric scored 0 or 1 on every document
    (acc, acc_norm, exact_match); others (f1, bleu) have no paired view."""
    per = {}
    for s in samples:
        kind = s.get("filter", "none")
        for m in s.get("metrics", ()):
            per.setdefault(m if kind == "none" else f"{m},{kind}", {})[s["doc_id"]] = s.get(m)
    return {m: {i: int(v) for i, v in docs.items()} for m, docs in per.items()
            if all(isinstance(v, (bool, int, float)) and v in (0, 1) for v in docs.values())}


# -- tasks ------------------------------------------------------------------------------------------------------------

def task_specs(tasks):
    """lm-eval task specs from `tasks` (a list, or one comma-separated string): a .jsonl file becomes the config
    of a multiple-choice task over it (mc_task); names and task YAML files reach lm-eval unchanged."""
    if isinstance(tasks, (str, Path)):
        tasks = str(tasks).split(",")
    specs = []
    for t in tasks:
        if isinstance(t, dict):
            specs.append(t)
        elif str(t).strip():
            t = str(t).strip()
            specs.append(mc_task(t) if t.endswith(".jsonl") else t)
    if not specs:
        raise RunError("no task: name lm-eval tasks (arc_easy, hellaswag, ...), task YAML files or "
                       "{question, choices, answer} .jsonl files")
    return specs


def task_manager(specs, include_path=None):
    """lm-eval's TaskManager for `specs`. Its own tasks (hundreds of YAML files, about 10 s to index) are indexed
    only when a name is not among `include_path`'s; an unknown name fails here, before a model is loaded."""
    from lm_eval.tasks import TaskManager
    names = [s for s in specs if isinstance(s, str) and not Path(s).expanduser().is_file()]
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path or not names else None
    if manager is None or not all(n in manager.all_tasks for n in names):
        manager = TaskManager(include_path=include_path)
    for n in names:
        if n not in manager.all_tasks:
            close = difflib.get_close_matches(n, manager.all_tasks, n=3)
            raise RunError(f"lm-eval knows no task {n!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                           + "; give an lm-eval task name, a task YAML file, a folder of them (include_path) or a "
                             "{question, choices, answer} .jsonl file")
    return manager


def mc_task(path, name=None):
    """lm-eval's config of a multiple-choice task over a JSONL file, one {"question", "choices": [...], "answer":
    index} a line (tasks/ftnb_mc.yaml with this file as its data: lm-eval's arc_easy prompt), named
    mc_<file name>. Every line is checked first, so a bad one is named here rather than deep inside lm-eval."""
    import yaml
    path = Path(path).expanduser().resolve()
    check_mc_file(path)
    cfg = yaml.safe_load(MC_TASK.read_text(encoding="utf-8"))
    cfg["task"] = name or "mc_" + re.sub(r"\W+", "_", path.stem)
    cfg["dataset_kwargs"] = {"data_files": {"test": str(path)}}
    return cfg


def check_mc_file(path):
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read it ({e.strerror})", source=path) from None
    n = 0
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError("not a JSON object", source=path, row=i, unit="line") from None
        row = row if isinstance(row, dict) else {}
        choices, answer = row.get("choices"), row.get("answer")
        if not (isinstance(row.get("question"), str) and isinstance(choices, list)
                and len(choices) >= 2 and all(isinstance(c, str) for c in choices)
                and isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices)):
            raise DataError('expected {"question": text, "choices": [2 or more texts], "answer": index of the right '
                            "choice}", source=path, row=i, unit="line")
        n += 1
    if not n:
        raise DataError("no questions in it", source=path)


def source_of(task, specs):
    """What was asked for that gave `task`: its name, its YAML file or its questions file."""
    labels = {s: s for s in specs if isinstance(s, str)}
    labels.update({s["task"]: str(s.get("dataset_kwargs", {}).get("data_files", {}).get("test", s["task"]))
                   for s in specs if isinstance(s, dict)})
    return labels.get(task) or ", ".join(labels.values())
