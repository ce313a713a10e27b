"""The forgetting probe: how much of what the model knew before fine-tuning it still knows.

Four measurements on the model in memory (no copy of its weights):
- multiple choice: general-knowledge questions scored as lm-evaluation-harness does, by the summed log-probability
  of each choice after "Question: ...\\nAnswer:"; `acc` takes the best sum, `acc_norm` the best sum per byte;
- drift: KL(base || current) of the next-token distributions along the base model's own answers to general prompts,
  from the base model's top-k log-probabilities (cached once per model, so no second model is kept);
- perplexity on a general English text;
- greedy answers to general questions, kept at every probe so they can be compared with the base answers.

Speed: each question's choices share one forward pass of the question (a tree attention mask lets every choice see
the question but not the other choices), many questions share a row, and the output layer is computed only at the
positions that are scored.
"""
import contextlib
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import bundled
from .generate import _as_messages
from .loss import split_head
from .models import mask_attention
from .judgement import collapse, judge
from .paired import paired_change, points, retention_text, verdict

TOPK = 64


@dataclass
class ProbeSuite:
    """What the probe asks. `ProbeSuite.default()` is the bundled set; add your own "don't forget this" items."""
    mc: list = field(default_factory=list)         # {"id", "category", "question", "choices", "answer"}
    prompts: list = field(default_factory=list)    # general prompts for the drift measurement
    questions: list = field(default_factory=list)  # {"question", "expect": [substrings]}
    texts: list = field(default_factory=list)      # general text for perplexity
    text_tokens: int = 768                         # perplexity on at most this many tokens
    kl_tokens: int = 12                            # drift measured along the first tokens of each base answer
    answer_tokens: int = 24                        # length of the kept greedy answers

    @classmethod
    def default(cls, user_items=None):
        suite = cls(mc=[json.loads(line) for line in bundled("probe_mc.jsonl").read_text().splitlines() if line.strip()],
                    prompts=json.loads(bundled("probe_prompts.json").read_text()),
                    questions=json.loads(bundled("probe_questions.json").read_text()),
                    texts=[bundled("general_text.txt").read_text()])
        if user_items:
            suite.load_user_items(user_items)
        return suite

    def add_mc(self, question, choices, answer, id=None, category="user"):
        from .errors import DataError
        if not (isinstance(choices, list) and 2 <= len(choices) and isinstance(answer, int) and 0 <= answer < len(choices)):
            raise DataError(f"a multiple-choice probe needs 2+ choices and the index of the right one: {question!r}")
        self.mc.append({"id": id or f"user-{len(self.mc) + 1:03d}", "category": category, "question": question,
                        "choices": list(choices), "answer": answer})

    def quick(self, n):
        """(a smaller suite, the indices of its questions in this one): the first questions of each category, about
        n in all, in file order (the same ones every time, so probes of one run compare); None when n asks for all."""
        if not n or n >= len(self.mc):
            return None
        cats = {}
        for i, it in enumerate(self.mc):
            cats.setdefault(it.get("category", "other"), []).append(i)
        per = math.ceil(n / len(cats))
        keep = sorted(i for idx in cats.values() for i in idx[:per])
        return dataclasses.replace(self, mc=[self.mc[i] for i in keep]), keep

    def add_question(self, question, expect):
        self.questions.append({"question": question, "expect": [e.lower() for e in expect]})

    def add_text(self, text):
        self.texts.append(text)

    def load_user_items(self, source):
        """A JSONL file or a list of dicts, each an MC item {question, choices, answer}, a question with
        expected answers {question|prompt, expect}, or a text {text}."""
        from .errors import DataError
        from .sources import json_reason
        rows = source
        if isinstance(source, (str, Path)):
            rows = []
            for n, line in enumerate(Path(source).read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"invalid JSON at column {e.colno}: {json_reason(e)}", source=source, row=n,
                                        unit="line") from None
        for n, r in enumerate(rows, 1):
            if not isinstance(r, dict):
                raise DataError("expected an object", source=str(source)[:80], row=n)
            if "choices" in r:
                self.add_mc(r.get("question"), r.get("choices"), r.get("answer"), r.get("id"), r.get("category", "user"))
            elif "expect" in r:
                self.add_question(r.get("question") or r.get("prompt"), r["expect"])
            elif "text" in r:
                self.add_text(r["text"])
            else:
                raise DataError("a probe item needs 'choices' (multiple choice), 'expect' (question) or 'text'",
                                source=str(source)[:80], row=n)

    def fingerprint(self):
        blob = json.dumps([self.mc, self.prompts, self.questions, self.texts, self.text_tokens, self.kl_tokens,
                           self.answer_tokens, TOPK], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- tree-packed scoring ----------------------------------------------------------------------------------------------

@dataclass
class Tree:
    """A prefix and branches that each continue it (and do not see each other)."""
    prefix: list
    branches: list


def _rows(trees, max_tokens):
    rows, cur, size = [], [], 0
    for i, t in enumerate(trees):
        n = len(t.prefix) + sum(map(len, t.branches))
        if cur and size + n > max_tokens:
            rows.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += n
    return rows + ([cur] if cur else [])


def _row_inputs(trees, idx, device, attn):
    """ids, positions and tree mask of one row; `pred[(tree, branch)]` = row positions predicting each branch token."""
    ids, pos, tree_of, branch_of, pred = [], [], [], [], {}
    for ti in idx:
        t = trees[ti]
        start = len(ids)
        ids += t.prefix
        pos += range(len(t.prefix))
        tree_of += [ti] * len(t.prefix)
        branch_of += [-1] * len(t.prefix)
        last_prefix = start + len(t.prefix) - 1
        for bi, b in enumerate(t.branches):
            o = len(ids)
            ids += b
            pos += range(len(t.prefix), len(t.prefix) + len(b))
            tree_of += [ti] * len(b)
            branch_of += [bi] * len(b)
            pred[(ti, bi)] = [last_prefix] + list(range(o, o + len(b) - 1))
    T = len(ids)
    tr, br = torch.tensor(tree_of, device=device), torch.tensor(branch_of, device=device)
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    mask = (tr[:, None] == tr[None, :]) & causal & ((br[None, :] == -1) | (br[None, :] == br[:, None]))
    mask = mask[None, None]
    if attn == "eager":
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    t = lambda x: torch.tensor([x], device=device)  # noqa: E731
    return t(ids), t(pos), mask, pred


@torch.no_grad()
def score_trees(model, trees, max_tokens=1024, keep_topk=None, kl_ref=None, dist_from=None):
    """Log-probabilities of every branch token given its prefix and the branch's earlier tokens.

    Returns per tree a list (per branch) of 1-D tensors. With `dist_from[(tree, branch)] = k`, the distributions
    predicting branch tokens k.. are also reduced: `keep_topk` -> their top-k (ids, logprobs); `kl_ref` -> the KL from
    the reference top-k (ids, logprobs) given for them.
    """
    with mask_attention(model):  # the tree rows need their explicit mask
        device = next(model.parameters()).device
        parts = split_head(model)
        attn = getattr(model.config, "_attn_implementation", "sdpa")
        out = [[None] * len(t.branches) for t in trees]
        extra = {}
        for idx in _rows(trees, max_tokens):
            ids, pos, mask, pred = _row_inputs(trees, idx, device, attn)
            keys = list(pred)
            flat = [p for k in keys for p in pred[k]]
            sel = torch.tensor(flat, device=device)
            if parts is not None:  # the output layer only at the scored positions, in one matmul per row
                hidden = parts[0](input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False)
                logits = parts[1](hidden.last_hidden_state[0].index_select(0, sel))
            else:
                logits = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits[0]
                logits = logits.index_select(0, sel)
            logp_all = torch.log_softmax(logits.float(), -1)
            targets = torch.tensor([t for ti, bi in keys for t in trees[ti].branches[bi]], device=device)
            token_lp = logp_all.gather(1, targets[:, None])[:, 0].cpu()
            o = 0
            for key in keys:
                n = len(pred[key])
                ti, bi = key
                out[ti][bi] = token_lp[o:o + n]
                if dist_from and key in dist_from:
                    d = logp_all[o + dist_from[key]:o + n]
                    if keep_topk:
                        v, i = d.topk(keep_topk, -1)
                        extra[key] = (i.cpu(), v.cpu())
                    if kl_ref is not None:
                        extra[key] = topk_kl(kl_ref[key], d).clamp_min(0).cpu()
                o += n
        return out, extra


def topk_kl(ref, logq):
    """KL(p || q) per position from p's top-k (ids, logprobs) and q's full log-probabilities; the mass outside
    the top-k is one more bucket, so the value is exact when that mass is 0 and a close lower bound otherwise."""
    ids, logp = (x.to(logq.device) for x in ref)
    logq_k = logq.gather(1, ids)
    p = logp.exp()
    kl = (p * (logp - logq_k)).sum(1)
    p_rest = (1 - p.sum(1)).clamp_min(1e-12)
    q_rest = (1 - logq_k.exp().sum(1)).clamp_min(1e-12)
    return kl + p_rest * (p_rest.log() - q_rest.log())


# -- the four measurements -------------------------------------------------------------------------------------------

def _tok(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def mc_trees(suite, tokenizer):
    return [Tree(_tok(tokenizer, f"Question: {it['question']}\nAnswer:"), [_tok(tokenizer, f" {c}") for c in it["choices"]])
            for it in suite.mc]


def text_trees(suite, tokenizer, window=256):
    ids = [t for text in suite.texts for t in _tok(tokenizer, text)][:suite.text_tokens]
    return [Tree(ids[i:i + 1], [ids[i + 1:i + window]]) for i in range(0, len(ids) - 1, window) if len(ids[i + 1:i + window])]


def kl_trees(suite, tokenizer, answers):
    """The chat-formatted prompts share their template header (system prompt and all) as one prefix."""
    prompts = [tokenizer.apply_chat_template(_as_messages(p), tokenize=True, add_generation_prompt=True)
               for p in suite.prompts]
    prompts = [p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p for p in prompts]
    n = 0
    while all(len(p) > n + 1 for p in prompts) and len({p[n] for p in prompts}) == 1:
        n += 1
    header = prompts[0][:n]
    tree = Tree(header, [p[n:] + a for p, a in zip(prompts, answers)])
    dist_from = {(0, i): len(p) - n for i, p in enumerate(prompts)}
    return [tree], dist_from


@torch.no_grad()
def greedy_ids(model, tokenizer, prompts, max_new_tokens):
    """New token ids of greedy answers (up to and including the end-of-turn token)."""
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        texts = [tokenizer.apply_chat_template(_as_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    finally:
        tokenizer.padding_side = side
    answers = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        cut = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        answers.append(row[:cut] or [tokenizer.eos_token_id])
    return answers


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def probe_precision(device, choice="auto"):
    """The precision the probe computes in: `choice`, or for "auto" bf16 where the hardware computes it natively
    (CUDA compute capability 8.0 and up; CPUs with AVX512-BF16 or AMX: 1.5x faster for the default model on 2 AMD
    EPYC cores), fp16 on older CUDA GPUs, fp32 on other CPUs. A run's baseline and probes all use the same one."""
    if choice != "auto":
        return choice
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    if device.type == "cpu":
        native = [getattr(torch.cpu, f, lambda: False) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return "bf16" if any(f() for f in native) else "fp32"
    return "fp32"


def run_probe(model, tokenizer, suite, baseline=None, max_tokens=None, precision="auto"):
    """One probe pass. Without `baseline` it records what a baseline needs (the base answers and their top-k).
    `precision`: see probe_precision (a pass against a baseline uses the baseline's)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    max_tokens = max_tokens or (8192 if device.type == "cuda" else 1024)
    # against a baseline, its precision (one measured before precisions were recorded was fp32)
    precision = (baseline.get("precision") or "fp32") if baseline else probe_precision(device, precision)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    t0 = time.perf_counter()
    res, secs = {"precision": precision}, {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
        try:
            t = time.perf_counter()
            trees = mc_trees(suite, tokenizer)
            scores, _ = score_trees(model, trees, max_tokens)
            sums = [[float(s.sum()) for s in item] for item in scores]
            per_byte = [[s / max(1, len(f" {c}".encode())) for s, c in zip(ss, it["choices"])]
                        for ss, it in zip(sums, suite.mc)]
            res["mc"] = {"logprob": sums, "pred": [max(range(len(s)), key=s.__getitem__) for s in sums],
                         "pred_norm": [max(range(len(s)), key=s.__getitem__) for s in per_byte]}
            secs["mc"] = time.perf_counter() - t

            t = time.perf_counter()
            trees = text_trees(suite, tokenizer)
            lp = [float(s.sum()) for item in score_trees(model, trees, max_tokens)[0] for s in item]
            n = sum(len(t.branches[0]) for t in trees)
            res["ppl"] = math.exp(-sum(lp) / max(n, 1)) if n else None
            secs["ppl"] = time.perf_counter() - t

            t = time.perf_counter()
            if suite.prompts:
                answers = baseline["kl"]["answers"] if baseline else greedy_ids(model, tokenizer, suite.prompts,
                                                                                 suite.kl_tokens)
                trees, dist_from = kl_trees(suite, tokenizer, answers)
                if baseline:
                    ref = {(0, i): (torch.tensor(ids), torch.tensor(lps)) for i, (ids, lps) in
                           enumerate(zip(baseline["kl"]["topk_ids"], baseline["kl"]["topk_logprobs"]))}
                    _, kls = score_trees(model, trees, max_tokens, kl_ref=ref, dist_from=dist_from)
                    per_prompt = [float(kls[(0, i)].mean()) for i in range(len(suite.prompts))]
                    res["kl"] = {"mean": sum(per_prompt) / len(per_prompt), "per_prompt": per_prompt}
                else:
                    _, top = score_trees(model, trees, max_tokens, keep_topk=TOPK, dist_from=dist_from)
                    res["kl"] = {"mean": 0.0, "per_prompt": [0.0] * len(suite.prompts), "answers": answers,
                                 "topk_ids": [top[(0, i)][0].tolist() for i in range(len(suite.prompts))],
                                 "topk_logprobs": [top[(0, i)][1].tolist() for i in range(len(suite.prompts))]}
            secs["kl"] = time.perf_counter() - t

            t = time.perf_counter()
            if suite.questions:
                from .generate import generate
                answers = generate(model, tokenizer, [q["question"] for q in suite.questions], suite.answer_tokens)
                res["gen"] = [{"question": q["question"], "answer": a, "ok": any(e in a.lower() for e in q["expect"])}
                              for q, a in zip(suite.questions, answers)]
            secs["gen"] = time.perf_counter() - t
        finally:
            model.train(was)
    res["seconds"] = {k: round(v, 3) for k, v in {**secs, "total": time.perf_counter() - t0}.items()}
    return res


# -- reading results ---------------------------------------------------------------------------------------------------

def wilson(k, n, z=1.96):
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def summarize(suite, result, baseline):
    """The forgetting summary of one probe pass against the baseline pass: accuracy and its paired change (see
    paired.py), per category too, retention with the paired interval, drift, perplexity and flipped questions."""
    right = [p == it["answer"] for p, it in zip(result["mc"]["pred"], suite.mc)]
    base_right = [p == it["answer"] for p, it in zip(baseline["mc"]["pred"], suite.mc)]
    n, k, kb = len(right), sum(right), sum(base_right)
    acc, acc_base = k / max(n, 1), kb / max(n, 1)
    lo, hi = wilson(k, n)
    norm = sum(p == it["answer"] for p, it in zip(result["mc"]["pred_norm"], suite.mc)) / max(n, 1)
    change = paired_change(base_right, right)
    out = {
        "acc": acc, "acc_base": acc_base, "acc_norm": norm, "n": n, "acc_low": lo, "acc_high": hi,
        **{k: change[k] for k in ("change", "change_low", "change_high", "p_value")},
        "verdict": verdict(change["change"], change["change_low"], change["change_high"]),
        **retention(acc_base, change),
        "kl": result.get("kl", {}).get("mean"),
        "ppl": result.get("ppl"), "ppl_base": baseline.get("ppl"),
        "ppl_change": (result["ppl"] / baseline["ppl"] - 1) if result.get("ppl") and baseline.get("ppl") else None,
        "right_to_wrong": [it["id"] for r, b, it in zip(right, base_right, suite.mc) if b and not r],
        "wrong_to_right": [it["id"] for r, b, it in zip(right, base_right, suite.mc) if r and not b],
        "categories": by_category(suite, right, base_right),
        "seconds": result["seconds"]["total"],
    }
    if "gen" in result:
        out["gen_ok"] = sum(g["ok"] for g in result["gen"])
        out["gen_ok_base"] = sum(g["ok"] for g in baseline.get("gen", []))
        out["gen_n"] = len(result["gen"])
    warning = collapse([g["answer"] for g in result.get("gen", [])], [g["answer"] for g in baseline.get("gen", [])])
    out["judgement"], out["signals"] = judge(out, warning)
    return out


def pick(result, keep):
    """A probe result restricted to the multiple-choice questions at indices `keep` (see ProbeSuite.quick)."""
    mc = {k: [v[i] for i in keep] for k, v in result["mc"].items()}
    return {**result, "mc": mc}


def retention(acc_base, change):
    """Accuracy as a share of the base model's, with the paired interval of the change: {retention, retention_low,
    retention_high} (None when the base model got nothing right)."""
    if not acc_base:
        return {"retention": None, "retention_low": None, "retention_high": None}
    return {"retention": 1 + change["change"] / acc_base, "retention_low": 1 + change["change_low"] / acc_base,
            "retention_high": 1 + change["change_high"] / acc_base}


def by_category(suite, right, base_right):
    """{category: {n, acc, acc_base, change, change_low, change_high, verdict}}."""
    cats = {}
    for r, b, it in zip(right, base_right, suite.mc):
        cats.setdefault(it.get("category", "other"), []).append((r, b))
    out = {}
    for cat, pairs in sorted(cats.items()):
        c = paired_change([b for _, b in pairs], [r for r, _ in pairs])
        out[cat] = {"n": c["n"], "acc": sum(r for r, _ in pairs) / c["n"], "acc_base": sum(b for _, b in pairs) / c["n"],
                    **{k: c[k] for k in ("change", "change_low", "change_high")},
                    "verdict": verdict(c["change"], c["change_low"], c["change_high"])}
    return out


def format_summary(s):
    lines = [f"judgement: {s['judgement']} ({'; '.join(s.get('signals') or [])})"] if s.get("judgement") else []
    lines += [f"multiple choice: {s.get('verdict') or 'no paired verdict'} ({s['acc']:.1%} right against the base "
             f"model's {s['acc_base']:.1%}, n={s['n']})"]
    if s.get("change") is not None:
        lines.append(f"change in accuracy: {points(s['change'], s['change_low'], s['change_high'])}; "
                     f"{len(s['right_to_wrong'])} right -> wrong, {len(s['wrong_to_right'])} wrong -> right "
                     f"(exact McNemar p = {s['p_value']:.2g})")
    if s.get("retention") is not None and s.get("retention_low") is not None:
        lines.append(f"retention: {retention_text(s)}")
    for cat, c in (s.get("categories") or {}).items():
        lines.append(f"  {cat}: {c['acc']:.0%} (base {c['acc_base']:.0%}), {c['verdict']}")
    if s.get("kl") is not None:
        lines.append(f"drift from the base model: KL {s['kl']:.4f} nats per token")
    if s.get("ppl") and s.get("ppl_base") and s.get("ppl_change") is not None:
        lines.append(f"general-text perplexity: {s['ppl']:.2f} (base {s['ppl_base']:.2f}, {s['ppl_change']:+.1%})")
    if s.get("gen_ok") is not None:
        lines.append(f"general questions answered right: {s['gen_ok']}/{s['gen_n']} (base {s['gen_ok_base']})")
    lines.append(f"flipped right -> wrong: {', '.join(s['right_to_wrong'][:12]) or 'none'}"
                 + (" ..." if len(s['right_to_wrong']) > 12 else ""))
    lines.append(f"flipped wrong -> right: {', '.join(s['wrong_to_right'][:12]) or 'none'}"
                 + (" ..." if len(s['wrong_to_right']) > 12 else ""))
    if s.get("seconds") is not None:
        lines.append(f"one probe pass: {s['seconds']:.1f} s")
    return "\n".join(lines)
