"""The model card (README.md) of a run's upload, built with huggingface_hub's ModelCard so its YAML metadata is what
the Hub reads: base_model, library_name, license, pipeline_tag, tags, datasets.

Everything comes from the run folder, which may come from anyone: numbers are typed (metrics.py's checkers), Hub ids
are checked with huggingface_hub's own validator before they reach the metadata or a link, and any other text goes
into the Markdown only as a code span or a fenced block, where links, HTML and emphasis are inert. Nothing from the
folder is executed.
"""
import re
from pathlib import Path

from ..core import metrics
from ..core.formats import FORMAT_NAMES
from ..core.judgement import JUDGEMENTS
from ..core.paired import points, retention_text, verdict
from ..core.probe import format_summary
from ..core.rundir import RunDir, read_untrusted_json
from ..core.sources import FILE_KINDS

_m = metrics


def _count(v):
    """A list of notes in data.json, as the number of its items."""
    if not isinstance(v, list):
        raise metrics.Skip(f"{v!r:.40} is not a list")
    return len(v)


REPORT = _m.record({"source": _m.text, "rows": _m.whole, "usable": _m.whole, "bad": _m.whole, "truncated": _m.whole,
                    "overlong": _count, "duplicates": _count, "mojibake": _count}, lenient=True)
DATA = _m.record({"source": _m.text, "format": _m.text, "train_examples": _m.whole, "val_examples": _m.whole,
                  "replay_examples": _m.whole, "report": REPORT, "val_report": REPORT}, lenient=True)
META = _m.record({"ftnb": _m.text, "torch": _m.text, "transformers": _m.text, "peft": _m.text,
                  "base_model": _m.text, "base_weights": _m.text, "base_exact": _m.boolean, "base_license": _m.text,
                  "params": _m.whole, "trainable_params": _m.whole}, lenient=True)
MAX_NOTES = 1000  # data.json keeps at most this many notes of a kind (DataReport.summary): more reads "1000 or more"
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.\-]{0,63}")  # the Hub's license ids: apache-2.0, mit, llama3.1, other
PYTHON_LABELS = {"list": "a Python list", "DataFrame": "a pandas DataFrame", "datasets.Dataset": "a datasets.Dataset"}


# -- untrusted text into Markdown -----------------------------------------------------------------------------------

def code(value, limit=200):
    """Text as an inline code span on one line: no link, HTML or emphasis inside it is rendered. The fence is one
    backtick longer than any run of backticks in the text, so the text cannot close it."""
    s = "".join(c for c in " ".join(str(value).split()) if c.isprintable())
    s = s[:limit] + ("..." if len(s) > limit else "")
    if not s:
        return "(empty)"
    fence = "`" * (max(map(len, re.findall("`+", s)), default=0) + 1)
    pad = " " if s[0] == "`" or s[-1] == "`" else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def block(text, limit=4000):
    """Text as a fenced block (its lines kept, nothing inside rendered)."""
    lines = ["".join(c for c in line if c.isprintable()) for line in str(text)[:limit].splitlines()]
    body = "\n".join(lines)
    fence = "`" * max(3, max(map(len, re.findall("`+", body)), default=0) + 1)
    return f"{fence}text\n{body}\n{fence}"


def hub_id(value, namespace=False):
    """`value` when it is a valid Hub repo id (with a namespace, if `namespace`), else None."""
    from huggingface_hub.utils import validate_repo_id
    if not isinstance(value, str) or (namespace and "/" not in value):
        return None
    try:
        validate_repo_id(value)
    except ValueError:  # HFValidationError
        return None
    return value


def hub_dataset(source):
    """The Hub dataset a data source names ("org/name" or "org/name:split"), or None (a file or Python object)."""
    name = (source or "").partition(":")[0]
    if Path(name).suffix.lower() in FILE_KINDS or name.startswith((".", "/", "~")):
        return None
    return hub_id(name, namespace=True)


def _num(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)


def _at_least(n):
    return "n/a" if n is None else f"{n} or more" if n >= MAX_NOTES else str(n)


# -- what the run folder says ---------------------------------------------------------------------------------------

def _typed(path, checker):
    value, _ = read_untrusted_json(path)
    try:
        return checker(value) if value is not None else checker({})
    except metrics.Skip:  # not an object
        return checker({})


