"""Forgetting during training: the probe as a subscriber, the forgetting budget, and the mitigations.
(Probing a saved run or a model after training is probe_saved.py's.)

ForgettingProbe   probes at step 0 (the baseline), every `probe_every` steps (or at each evaluation) and at the end;
                  writes `probe/step-N.json` and a metrics line with a `probe` field; applies the budget.
replay_examples   general examples mixed into the training set (replay).
KLToBase          beta x KL(base || current) on general examples, added to the loss each step.
L2SP              alpha/2 x ||theta - theta_0||^2 for full fine-tuning.
"""
import hashlib
import json
import random
from pathlib import Path

import torch

from . import metrics
from .batching import pack, tokenize_data
from .data import bundled, load_examples
from .durable import write_atomic, write_json
from .generate import base_model_context
from .loss import split_head
from .models import cache_dir
from .paired import retention_text
from .probe import PRECISIONS, ProbeSuite, pick, probe_precision, run_probe, summarize, topk_kl
from .rundir import read_json, read_untrusted_json

# probe/step-N.json as the panels read it back: typed, since a run folder may come from anyone
ANSWER = metrics.record({"question": metrics.text, "answer": metrics.text, "ok": metrics.boolean},
                        required=("question", "answer", "ok"))
PROBE_STEP = metrics.record({"step": metrics.whole, "gen": metrics.list_of(ANSWER, limit=200)}, lenient=True)
_m = metrics
BASELINE = _m.record({"fingerprint": _m.text, "cached": _m.boolean, "result": _m.record({
    "mc": _m.record({"pred": _m.list_of(_m.whole, 100_000), "pred_norm": _m.list_of(_m.whole, 100_000),
                     "logprob": _m.list_of(_m.list_of(_m.number), 100_000)}, required=("pred", "pred_norm")),
    "ppl": _m.nullable(_m.number),
    "kl": _m.nullable(_m.record({"answers": _m.list_of(_m.list_of(_m.whole)),
                                 "topk_ids": _m.list_of(_m.list_of(_m.list_of(_m.whole))),
                                 "topk_logprobs": _m.list_of(_m.list_of(_m.list_of(_m.number)))},
                                required=("answers", "topk_ids", "topk_logprobs"))),
    "gen": _m.nullable(_m.list_of(ANSWER, limit=10_000)), "precision": _m.nullable(_m.one_of(*PRECISIONS)),
    "seconds": _m.record({"total": _m.number, "mc": _m.number, "ppl": _m.number, "kl": _m.number, "gen": _m.number},
                         required=("total",), lenient=True)}, required=("mc", "seconds"))},
    required=("fingerprint", "result"))
BUDGET_POINT = _m.list_of(_m.nullable(_m.number), limit=3)
MIN_QUESTIONS = 60  # what a probe under probe_time_share asks at least: ten a category
SLOWER = 1.2  # a tuned pass against the base model's: the demo's LoRA run (adapters on) measured 8-12% slower per
              # question and 18% slower for the rest of the pass on 2 CPU cores


def model_identity(path):
    """A string that changes when the model's weights change: its folder and its weight files' sizes and times."""
    p = Path(str(path))
    if not p.is_dir():
        return None
    files = sorted(p.glob("*.safetensors"))
    return json.dumps([str(p.resolve())] + [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files])


def baseline_cache_path(model_path, suite, model, precision):
    ident = model_identity(model_path)
    if ident is None:
        return None
    p = next(model.parameters())
    key = hashlib.sha256(f"{ident}|{suite.fingerprint()}|{p.device.type}|{p.dtype}|{precision}".encode()).hexdigest()
    return cache_dir() / "probe" / f"{key[:24]}.json"


def probe_baseline(model, tokenizer, suite, model_path=None, precision="auto"):
    """The base model's probe results: from the per-model cache, or measured now with adapters disabled."""
    precision = probe_precision(next(model.parameters()).device, precision)
    path = baseline_cache_path(model_path, suite, model, precision) if model_path else None
    if path is not None and path.exists():
        cached = read_json(path, default=None)
        if cached:
            return cached, True
    with base_model_context(model):
        base = run_probe(model, tokenizer, suite, precision=precision)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, base)
    return base, False


