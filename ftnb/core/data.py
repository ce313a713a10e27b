"""Reading examples from files and Python objects, detecting their format, normalising them to chat messages.

Every row that cannot be used becomes a `RowProblem` (row number as the user sees it, the field, the reason) in the
`DataReport`; nothing is silently dropped, and only a source with zero usable rows is an error.
Supported formats: OpenAI `messages`, ShareGPT `conversations`, prompt/completion, Alpaca and plain `text`.
"""
import csv
import hashlib
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant"}
# the columns each format reads, by their role in the format; `columns=` maps these names to the user's
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion", "system"),
    "alpaca": ("instruction", "input", "output", "system"),
    "text": ("text",),
}
PAIR_ALIASES = (("prompt", "completion"), ("prompt", "response"), ("question", "answer"), ("input", "output"))
MAX_LINE_BYTES = 64 * 2**20
MAX_PROBLEMS = 1000  # kept row by row in a report (all are counted)
FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
              ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Example:
    """One training example: chat `messages`, or `text` for continued pre-training. `row` points into the source."""
    messages: list = None
    text: str = None
    row: int = 0

    def to_record(self):
        return {"messages": self.messages} if self.messages is not None else {"text": self.text}


@dataclass
class RowProblem(Exception):
    row: int
    field: str
    reason: str

    def __str__(self):
        return f"row {self.row}, field {self.field!r}: {self.reason}"


@dataclass
class DataReport:
    source: str
    format: str = "auto"
    rows: int = 0
    usable: int = 0
    truncated: int = 0
    problems: list = field(default_factory=list)  # the first MAX_PROBLEMS; `bad` counts them all
    bad: int = 0
    columns: list = field(default_factory=list)  # the fields seen in the first rows (for a column mapping)
    row_unit: str = "row"  # "line" for JSONL and CSV: the number a text editor shows

    def add_problem(self, problem):
        self.bad += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def summary(self, max_problems=50):
        return {"source": self.source, "format": self.format, "rows": self.rows, "usable": self.usable,
                "bad": self.bad, "truncated": self.truncated, "row_unit": self.row_unit,
                "problems": [vars(p) for p in self.problems[:max_problems]]}

    def __str__(self):
        lines = [f"{self.source}: {self.usable} of {self.rows} rows usable (format: {self.format})"
                 + (f", {self.truncated} truncated to max_seq_len" if self.truncated else "")]
        lines += [f"  {self.row_unit} {p.row}, {p.field}: {p.reason}" for p in self.problems[:50]]
        if self.bad > 50:
            lines.append(f"  ... and {self.bad - 50} more")
        return "\n".join(lines)


class ChatData:
    """Normalised examples of one source plus the report of what was wrong with the rest."""

    def __init__(self, examples, report):
        self.examples, self.report = examples, report
        self.tokenized = None  # batching.Tokenized per example, once tokenized

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    def __repr__(self):
        return f"<ChatData {self.report.source}: {len(self)} examples, {self.report.bad} bad rows>"

    def require_usable(self):
        if not self.examples:
            why = "; ".join(str(p) for p in self.report.problems[:3]) or "it holds no rows"
            raise DataError(f"no usable examples ({why})", source=self.report.source)
        return self

    def split(self, val_fraction, seed=0):
        """(train, val) ChatData, a seeded shuffle; at least one example on each side when val_fraction > 0."""
        idx = list(range(len(self)))
        random.Random(seed).shuffle(idx)
        n_val = 0 if val_fraction <= 0 or len(idx) < 2 else min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        parts = []
        for chosen in (sorted(idx[n_val:]), sorted(idx[:n_val])):
            part = ChatData([self.examples[i] for i in chosen], self.report)
            if self.tokenized is not None:
                part.tokenized = [self.tokenized[i] for i in chosen]
            parts.append(part)
        return tuple(parts)

    def to_jsonl(self):
        return "".join(json.dumps(e.to_record(), ensure_ascii=False) + "\n" for e in self.examples)

    def content_hash(self):
        return hashlib.sha256(self.to_jsonl().encode("utf-8", "surrogatepass")).hexdigest()


