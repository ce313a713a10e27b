"""benchmarks/<task>-<weights>.json in a run folder, one benchmark's scores: this module alone builds, writes and
reads it.

    task            lm-eval's name of the task (or group), as in its results table
    source          what was asked for: a task name, a task YAML, or a {question, choices, answer} JSONL file
    weights         which weights were scored, in words; checkpoint: "final" or the step of a checkpoint
    base_from       "adapter off" (LoRA: the same weights), "loaded separately" (full fine-tuning), or null
                    (scored without the base)
    n, limit        documents scored; the --limit asked for (null: all)
    metrics         {metric: {base, base_stderr, tuned, tuned_stderr, difference (tuned - base), higher_is_better}}
    paired          {metric: {n, lost (right -> wrong: McNemar's b), gained (wrong -> right: c), difference
                    ((gained - lost) / n, the paired difference), difference_low, difference_high (its 95% interval,
                    Bonett-Price), p_value (exact McNemar), verdict (in words), base_correct, tuned_correct
                    (one "0"/"1" a document, in lm-eval's document order)}} for metrics scored 0 or 1 per document
    lm_eval_version, date (ISO 8601, UTC), seconds (scoring time, base and tuned), batch_size

A metric of a filter other than lm-eval's "none" is named "metric,filter". A run folder may come from anyone:
a file is read typed (a field of the wrong type reads as missing; a file that is not a benchmark file is skipped,
never an exception). No torch and no lm-eval here: views read results without them.
"""
import math
import re
from datetime import datetime, timezone
from pathlib import Path

from ..core.durable import write_json
from ..core.paired import change_interval, mcnemar_p, verdict
from ..core.metrics import Skip, boolean, nullable, number, record, text, whole
from ..core.rundir import read_untrusted_json

FOLDER = "benchmarks"
FORMAT = 1
MAX_BYTES = 16 << 20  # a results file larger than this is not read (MMLU's 14,042 documents take ~60 KB)
MAX_KEYS = 200  # metrics read per file


def paired(base_correct, tuned_correct):
    """The paired view of one metric scored 0 or 1 on the same documents by the base and the tuned model: the flips
    both ways, the paired difference with its 95% interval, McNemar's p-value and the verdict (ftnb.core.paired, as
    the probe's)."""
    n = len(base_correct)
    assert n == len(tuned_correct) and n > 0
    lost = sum(1 for b, t in zip(base_correct, tuned_correct) if b and not t)
    gained = sum(1 for b, t in zip(base_correct, tuned_correct) if t and not b)
    ci = change_interval(lost, gained, n)
    return {"n": n, "lost": lost, "gained": gained, "difference": ci["change"], "difference_low": ci["change_low"],
            "difference_high": ci["change_high"], "p_value": mcnemar_p(lost, gained),
            "verdict": verdict(ci["change"], ci["change_low"], ci["change_high"]),
            "base_correct": "".join("1" if b else "0" for b in base_correct),
            "tuned_correct": "".join("1" if t else "0" for t in tuned_correct)}


def build(task, tuned, base=None, **about):
    """The record of one task from the scores of harness.score (tuned, and base or None); `about`: source, weights,
    checkpoint, base_from, limit, lm_eval_version, seconds, batch_size."""
    metrics = {}
    for name, (value, stderr) in tuned["metrics"].items():
        b_value, b_stderr = (base or {}).get("metrics", {}).get(name, (None, None))
        metrics[name] = {"base": b_value, "base_stderr": b_stderr, "tuned": value, "tuned_stderr": stderr,
                         "difference": None if b_value is None or value is None else value - b_value,
                         "higher_is_better": tuned["higher_is_better"].get(name.split(",")[0])}
    pairs = {}
    for name, t_docs in tuned["correct"].items():
        b_docs = (base or {}).get("correct", {}).get(name)
        if b_docs and b_docs.keys() == t_docs.keys():  # the same documents, by lm-eval's doc_id
            ids = sorted(t_docs)
            pairs[name] = paired([b_docs[i] for i in ids], [t_docs[i] for i in ids])
    return {"format": FORMAT, "task": task, "n": tuned["n"], "metrics": metrics, "paired": pairs,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **about}


