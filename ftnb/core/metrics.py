"""metrics.jsonl, the run's curves: this module alone writes it and reads it.

One JSON object per line, each with its `kind` and `step`:

    train   loss, lr, grad_norm, epoch, tokens, targets, tokens_per_s, elapsed_s, train_s [, reg_loss, mem_gb,
            skipped_steps (fp16: optimizer steps skipped so far for overflowing gradients)]
    eval    val_loss, epoch, elapsed_s, samples: [{prompt, answer}]
    probe   probe: the forgetting summary of probe.summarize

A line is appended with one write, so a crash leaves at most a torn last line. A run folder may come from anyone,
so every line is typed as it is read: numbers are numbers, strings are strings, the step is a whole number. A line
that is not a line of its kind (torn, not an object, no step, a field of the wrong type, nested too deep, too long)
is skipped and counted, never an exception in a viewer. Lines written before lines had a kind are known by their
fields. No torch here: the Jupyter server reads runs through this module.
"""
import json
import math
import os

KINDS = ("train", "eval", "probe")
MAX_LINE_BYTES = 1 << 20  # a longer line is skipped unread (sample answers are a few hundred bytes)
MAX_POINTS = 2000  # points drawn per curve; the file keeps every line
MAX_TEXT = 20000  # characters kept of a string field (a sample answer, a question id)


class Skip(ValueError):
    """A line that is not a metrics line: skipped and counted."""


# -- types ------------------------------------------------------------------------------------------------------------

def number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Skip(f"{v!r:.40} is not a number")
    return v