def recorded_base(run_dir, cfg=None):
    """The base model as the run recorded it (meta.json): base_model (a valid Hub id or None), base_weights (text),
    base_exact (True: the Hub original's own files; False: other weights; None: not known), base_license. A run
    made before ftnb recorded it: the base named by its config, its weights unknown."""
    from ..core.models import DEFAULT_HUB_ID
    rd = RunDir(run_dir)
    cfg = cfg or rd.config()
    meta = _typed(rd.path / "meta.json", META)
    license = meta["base_license"] if meta["base_license"] and LICENSE_ID.fullmatch(meta["base_license"]) else None
    if meta["base_weights"] is not None:
        return {"base_model": hub_id(meta["base_model"]), "base_weights": meta["base_weights"],
                "base_exact": meta["base_exact"], "base_license": license}
    named = DEFAULT_HUB_ID if cfg.model == "default" else hub_id(cfg.model, namespace=True)
    return {"base_model": named, "base_weights": "not recorded (the run was made before ftnb recorded it)",
            "base_exact": None, "base_license": license}


def model_card(run_dir, kind="adapter", step=None, checkpoint=False, repo_id=None, check=None):
    """The huggingface_hub.ModelCard of an upload of `run_dir`: `kind` "adapter" (a LoRA adapter), "merged" (LoRA
    merged into its base) or "model" (full fine-tuning); the weights of optimizer step `step`, a checkpoint or the
    run's final weights; `repo_id` for the loading snippet; `check`: merge.export's result (the logit check)."""
    from huggingface_hub import ModelCard, ModelCardData
    rd = RunDir(run_dir)
    cfg = rd.config()
    base = recorded_base(rd, cfg)
    data = _typed(rd.data_path, DATA)
    meta = _typed(rd.path / "meta.json", META)
    rows, _ = metrics.read(rd.metrics_path)
    status = rd.status()
    step = status.get("step") if step is None else step
    dataset = hub_dataset(data["source"])
    tags = ["ftnb", "lora" if cfg.method == "lora" else "full-fine-tuning"]
    extra = (("dora", cfg.use_dora), ("qlora", cfg.quantize != "none"), ("merged", kind == "merged"), ("chat", True))
    tags += [tag for tag, on in extra if on]
    card_data = ModelCardData(base_model=base["base_model"], license=base["base_license"],
                              library_name="peft" if kind == "adapter" else "transformers",
                              pipeline_tag="text-generation", tags=tags, datasets=[dataset] if dataset else None)
    repo = hub_id(repo_id) or "your-name/your-model"
    body = "\n\n".join(part for part in (
        _intro(cfg, kind, base, data, repo),
        _base_section(kind, base),
        _data_section(cfg, data, dataset),
        _training_section(cfg, meta),
        _results_section(cfg, rows, step),
        _upload_section(kind, step, checkpoint, status, check),
        _versions_section(meta),
        _usage_section(kind, base, repo)) if part)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")


def _intro(cfg, kind, base, data, repo):
    what = {"adapter": "A LoRA adapter for", "merged": "A fine-tuned version (LoRA, merged) of",
            "model": "A fully fine-tuned version of"}[kind]
    if base["base_model"]:  # a valid Hub id: safe in a link
        on = f"[{base['base_model']}](https://huggingface.co/{base['base_model']})"
    else:
        on = f"a local base model ({code(base['base_weights'])})"
    n = data["train_examples"]
    return "\n\n".join([
        f"# {repo.split('/')[-1]}",
        f"{what} {on}, trained with [ftnb](https://pypi.org/project/ftnb/) on {n if n is not None else 'n/a'} "
        "examples.",
        "**Intended use and limits.** It is meant for the task its training data shows (summarised below): a small "
        "set of examples teaches a style and a narrow domain, not new general knowledge, and outside that task it "
        "is at best as good as its base model. It has not been evaluated for safety, bias or factual accuracy "
        "beyond what this card reports; check its answers before relying on them, and do not use it where a wrong "
        "answer can cause harm."])