def file_name(task, checkpoint, limit=None):
    """`<task>-<final|stepN>[-limitN].json`: a quick --limit check never replaces a full score."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(task)).lstrip(".")[:100] or "task"
    weights = "final" if checkpoint == "final" else f"step{checkpoint}"
    return f"{safe}-{weights}" + (f"-limit{limit:g}" if limit is not None else "") + ".json"


def write(run_dir, rec):
    """Store a record in the run folder (atomically); returns its path."""
    path = Path(run_dir) / FOLDER / file_name(rec["task"], rec["checkpoint"], rec["limit"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, _finite(rec))
    return path


def _finite(v):
    """NaN and infinities (lm-eval writes NaN for a stderr it cannot compute) as null: the file stays strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


# -- reading ----------------------------------------------------------------------------------------------------------

def mapping_of(check):
    """{name: checked value} with string names; a value of the wrong type is left out, not the whole file."""
    def read(v):
        if not isinstance(v, dict):
            raise Skip(f"{v!r:.40} is not an object")
        out = {}
        for k, x in list(v.items())[:MAX_KEYS]:
            try:
                out[text(k)[:200]] = check(x)
            except Skip:
                pass
        return out
    return read


def zeros_and_ones(v):
    if not (isinstance(v, str) and re.fullmatch(r"[01]*", v)):
        raise Skip(f"{v!r:.40} is not a string of 0s and 1s")
    return v


def step_or_final(v):
    return v if v == "final" else whole(v)


NUMBER = nullable(number)
METRIC = record({"base": NUMBER, "base_stderr": NUMBER, "tuned": NUMBER, "tuned_stderr": NUMBER,
                 "difference": NUMBER, "higher_is_better": nullable(boolean)}, lenient=True)
PAIRED = record({"n": whole, "lost": whole, "gained": whole, "difference": number, "difference_low": NUMBER,
                 "difference_high": NUMBER, "p_value": NUMBER, "verdict": text, "base_correct": zeros_and_ones, "tuned_correct": zeros_and_ones},
                required=("n", "lost", "gained", "difference"), lenient=True)
RECORD = record({
    "format": whole, "task": text, "source": text, "weights": text, "checkpoint": step_or_final, "base_from": text,
    "n": whole, "limit": number, "metrics": mapping_of(METRIC), "paired": mapping_of(PAIRED),
    "lm_eval_version": text, "date": text, "seconds": number, "batch_size": whole,
}, required=("task", "checkpoint", "metrics"), lenient=True)


def read(path):
    """(typed record with its `path`, None) or (None, why it was skipped). Never raises."""
    obj, why = read_untrusted_json(path, MAX_BYTES)
    if why or obj is None:
        return None, why or f"{Path(path).name} is missing"
    try:
        rec = RECORD(obj)
    except Skip as e:
        return None, f"{Path(path).name} is not a benchmark file ({e})"
    rec["paired"] = rec["paired"] or {}
    for p in list(rec["paired"].values()):
        for key in ("base_correct", "tuned_correct"):
            if p[key] is not None and len(p[key]) != p["n"]:
                p[key] = None
    rec["path"] = str(path)
    return rec, None


def read_all(run_dir):
    """(records sorted by task and weights, [why each unreadable file was skipped]) of a run's benchmarks/."""
    folder = Path(run_dir) / FOLDER
    recs, skipped = [], []
    if not folder.is_dir():
        return recs, skipped
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):  # a temporary file of a write in progress
            continue
        rec, why = read(path)
        if rec:
            recs.append(rec)
        else:
            skipped.append(why)
    return recs, skipped