class ForgettingProbe:
    """Subscriber: runs the probe on the schedule, records it, and enforces the forgetting budget."""

    def __init__(self, cfg, suite=None):
        self.cfg = cfg
        self.suite = suite or ProbeSuite.default(cfg.probe_items or None)
        self.baseline = None
        self.last = {}  # step -> summary
        self.points = []  # (step, val_loss, retention) at each evaluation that had a probe
        self.spent, self.last_s = 0.0, None  # seconds the probes after step 0 took; the last one's (per question, rest)

    def on_event(self, ev):
        run = ev.run
        if ev.kind == "start":
            self._start(ev, run)
        elif ev.kind == "log" and run.schedule(ev.step, "probe"):
            self.probe(run, ev.step, ev.data.get("train_s"))
        elif ev.kind == "eval" and ev.step in self.last:
            # the budget judges the paired interval's upper bound: a point is out only when it surely forgot more
            self.points.append((ev.step, ev.data["val_loss"], self.last[ev.step]["retention_high"]))
            best = best_within_budget(self.points, self.cfg.min_retention)
            if best is not None and best != run.best_checkpoint:
                run.best_checkpoint = best
            write_json(run.run_dir.path / "probe" / "budget.json",
                       {"min_retention": self.cfg.min_retention, "best_step": best, "points": self.points})

    def _start(self, ev, run):
        folder = run.run_dir.path / "probe"
        folder.mkdir(exist_ok=True)
        saved = read_baseline(folder, self.suite)
        if saved:
            self.baseline = saved["result"]
        else:
            self.baseline, cached = probe_baseline(run.model, run.tokenizer, self.suite, run.model_path,
                                                   self.cfg.probe_precision)
            write_json(folder / "baseline.json", {"fingerprint": self.suite.fingerprint(), "cached": cached,
                                                  "result": self.baseline})
        points = read_budget(folder)
        if points:  # resumed: keep the points measured before the stop
            self.points = [p for p in points if p[0] <= ev.step]
            run.best_checkpoint = best_within_budget(self.points, self.cfg.min_retention)
        if ev.step == 0:  # the model at step 0 is the base model: its probe is the baseline
            self._record(run, 0, self.baseline)

    def probe(self, run, step, train_s=None):
        """The full question set at the end (and at step 0: the baseline), the quick subset in between; with
        probe_time_share, as many questions as fit in that share of the training time."""
        quick = self.suite.quick(self.questions(step, run.total_steps, train_s))
        suite, baseline = (quick[0], pick(self.baseline, quick[1])) if quick else (self.suite, self.baseline)
        result = run_probe(run.model, run.tokenizer, suite, baseline=baseline)
        secs = result["seconds"]
        self.spent += secs["total"]
        self.last_s = (secs["mc"] / len(suite.mc), secs["total"] - secs["mc"])
        return self._record(run, step, result, suite, baseline)

    def questions(self, step, total_steps, train_s=None):
        """How many multiple-choice questions the probe at `step` asks: all at the end, probe_quick in between; with
        probe_time_share, no more than fit in that share of `train_s` (the training time so far) less what the
        probes since step 0 took, at the baseline's time per question, and never fewer than MIN_QUESTIONS."""
        n = len(self.suite.mc) if step >= total_steps else (self.cfg.probe_quick or len(self.suite.mc))
        share, secs = self.cfg.probe_time_share, self.baseline.get("seconds", {})
        if share and train_s and secs.get("mc"):
            # the last pass's times, else the baseline's made slower by SLOWER (the base model has no adapters
            # in the way); the baseline's drift part also generated the base answers (about half of it)
            per_question, fixed = self.last_s or (
                SLOWER * secs["mc"] / len(self.suite.mc),
                SLOWER * ((secs.get("ppl") or 0) + (secs.get("gen") or 0) + (secs.get("kl") or 0) / 2))
            room = share * train_s - self.spent - fixed
            n = min(n, max(MIN_QUESTIONS, int(room / per_question)))
        return n

    def _record(self, run, step, result, suite=None, baseline=None):
        s = summarize(suite or self.suite, result, baseline or self.baseline)
        if step == 0:
            s["kl"] = 0.0
        self.last[step] = s
        write_json(run.run_dir.path / "probe" / f"step-{step}.json",
                   {"step": step, "summary": s, "mc_pred": result["mc"]["pred"], "mc_logprob": result["mc"]["logprob"],
                    "kl_per_prompt": result.get("kl", {}).get("per_prompt"), "gen": result.get("gen"),
                    "seconds": result["seconds"]})
        if step and s.get("judgement") == "collapsed":
            run.warn(next(x for x in s["signals"] if x.startswith("collapse")), step)
        run.emit("probe", step, probe=s)
        if step and self.cfg.budget_action == "stop" and s["retention_high"] is not None \
                and s["retention_high"] < self.cfg.min_retention:
            run.request_stop()
            run.stop_reason = (f"retention {retention_text(s)} fell below the budget {self.cfg.min_retention:.0%} "
                               f"at step {step}: {s['verdict']}")
        return s


def read_baseline(folder, suite):
    """probe/baseline.json's result when it was measured with this suite and has the shape of one (a run folder may
    come from anyone); None otherwise, and the baseline is measured again."""
    value, _ = read_untrusted_json(folder / "baseline.json")
    try:
        saved = BASELINE(value) if value is not None else None
    except (metrics.Skip, RecursionError):
        return None
    if not saved or saved["fingerprint"] != suite.fingerprint() or len(saved["result"]["mc"]["pred"]) != len(suite.mc):
        return None
    result = {k: v for k, v in saved["result"].items() if v is not None}
    return {**saved, "result": result}


def read_budget(folder):
    """The (step, val_loss, retention's upper bound) points of probe/budget.json that are well formed."""
    value, _ = read_untrusted_json(folder / "budget.json")
    points = value.get("points") if isinstance(value, dict) else None
    out = []
    for p in points if isinstance(points, list) else []:
        try:
            step, val, ret = BUDGET_POINT(p)
        except (metrics.Skip, ValueError):
            continue
        if isinstance(step, int) and val is not None:
            out.append((step, val, ret))
    return out


