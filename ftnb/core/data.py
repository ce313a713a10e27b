"""Examples from any source: rows read (sources.py), their format detected and each normalised (formats.py), and a
DataReport of everything that happened on the way.

Every row that cannot be used becomes a `RowProblem` (row number as the user sees it, the field, the reason) in the
`DataReport`; nothing is silently dropped, and only a source with zero usable rows is an error.
"""
import hashlib
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError, RowProblem
from .formats import FORMAT_COLUMNS, detect_format, normalise
from .mojibake import check as check_mojibake
from .sources import records, text_encoding

MAX_PROBLEMS = 1000  # kept row by row in a report (all are counted)


@dataclass
class RowNote:
    """Something done to a row that is still used (or dropped for a reason that is not an error): `row` as the user
    counts, the `field`, what happened."""
    row: int
    field: str
    detail: str


@dataclass
class DataReport:
    """What happened to every row of a source: read, how, kept, fixed, cut or rejected, and why."""
    source: str
    format: str = "auto"
    rows: int = 0
    usable: int = 0
    truncated: int = 0
    problems: list = field(default_factory=list)  # the first MAX_PROBLEMS; `bad` counts them all
    bad: int = 0
    columns: list = field(default_factory=list)  # the fields seen in the first rows (for a column mapping)
    row_unit: str = "row"  # "line" for JSONL and CSV: the number a text editor shows
    detected: str = ""  # how the format was told: "columns Questions and Answers (prompt/completion)"
    encoding: str = ""  # how the file was decoded: "utf-8", "utf-8 with BOM", "utf-16-le with BOM", ...
    ignored_columns: list = field(default_factory=list)  # columns no part of the format reads
    overlong: list = field(default_factory=list)  # RowNotes: rows longer than max_seq_len and what was done
    duplicates: list = field(default_factory=list)  # RowNotes: exact copies of an earlier row (detail names it)
    mojibake: list = field(default_factory=list)  # RowNotes: text that was decoded wrongly somewhere, and if fixed
    notes: list = field(default_factory=list)  # other things worth saying, one line each (e.g. the tool format)

    def add_problem(self, problem):
        problem.unit = self.row_unit
        self.bad += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def note(self, kind, row, field, detail):
        """Record a RowNote in the list `kind` ("overlong", "duplicates", "mojibake")."""
        notes = getattr(self, kind)
        if len(notes) < MAX_PROBLEMS:
            notes.append(RowNote(row, field, detail))

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


def iter_examples(source, data_format="auto", columns=None, report=None, fix_encoding=True):
    """Yield the usable Examples of `source` one at a time, filling `report` (a DataReport) as it goes: a file of
    any size streams through in constant memory. `fix_encoding` repairs mojibake (reported either way)."""
    label, unit, rows = records(source)
    report = report if report is not None else DataReport(label)
    report.source, report.row_unit, report.encoding = label, unit, text_encoding(source)
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
        rec, mojibake = check_mojibake(rec, fix_encoding)
        for where, detail in mojibake:
            report.note("mojibake", n, where, detail)
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


def load_examples(source, data_format="auto", columns=None, fix_encoding=True):
    """Read `source` (file, Hub name, list of dicts, DataFrame, datasets.Dataset) into ChatData with a report."""
    report = DataReport("")
    examples = list(iter_examples(source, data_format, columns, report, fix_encoding))
    return ChatData(examples, report)


def validate(source, data_format="auto", columns=None, fix_encoding=True):
    """The DataReport of `source` without keeping its examples (a 1 GB JSONL file streams through)."""
    report = DataReport("")
    for _ in iter_examples(source, data_format, columns, report, fix_encoding):
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