# -- reading sources: each yields (row_number, record) or (row_number, RowProblem) --------------------------------

def _read_jsonl(path):
    with open(path, "rb") as fh:
        n = 0
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            n += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the enormous line
                    raw = fh.readline(MAX_LINE_BYTES)
                yield n, RowProblem(n, "-", f"line longer than {MAX_LINE_BYTES:,} bytes")
                continue
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, RowProblem(n, "-", f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            yield n, _parse_json(text, n)


def _parse_json(text, n):
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return RowProblem(n, "-", f"invalid JSON: {e.msg} at column {e.colno}")
    except RecursionError:
        return RowProblem(n, "-", "JSON nested too deeply")
    return obj


def _read_json(path):
    try:
        raw = Path(path).read_bytes()
        obj = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"not valid UTF-8 (byte offset {e.start})", source=path) from None
    except json.JSONDecodeError as e:
        if "\n{" in raw[:1_000_000].decode("utf-8", "replace"):
            yield from _read_jsonl(path)  # a JSONL file named .json
            return
        raise DataError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", source=path) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", source=path) from None
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if "train" in obj and isinstance(obj["train"], list):
            obj = obj["train"]
        elif len(lists) == 1 and lists[0] in ("data", "examples", "rows", "records"):
            obj = obj[lists[0]]
        else:
            obj = [obj]
    if not isinstance(obj, list):
        raise DataError(f"expected a list of examples, found {type(obj).__name__}", source=path)
    for i, rec in enumerate(obj):
        yield i + 1, rec


def _read_csv(path):
    delimiter = "\t" if str(path).endswith(".tsv") else ","
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"cannot read the CSV header: {e}", source=path) from None
        header = [h.strip() for h in header]
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield start, RowProblem(start, "-", f"malformed CSV: {e}")
                continue
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                yield start, RowProblem(start, "-", f"has {len(cells)} fields but the header has {len(header)}")
                continue
            yield start, dict(zip(header, cells))


def _read_parquet(path):
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"not a readable Parquet file ({e})", source=path) from None
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            n += 1
            yield n, rec


def _read_hub(name):
    import datasets
    repo, _, split = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, split=split or "train")
    except Exception as e:
        raise DataError(f"could not load the Hub dataset {repo!r} (split {split or 'train'!r}): {e}. Offline? "
                        "Save it to a file where there is network and pass the file.", source=name) from None
    for i, rec in enumerate(ds):
        yield i + 1, rec


def _records(source):
    """(label, row_unit, iterator of (row, record|RowProblem)) for any supported source."""
    if isinstance(source, (str, Path)):
        p = Path(source).expanduser()
        if p.is_file():
            kind = FILE_KINDS.get(p.suffix.lower())
            if kind is None:
                raise DataError(f"unsupported file type {p.suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet", source=p)
            reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind]
            return str(p), ("line" if kind in ("jsonl", "csv") else "row"), reader(p)
        if p.is_dir() or p.suffix.lower() in FILE_KINDS or str(source).startswith((".", "/", "~")):
            raise DataError("file not found", source=source)
        return str(source), "row", _read_hub(str(source))
    try:
        import pandas as pd
        if isinstance(source, pd.DataFrame):
            return "DataFrame", "row", ((i + 1, r) for i, r in enumerate(source.to_dict("records")))
    except ImportError:
        pass
    if type(source).__module__.startswith("datasets"):
        if hasattr(source, "keys") and "train" in source.keys():
            source = source["train"]
        return "datasets.Dataset", "row", ((i + 1, r) for i, r in enumerate(source))
    if isinstance(source, dict):
        source = [source]
    if isinstance(source, (list, tuple)):
        return "list", "row", ((i + 1, r if not isinstance(r, str) else {"text": r}) for i, r in enumerate(source))
    raise DataError(f"cannot read examples from a {type(source).__name__}; pass a file path, a Hub dataset name, "
                    "a list of dicts, a pandas DataFrame or a datasets.Dataset")


# -- format detection and normalisation ---------------------------------------------------------------------------