def _base_section(kind, base):
    named = code(base["base_model"]) if base["base_model"] else "a local model, not on the Hub"
    lines = ["## Base model", f"- Base: {named}",
             f"- Base weights trained on: {code(base['base_weights'])}"]
    if base["base_exact"] is False and base["base_model"]:
        lines.append("- These are **not** the Hub original's weights. " + (
            "The adapter was trained on them: applied to the Hub original it behaves close to, not exactly as, it "
            "did in training. The merged upload (ftnb's `push_to_hub(..., merged=True)`) carries the weights it was "
            "trained with." if kind == "adapter" else
            "This upload holds them, tuned: it needs no other weights."))
    elif base["base_exact"] is None and base["base_model"] and kind == "adapter":
        lines.append("- Whether they are the Hub original's own files is not known.")
    return "\n".join(lines)


def _data_section(cfg, data, dataset):
    rep = data["report"] or REPORT({})
    source = data["source"]
    if dataset:
        where = f"{code(source)} (a Hub dataset)"
    elif source in PYTHON_LABELS:
        where = f"examples passed from Python ({PYTHON_LABELS[source]})"
    elif source:
        where = f"{code(Path(source).name)} (a local file)"
    else:
        where = "not recorded"
    fmt = data["format"]
    lines = ["## Training data", f"- Source: {where}",
             f"- Format: {FORMAT_NAMES[fmt] if fmt in FORMAT_NAMES else code(fmt or 'n/a')}",
             f"- Rows read: {_num(rep['rows'], 'd')}; kept: {_num(rep['usable'], 'd')}; "
             f"rejected: {_num(rep['bad'], 'd')}",
             f"- Longer than max_seq_len ({cfg.max_seq_len} tokens): {_at_least(rep['overlong'])}"
             + (f", of which {rep['truncated']} kept their first whole turns (the rest left out)"
                if rep["overlong"] and rep["truncated"] is not None else ""),
             f"- Repeating an earlier row: {_at_least(rep['duplicates'])}"]
    if rep["mojibake"]:
        lines.append(f"- With mojibake (text decoded with the wrong encoding somewhere): {_at_least(rep['mojibake'])}"
                     + (" (repaired)" if cfg.fix_encoding else " (left as it was)"))
    val = data["val_report"]
    held = "held out from the same data" if val is None else \
        f"from a separate source, {_num(val['usable'], 'd')} of {_num(val['rows'], 'd')} rows kept"
    replayed = f" (including {data['replay_examples']} general examples replayed)" if data["replay_examples"] else ""
    lines.append(f"- Trained on {_num(data['train_examples'], 'd')} examples{replayed}; validated on "
                 f"{_num(data['val_examples'], 'd')} ({held})")
    return "\n".join(lines)


def _training_section(cfg, meta):
    if cfg.method == "lora":
        method = (f"LoRA{' (DoRA)' if cfg.use_dora else ''}, r={cfg.lora_r}, alpha={cfg.lora_alpha:g}, dropout "
                  f"{cfg.lora_dropout:g}, targets {code(cfg.lora_targets)}"
                  + (f", base held in {cfg.quantize} (QLoRA)" if cfg.quantize != "none" else ""))
    else:
        method = "full fine-tuning (every weight)"
    length = f"{cfg.max_steps} optimizer steps" if cfg.max_steps else f"{cfg.epochs:g} epochs"
    lines = ["## Training", f"- Method: {method}",
             f"- Learning rate {cfg.learning_rate:g} ({cfg.lr_scheduler}, {cfg.warmup_steps} warm-up steps), "
             f"weight decay {cfg.weight_decay:g}, gradient clipping {cfg.max_grad_norm:g}",
             f"- {length}, batch size {cfg.batch_size}, max_seq_len {cfg.max_seq_len}, seed {cfg.seed}",
             f"- Trained on: {'the assistant turns only' if cfg.train_on == 'assistant' else 'every token'}"]
    if meta["trainable_params"] is not None and meta["params"]:
        lines.append(f"- Trainable parameters: {meta['trainable_params']:,} of {meta['params']:,}")
    mitigations = [f"{name} {value:g}" for name, value in (("replay_fraction", cfg.replay_fraction),
                   ("kl_beta", cfg.kl_beta), ("l2sp_alpha", cfg.l2sp_alpha)) if value]
    if mitigations:
        lines.append(f"- Against forgetting: {', '.join(mitigations)}")
    return "\n".join(lines)