def read_budget_best(folder):
    """probe/budget.json's best step (the forgetting budget's choice so far), or None."""
    value, _ = read_untrusted_json(folder / "budget.json")
    best = value.get("best_step") if isinstance(value, dict) else None
    return best if isinstance(best, int) and not isinstance(best, bool) and best >= 0 else None


def read_probe_step(run_dir, step):
    """The kept answers of the probe at `step` ({"step", "gen": [{question, answer, ok}] or None}), or None when the
    file is missing or unreadable."""
    value, why = read_untrusted_json(run_dir.path / "probe" / f"step-{int(step)}.json")
    try:
        return None if why or value is None else PROBE_STEP(value)
    except metrics.Skip:
        return None


def best_within_budget(points, min_retention):
    """The step with the lowest validation loss among (step, val_loss, retention bound) points within the budget:
    a point is out when even the upper bound of its paired retention interval is below min_retention (it surely
    forgot more than allowed); a point without a probe result counts as within. None when none is."""
    ok = [(val, step) for step, val, bound in points if bound is None or bound >= min_retention]
    return min(ok)[1] if ok else None


# -- mitigations -------------------------------------------------------------------------------------------------------

def replay_examples(cfg, n_train):
    """General examples to mix in: replay_fraction of the resulting training set, drawn with the run's seed."""
    source = cfg.replay_data or bundled("general_instructions.jsonl")
    pool = load_examples(source).require_usable().examples
    n = round(cfg.replay_fraction / (1 - cfg.replay_fraction) * n_train)
    rng = random.Random(cfg.seed + 17)
    return [pool[i % len(pool)] for i in rng.sample(range(max(n, len(pool))), n)] if n else []


class KLToBase:
    """beta x KL(base || current) on a few general examples per step (the base's top-k log-probabilities are
    computed once, with adapters disabled, and kept in the run directory for resume)."""
    per_step = 4

    def __init__(self, cfg, run, n_pool=64):
        self.beta, self.seed = cfg.kl_beta, cfg.seed
        data = load_examples(cfg.replay_data or bundled("general_instructions.jsonl"))
        data.examples = data.examples[:n_pool]
        self.pool = tokenize_data(data, run.tokenizer, min(cfg.max_seq_len, 256))
        path = run.run_dir.path / "probe" / "kl_reference.pt"
        if path.exists():
            self.ref = torch.load(path, weights_only=True)
        else:
            with base_model_context(run.model), torch.no_grad():
                self.ref = [self._logp(run.model, [ex])[0].topk(32, -1) for ex in self.pool]
            self.ref = [(r.indices.cpu(), r.values.cpu()) for r in self.ref]
            if run.main:  # the other processes of a multi-process run compute the same and write nothing
                path.parent.mkdir(exist_ok=True)
                write_atomic(path, lambda fh: torch.save(self.ref, fh))

    @staticmethod
    def _logp(model, examples):
        """Log-probabilities at each example's target positions, one tensor per example."""
        device = next(model.parameters()).device
        batch = pack(examples).to(device)
        backbone, head = split_head(model)
        hidden = backbone(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state[0]
        out, o = [], 0
        for ex in examples:
            pos = [o + t for t in range(len(ex) - 1) if ex.mask[t + 1]]
            out.append(torch.log_softmax(head(hidden[pos]).float(), -1))
            o += len(ex)
        return out

    def __call__(self, model, step):
        idx = random.Random(self.seed * 7919 + step).sample(range(len(self.pool)), min(self.per_step, len(self.pool)))
        logq = self._logp(model, [self.pool[i] for i in idx])
        return self.beta * torch.cat([topk_kl(self.ref[i], q) for i, q in zip(idx, logq)]).mean()


class L2SP:
    """alpha/2 x ||theta - theta_0||^2 over the trained weights (keeps a copy of the starting weights)."""

    def __init__(self, cfg, model):
        self.alpha = cfg.l2sp_alpha
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.pairs = None

    def __call__(self, model, step):
        if self.pairs is None:  # paired at the first call: FSDP replaces the parameters by shards after __init__
            self.pairs = [(p, _shard_like(self.anchor.pop(n), p)) for n, p in model.named_parameters()
                          if p.requires_grad]
        squares = [((p - p0) ** 2).sum() for p, p0 in self.pairs]
        total = sum(x for x in squares if not hasattr(x, "full_tensor"))
        shards = [x for x in squares if hasattr(x, "full_tensor")]  # FSDP: summed here, then over processes
        if shards:
            total = total + sum(shards[1:], shards[0]).full_tensor()
        return 0.5 * self.alpha * total


def _shard_like(tensor, param):
    """`tensor` cut into the same pieces as `param` when that is an FSDP shard (a DTensor)."""
    if not hasattr(param, "device_mesh"):
        return tensor
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(tensor, param.device_mesh, param.placements)