def whole(v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise Skip(f"{v!r:.40} is not a whole number")
    return v


def boolean(v):
    if not isinstance(v, bool):
        raise Skip(f"{v!r:.40} is not true or false")
    return v


def text(v):
    if not isinstance(v, str):
        raise Skip(f"{v!r:.40} is not a string")
    return v[:MAX_TEXT]


def one_of(*values):
    """One of a few known strings."""
    def check(v):
        if v not in values or not isinstance(v, str):
            raise Skip(f"{v!r:.40} is none of {', '.join(values)}")
        return v
    return check


def nullable(kind):
    return lambda v: None if v is None else kind(v)


def list_of(kind, limit=1000):
    def check(v):
        if not isinstance(v, list):
            raise Skip(f"{v!r:.40} is not a list")
        return [kind(x) for x in v[:limit]]
    return check


def mapping_of(kind, limit=100):
    """A checker for an object whose keys are names and whose values are `kind` (e.g. per-category results)."""
    def check(v):
        if not isinstance(v, dict):
            raise Skip(f"{v!r:.40} is not an object")
        return {text(k): kind(x) for k, x in list(v.items())[:limit]}
    return check


def record(fields, required=(), lenient=False):
    """A checker for an object: the `fields` it knows ({name: checker}), typed; other keys dropped; a missing
    required field skips it, a missing optional one reads as None. `lenient`: an optional field of the wrong type
    reads as None too, instead of skipping the whole object."""
    def check(v):
        if not isinstance(v, dict):
            raise Skip(f"{v!r:.40} is not an object")
        missing = [k for k in required if k not in v]
        if missing:
            raise Skip(f"no {missing[0]}")
        return {k: _field(fn, v, k, lenient and k not in required) for k, fn in fields.items()}
    return check


def _field(check, obj, key, lenient):
    if key not in obj:
        return None
    if not lenient:
        return check(obj[key])
    try:
        return check(obj[key])
    except Skip:
        return None


CATEGORY = record({"n": whole, "acc": number, "acc_base": number, "change": number, "change_low": number,
                   "change_high": number, "verdict": text}, required=("n", "acc", "acc_base"), lenient=True)
SAMPLE = record({"prompt": text, "answer": text}, required=("prompt", "answer"))
PROBE = record({
    "acc": number, "acc_base": number, "acc_norm": number, "n": whole, "acc_low": number, "acc_high": number,
    "retention": number, "retention_low": number, "retention_high": number, "kl": number, "ppl": number,
    "ppl_base": number, "ppl_change": number, "right_to_wrong": list_of(text), "wrong_to_right": list_of(text),
    "seconds": number, "gen_ok": whole, "gen_ok_base": whole, "gen_n": whole, "change": number,
    "change_low": number, "change_high": number, "p_value": number, "verdict": text,
    "categories": mapping_of(CATEGORY), "judgement": text, "signals": list_of(text, limit=20),
}, required=("acc", "acc_base", "acc_low", "acc_high"), lenient=True)
TRAIN_NUMBERS = ("loss", "lr", "grad_norm", "epoch", "tokens", "targets", "tokens_per_s", "elapsed_s", "train_s",
                 "reg_loss", "mem_gb", "skipped_steps")
SCHEMAS = {
    "train": record({"step": whole, **{k: nullable(number) for k in TRAIN_NUMBERS}}, required=("step", "loss")),
    "eval": record({"step": whole, "val_loss": number, "epoch": nullable(number), "elapsed_s": nullable(number),
                    "samples": nullable(list_of(SAMPLE, limit=50))}, required=("step", "val_loss")),
    "probe": record({"step": whole, "probe": PROBE}, required=("step", "probe")),
}


def typed(obj):
    """A metrics line as written (a dict) typed by its kind: {"kind", "step", ...}. Raises Skip."""
    if not isinstance(obj, dict):
        raise Skip("not an object")
    kind = obj.get("kind")
    if kind is None:  # a line from before kinds were written: known by its fields
        kind = "probe" if "probe" in obj else "eval" if "val_loss" in obj else "train"
    if kind not in SCHEMAS:
        raise Skip(f"unknown kind {kind!r:.40}")
    row = SCHEMAS[kind](obj)
    if kind == "train" and row["loss"] is None:
        raise Skip("no loss")
    if kind == "eval":
        row["samples"] = row["samples"] or []
    if kind == "probe":
        row["probe"]["right_to_wrong"] = row["probe"]["right_to_wrong"] or []
        row["probe"]["wrong_to_right"] = row["probe"]["wrong_to_right"] or []
    row["kind"] = kind
    return row


def parse(raw):
    """One line (bytes or str) as a typed row. Raises Skip."""
    if len(raw) > MAX_LINE_BYTES:
        raise Skip("line too long")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: a line nested thousands deep
        raise Skip(f"not JSON ({type(e).__name__})") from None
    return typed(obj)


# -- writing ----------------------------------------------------------------------------------------------------------

def line(kind, step, data):
    """The text of one line (with its newline)."""
    assert kind in KINDS, kind
    return json.dumps({"kind": kind, "step": step, **data}, ensure_ascii=False, allow_nan=True) + "\n"


def append(path, kind, step, data):
    text = line(kind, step, data)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)  # one write per line: a crash leaves at most a torn last line, skipped on read


def truncate(path, step, write_text):
    """Keep the lines up to `step` (a resumed run writes the later ones again); odd lines are dropped.
    `write_text(path, text)` writes the file atomically."""
    rows, _ = read(path)
    write_text(path, "".join(line(r["kind"], r["step"], _fields(r)) for r in rows if r["step"] <= step))


def _fields(row):
    return {k: v for k, v in row.items() if k not in ("kind", "step") and v is not None}


# -- reading ----------------------------------------------------------------------------------------------------------

def read(path, tail_bytes=None):
    """(typed rows, number of skipped lines) of the complete lines of `path`. With `tail_bytes`, only the lines
    within the file's last `tail_bytes` bytes (cheap on long histories)."""
    rows, skipped = [], 0
    try:
        with open(path, "rb") as fh:
            if tail_bytes is not None:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - tail_bytes))
                if size > tail_bytes:
                    fh.readline()  # partial first line
            for raw, _ in _lines(fh):
                try:
                    rows.append(parse(raw))
                except Skip:
                    skipped += 1
    except FileNotFoundError:
        pass
    return rows, skipped


def _lines(fh):
    """(line, its size in bytes) of each complete line; stops at a torn last one (a writer mid-append). An
    over-long line is passed on as an empty line of its size, to be skipped, without being held whole in memory."""
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if raw.endswith(b"\n"):
            yield raw, len(raw)
        elif len(raw) <= MAX_LINE_BYTES:
            return  # end of file, or a torn last line
        else:
            size = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(MAX_LINE_BYTES + 1)
                size += len(raw)
            if not raw:
                return
            yield b"", size