def _results_section(cfg, rows, step):
    evals = [r for r in rows if r["kind"] == "eval" and (step is None or r["step"] <= step)]
    lines = ["## Results"]
    if evals:
        best = min(evals, key=lambda r: r["val_loss"])
        at = lambda r: f"{_num(r['val_loss'])} (step {r['step']})"  # noqa: E731
        lines.append(f"- Validation loss (mean per answer token): first {at(evals[0])}, best {at(best)}, "
                     f"last {at(evals[-1])}")
    else:
        lines.append("- Validation loss: not measured" + (" (val_fraction=0)" if not cfg.val_fraction else ""))
    probes = [r for r in rows if r["kind"] == "probe" and (step is None or r["step"] <= step)]
    if not cfg.probe:
        lines.append("- Forgetting: not measured, the forgetting probe was off for this run (probe=False); how much "
                     "general skill the model lost is unknown.")
    elif not probes:
        lines.append("- Forgetting: the probe was on but recorded no result up to this step.")
    else:
        row = probes[-1]
        s = row["probe"]
        # words made here from the line's typed numbers, never its own text (a run folder may come from anyone)
        paired = (f"{verdict(s['change'], s['change_low'], s['change_high'])} in general multiple-choice accuracy "
                  f"(change {points(s['change'], s['change_low'], s['change_high'])}, n={s['n']})"
                  + (f", judgement: {s['judgement']}" if s.get("judgement") in JUDGEMENTS else "") + "; "
                  if None not in (s.get("change"), s.get("change_low"), s.get("change_high")) else "")
        lines.append(f"- Forgetting, measured by ftnb's probe at step {row['step']} against the base model: {paired}"
                     f"retention {retention_text(s)}, "
                     f"KL from the base {_num(s['kl'])} nats per token, general-text perplexity {_num(s['ppl'], '.2f')}"
                     f" (base {_num(s['ppl_base'], '.2f')}), multiple-choice answers flipped: "
                     f"{len(s['right_to_wrong'])} right to wrong, {len(s['wrong_to_right'])} wrong to right. "
                     "Retention is the probe's multiple-choice accuracy divided by the base model's (100%: nothing "
                     "forgotten that the probe can see)."
                     + (f" The probe did not run at step {step}: these weights' own forgetting was not measured."
                        if step is not None and row["step"] != step else "") + " The probe's own summary:")
        try:
            lines.append("\n" + block(format_summary(s)))
        except (TypeError, ValueError, KeyError):  # a probe line with fields missing
            lines.append("\n(the probe's line is incomplete)")
    return "\n".join(lines)


def _upload_section(kind, step, checkpoint, status, check):
    what = {"adapter": "The LoRA adapter", "merged": "The LoRA adapter merged into the base weights",
            "model": "The fine-tuned model"}[kind]
    total = status.get("total_steps")
    when = f"after step {step}" + (f" of {total}" if total else "")
    if checkpoint:
        when += " (a checkpoint" + (", the best within the forgetting budget)" if status.get("best_checkpoint") == step
                                    else ")")
    elif status.get("state") == "finished":
        when += " (the run's final weights)"
    lines = ["## This upload", f"- {what} {when}, with the tokenizer and chat template it was trained with."]
    if check:
        lines.append(f"- Verified after merging: its logits differ from the tuned model's by at most "
                     f"{_num(check.get('max_logit_gap'), '.2g')} on {len(check.get('prompts') or [])} prompts "
                     f"(the tuning itself moves them by {_num(check.get('base_vs_tuned_gap'), '.2g')}).")
    return "\n".join(lines)


def _versions_section(meta):
    names = [(k, meta[k]) for k in ("ftnb", "torch", "transformers", "peft") if meta[k]]
    return "## Versions\n" + ", ".join(f"{k} {code(v, 40)}" for k, v in names) if names else ""


def _usage_section(kind, base, repo):
    lines = ["## How to use", "```python"]
    if kind == "adapter":
        base_path = base["base_model"] or "path/to/the/base/model"
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{base_path}")',
                  f'model = PeftModel.from_pretrained(base, "{repo}")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo}")']
    lines += [f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "",
              'messages = [{"role": "user", "content": "Hello!"}]',
              "text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
              'inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)',
              "out = model.generate(**inputs, max_new_tokens=64)",
              'print(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))', "```"]
    if kind == "adapter" and not base["base_model"]:
        lines.append("The base is not on the Hub: load the folder it was trained on, or use a merged upload.")
    return "\n".join(lines)