def detect_format(keys, columns=None):
    """(format, column map) from a set of record keys and the user's explicit mapping."""
    columns = dict(columns or {})
    for fmt, cols in FORMAT_COLUMNS.items():
        if columns and set(columns) <= set(cols) and cols[0] in columns:
            return fmt, columns
    keys = set(keys) | set(columns.values())
    if "messages" in keys:
        return "messages", {"messages": "messages", **columns}
    if "conversations" in keys:
        return "sharegpt", {"conversations": "conversations", **columns}
    if {"instruction", "output"} <= keys:
        return "alpaca", {**{c: c for c in FORMAT_COLUMNS["alpaca"]}, **columns}
    for p, c in PAIR_ALIASES:
        if {p, c} <= keys:
            return "prompt_completion", {"prompt": p, "completion": c, "system": "system", **columns}
    if "text" in keys:
        return "text", {"text": "text", **columns}
    return None, columns


def _text(value, where):
    if value is None:
        raise RowProblem(0, where, "missing")
    if not isinstance(value, str):
        if isinstance(value, float) and value != value:
            raise RowProblem(0, where, "empty (missing cell)")
        raise RowProblem(0, where, f"must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowProblem(0, where, "undecodable text (invalid UTF-8 or a lone surrogate)") from None
    if not value.strip():
        raise RowProblem(0, where, "empty content")
    return value


def _content(value, where):
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for j, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise RowProblem(0, f"{where}[{j}]", "only text content parts are supported")
            parts.append(_text(part.get("text"), f"{where}[{j}].text"))
        value = "".join(parts)
    return _text(value, where)


def check_turns(messages, name="messages"):
    """Raise RowProblem unless: optional system, then user/assistant alternating, ending with the assistant."""
    expected = "user"
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system":
            if i != 0:
                raise RowProblem(0, f"{name}[{i}].role", "a system message may only come first")
            continue
        if role != expected:
            raise RowProblem(0, f"{name}[{i}].role", f"roles not alternating: expected {expected!r}, found {role!r}")
        expected = "assistant" if role == "user" else "user"
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem(0, name, "missing assistant turn")
    if messages[-1]["role"] != "assistant":
        raise RowProblem(0, f"{name}[{len(messages) - 1}].role", "the last turn must be the assistant's")


def _turns(value, name, role_key, content_key, role_map):
    if not isinstance(value, list) or not value:
        raise RowProblem(0, name, "missing" if value is None else f"must be a non-empty list of turns, "
                                                                  f"not {type(value).__name__}")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowProblem(0, f"{name}[{i}]", f"must be an object with {role_key!r} and {content_key!r}")
        role = turn.get(role_key)
        if not isinstance(role, str) or role.lower() not in role_map:
            raise RowProblem(0, f"{name}[{i}].{role_key}", f"unknown role {role!r} (expected one of "
                                                          f"{', '.join(sorted(set(role_map)))})")
        out.append({"role": role_map[role.lower()], "content": _content(turn.get(content_key), f"{name}[{i}].{content_key}")})
    check_turns(out, name)
    return out


def normalise(rec, fmt, cols):
    """An Example from one record, or raise RowProblem."""
    if not isinstance(rec, dict):
        raise RowProblem(0, "-", f"expected an object with fields, got {type(rec).__name__}")
    if fmt == "messages":
        c = cols["messages"]
        return Example(messages=_turns(rec.get(c), c, "role", "content", {r: r for r in ROLES}))
    if fmt == "sharegpt":
        c = cols["conversations"]
        turns = rec.get(c)
        first = turns[0] if isinstance(turns, list) and turns else None
        keys = ("role", "content") if isinstance(first, dict) and "role" in first else ("from", "value")
        return Example(messages=_turns(turns, c, *keys, SHAREGPT_ROLES))
    if fmt == "text":
        return Example(text=_text(rec.get(cols["text"]), cols["text"]))
    if fmt == "prompt_completion":
        user, answer = _text(rec.get(cols["prompt"]), cols["prompt"]), _text(rec.get(cols["completion"]), cols["completion"])
    elif fmt == "alpaca":
        user = _text(rec.get(cols["instruction"]), cols["instruction"])
        extra = rec.get(cols["input"])
        if isinstance(extra, str) and extra.strip():
            user = f"{user}\n\n{_text(extra, cols['input'])}"
        answer = _text(rec.get(cols["output"]), cols["output"])
    else:
        raise ValueError(fmt)
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    system = rec.get(cols.get("system", "system"))
    if isinstance(system, str) and system.strip():
        msgs.insert(0, {"role": "system", "content": _text(system, cols.get("system", "system"))})
    return Example(messages=msgs)


def iter_examples(source, data_format="auto", columns=None, report=None):
    """Yield the usable Examples of `source` one at a time, filling `report` (a DataReport) as it goes: a file of
    any size streams through in constant memory."""
    label, unit, rows = _records(source)
    report = report if report is not None else DataReport(label)
    report.source, report.row_unit = label, unit
    if data_format not in ("auto", *FORMAT_COLUMNS):
        raise DataError(f"unknown data_format {data_format!r}; choose from auto, {', '.join(FORMAT_COLUMNS)}", source=label)
    fmt, cols = (None, dict(columns or {})) if data_format == "auto" else \
        (data_format, {**{c: c for c in FORMAT_COLUMNS.get(data_format, ())}, **(columns or {})})
    pending, seen_keys = [], set()

    def take(n, rec):
        report.rows += 1
        if isinstance(rec, RowProblem):
            report.add_problem(rec)
            return None
        try:
            ex = normalise(rec, fmt, cols)
        except RowProblem as p:
            report.add_problem(RowProblem(n, p.field, p.reason))
            return None
        ex.row = n
        report.usable += 1
        return ex

    for n, rec in rows:
        if len(seen_keys) < 200 and report.rows + len(pending) < 50 and isinstance(rec, dict):
            seen_keys |= set(map(str, rec))
        if fmt is None:  # detect from the keys of the first rows
            pending.append((n, rec))
            if len(pending) < 50:
                continue
            fmt, cols = _detected(seen_keys, cols, label)
            yield from filter(None, (take(*item) for item in pending))
            pending = []
        else:
            ex = take(n, rec)
            if ex is not None:
                yield ex
    if pending or fmt is None:
        if not pending:
            raise DataError("no rows found", source=label)
        fmt, cols = _detected(seen_keys, cols, label)
        yield from filter(None, (take(*item) for item in pending))
    report.format, report.columns = fmt, sorted(seen_keys)  # once, not per row: seen_keys stops growing early


def load_examples(source, data_format="auto", columns=None):
    """Read `source` (file, Hub name, list of dicts, DataFrame, datasets.Dataset) into ChatData with a report."""
    report = DataReport("")
    examples = list(iter_examples(source, data_format, columns, report))
    return ChatData(examples, report)


def validate(source, data_format="auto", columns=None):
    """The DataReport of `source` without keeping its examples (a 1 GB JSONL file streams through)."""
    report = DataReport("")
    for _ in iter_examples(source, data_format, columns, report):
        pass
    return report


def _detected(keys, cols, label):
    fmt, cols = detect_format(keys, cols)
    if fmt is None:
        found = ", ".join(sorted(map(str, keys))[:20]) or "none"
        raise DataError(f"cannot tell the format from the columns ({found}); expected 'messages', 'conversations', "
                        "'prompt'+'completion', 'instruction'+'output' or 'text', or pass a column mapping such as "
                        "columns={'prompt': 'question', 'completion': 'answer'}", source=label)
    return fmt, cols


def bundled(name):
    """Path of a data file shipped with ftnb (ftnb/resources/)."""
    return Path(__file__).resolve().parent.parent / "resources" / name


def load_examples_from_bytes(data, suffix, label, **kw):
    """Examples from the bytes of an uploaded file; `suffix` (".jsonl", ".csv", ...) says how to read them."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"upload{suffix}"
        p.write_bytes(data)
        out = load_examples(p, **kw)
    out.report.source = label
    return out