def last_values(path, tail_bytes=256 * 1024):
    """(last train row or {}, last val_loss, last probe summary) from the end of the file."""
    last, val, probe = {}, None, None
    for r in read(path, tail_bytes)[0]:
        if r["kind"] == "train":
            last = r
        elif r["kind"] == "eval":
            val = r["val_loss"]
        else:
            probe = r["probe"]
    return last, val, probe


def downsample(x, y, n=MAX_POINTS):
    """At most n points, evenly strided, always keeping the last one."""
    import numpy as np
    if len(x) <= n:
        return np.asarray(x), np.asarray(y)
    idx = np.unique(np.r_[np.linspace(0, len(x) - 1, n).astype(int), len(x) - 1])
    return np.asarray(x)[idx], np.asarray(y)[idx]


class History:
    """The curves of one run as lists, fed by typed rows: from events as they happen, or from metrics.jsonl (whole,
    at a stride for long histories, or the lines added since the last read)."""

    def __init__(self):
        self.train = {"step": [], "loss": [], "lr": [], "grad_norm": []}
        self.val = {"step": [], "val_loss": []}
        self.probe, self.samples, self.last = [], [], {}
        self.skipped = 0  # lines of the file that were not metrics lines
        self.total_steps, self.state, self.error, self.best, self.warning = None, "new", None, None, None  # status

    def add(self, row):
        """A typed row (see `typed`)."""
        kind = row["kind"]
        if kind == "probe":
            self.probe.append((row["step"], row["probe"]))
        elif kind == "eval":
            self.val["step"].append(row["step"])
            self.val["val_loss"].append(row["val_loss"])
            if row["samples"]:
                self.samples = row["samples"]
        else:
            for k in self.train:
                self.train[k].append(row[k])
            self.last = row

    def add_event(self, kind, step, data):
        """An event of the loop in this process (log, eval, probe), through the same types as the file's lines."""
        self.add(typed({"kind": {"log": "train"}.get(kind, kind), "step": step, **data}))

    def _add_raw(self, raw):
        try:
            self.add(parse(raw))
        except Skip:
            self.skipped += 1

    def load(self, path, max_train_lines=4 * MAX_POINTS):
        """Read a whole metrics.jsonl; return the byte offset after its last complete line. A long history (a
        million lines) is read at a stride: every evaluation and probe line, and about max_train_lines train lines
        (the last one always); the file itself keeps every line."""
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            return 0
        end = blob.rfind(b"\n") + 1  # a torn last line (a writer mid-append) waits for the next read
        blob = blob[:end]
        special = {}  # start offset -> line, for every evaluation and probe line (found at C speed, no loop per line)
        for key in (b'"val_loss"', b'"probe"'):
            at = blob.find(key)
            while at != -1:
                start = blob.rfind(b"\n", 0, at) + 1
                stop = blob.find(b"\n", at)
                special[start] = blob[start:stop]
                at = blob.find(key, stop)
        lines = blob.split(b"\n")[:-1]
        stride = max(1, len(lines) // max_train_lines)
        is_train = lambda x: b'"val_loss"' not in x and b'"probe"' not in x  # noqa: E731
        last = next((x for x in reversed(lines) if is_train(x)), None)
        chosen = [x for x in lines[::stride] if is_train(x)]
        if last is not None and (not chosen or chosen[-1] is not last):
            chosen.append(last)
        for raw in chosen + [special[k] for k in sorted(special)]:
            self._add_raw(raw)
        return end

    def read_new(self, path, offset):
        """Add the complete lines after byte `offset`; return the new offset."""
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                for raw, size in _lines(fh):
                    offset += size
                    self._add_raw(raw)
        except FileNotFoundError:
            pass
        return offset

    def series(self, key):
        """(steps, values) of a train curve for drawing: at most MAX_POINTS, a missing value as NaN."""
        return downsample(self.train["step"], [math.nan if v is None else v for v in self.train[key]])
