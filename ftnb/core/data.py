"""Examples from any source: rows read (sources.py), their format detected and each normalised (formats.py), and a
DataReport of everything that happened on the way.

Every row that cannot be used becomes a `RowProblem` (row number as the user sees it, the field, the reason) in the
`DataReport`; nothing is silently dropped, and only a source with zero usable rows is an error.
"""
import hashlib
import itertools
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError, RowProblem
from .formats import FORMAT_COLUMNS, FORMAT_NAMES, ignored_columns, normalise, resolve_format
from .mojibake import check as check_mojibake
from .sources import records, text_encoding

MAX_PROBLEMS = 1000  # kept row by row in a report (all are counted)
HEAD_ROWS = 50  # the rows whose columns tell the format


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

    def summary(self, max_rows=MAX_PROBLEMS):
        """Everything as plain data (data.json keeps this whole)."""
        rows = lambda notes: [vars(n) for n in notes[:max_rows]]  # noqa: E731
        return {"source": self.source, "format": self.format, "detected": self.detected, "encoding": self.encoding,
                "rows": self.rows, "usable": self.usable, "bad": self.bad, "truncated": self.truncated,
                "row_unit": self.row_unit, "ignored_columns": self.ignored_columns, "problems": rows(self.problems),
                "overlong": rows(self.overlong), "duplicates": rows(self.duplicates), "mojibake": rows(self.mojibake),
                "notes": list(self.notes)}

    def render(self, limit=5, full_list=None):
        """The report as a few lines of text: the source, its format and how it was told, what was kept, and each
        kind of trouble with its first `limit` rows; `full_list` says where the whole list is."""
        unit = self.row_unit
        rows = lambda n: f"{n} row{'' if n == 1 else 's'}"  # noqa: E731
        how = "; ".join(x for x in (FORMAT_NAMES.get(self.format, self.format), self.detected, self.encoding) if x)
        lines = [f"{self.source}: {self.usable} of {self.rows} rows kept ({how})"]

        def section(title, count, items):
            if not count:
                return
            lines.append(f"  {title}:")
            lines.extend(f"    {unit} {text}" for text in items[:limit])
            if count > limit:
                lines.append(f"    ... and {count - limit} more" + (f" (all in {full_list})" if full_list else ""))
        section(f"{self.bad} rejected", self.bad,
                [f"{p.row}{'' if p.field in ('-', '') else ', ' + p.field}: {p.reason}" for p in self.problems])
        section(f"{rows(len(self.overlong))} longer than max_seq_len", len(self.overlong),
                [f"{n.row}: {n.detail}" for n in self.overlong])
        section(f"{rows(len(self.duplicates))} repeating an earlier one (kept; copies are never split between "
                "training and validation)", len(self.duplicates), [f"{n.row}: {n.detail}" for n in self.duplicates])
        section(f"{rows(len(self.mojibake))} with mojibake (text decoded with the wrong encoding somewhere)",
                len(self.mojibake), [f"{n.row}, {n.field}: {n.detail}" for n in self.mojibake])
        if self.ignored_columns:
            lines.append(f"  ignored columns: {', '.join(self.ignored_columns)}")
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self):
        return self.render(limit=50)


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
        """(train, val) ChatData, a seeded shuffle; at least one example on each side when val_fraction > 0. Copies
        of one example stay together, so validation never holds an example that is also trained on."""
        groups = {}
        for i, ex in enumerate(self.examples):
            groups.setdefault(_identity(ex), []).append(i)
        order = list(groups.values())
        random.Random(seed).shuffle(order)
        n_val = 0 if val_fraction <= 0 or len(order) < 2 else \
            min(len(self) - 1, max(1, round(len(self) * val_fraction)))
        val = []
        for group in order:
            if len(val) >= n_val or len(val) + len(group) >= len(self):
                break
            val += group
        parts = []
        for chosen in (sorted(set(range(len(self))) - set(val)), sorted(val)):
            part = ChatData([self.examples[i] for i in chosen], self.report)
            if self.tokenized is not None:
                part.tokenized = [self.tokenized[i] for i in chosen]
            parts.append(part)
        return tuple(parts)

    def find_duplicates(self):
        """Note every example that is an exact copy of an earlier one in the report (they are kept)."""
        first = {}
        for ex in self.examples:
            seen = first.setdefault(_identity(ex), ex.row)
            if seen != ex.row:
                self.report.note("duplicates", ex.row, "-", f"repeats {self.report.row_unit} {seen}")
        return self

    def to_jsonl(self):
        return "".join(json.dumps(e.to_record(), ensure_ascii=False) + "\n" for e in self.examples)

    def content_hash(self):
        return hashlib.sha256(self.to_jsonl().encode("utf-8", "surrogatepass")).hexdigest()


def iter_examples(source, data_format="auto", columns=None, report=None, fix_encoding=True):
    """Yield the usable Examples of `source` one at a time, filling `report` (a DataReport) as it goes: a file of
    any size streams through in constant memory. The format is told from the columns of the first rows;
    `fix_encoding` repairs mojibake (reported either way)."""
    label, unit, rows = records(source)
    report = report if report is not None else DataReport(label)
    report.source, report.row_unit, report.encoding = label, unit, text_encoding(source)
    if data_format not in ("auto", *FORMAT_COLUMNS):
        raise DataError(f"unknown data_format {data_format!r}; choose from auto, {', '.join(FORMAT_COLUMNS)}", source=label)
    rows = iter(rows)
    head = list(itertools.islice(rows, HEAD_ROWS))
    keys = list(dict.fromkeys(str(k) for _, rec in head if isinstance(rec, dict) for k in rec))[:200]
    if not keys and data_format == "auto":
        unreadable = [str(rec) for _, rec in head if isinstance(rec, RowProblem)][:3]
        raise DataError(f"no row could be read ({'; '.join(unreadable)})" if unreadable else "no rows found",
                        source=label)
    fmt, cols, how = resolve_format(keys, data_format, columns, label)
    report.format, report.detected, report.columns = fmt, how, keys
    report.ignored_columns = ignored_columns(keys, fmt, cols)

    for n, rec in itertools.chain(head, rows):
        report.rows += 1
        if isinstance(rec, RowProblem):
            report.add_problem(rec)
            continue
        rec, mojibake = check_mojibake(rec, fix_encoding)
        for where, detail in mojibake:
            report.note("mojibake", n, where, detail)
        try:
            ex = normalise(rec, fmt, cols)
        except RowProblem as p:
            report.add_problem(RowProblem(n, p.field, p.reason))
            continue
        ex.row = n
        report.usable += 1
        yield ex


def load_examples(source, data_format="auto", columns=None, fix_encoding=True):
    """Read `source` (file, Hub name, list of dicts, DataFrame, datasets.Dataset) into ChatData with a report
    (exact duplicates noted in it)."""
    report = DataReport("")
    examples = list(iter_examples(source, data_format, columns, report, fix_encoding))
    return ChatData(examples, report).find_duplicates()


def validate(source, data_format="auto", columns=None, fix_encoding=True):
    """The DataReport of `source` without keeping its examples (a 1 GB JSONL file streams through)."""
    report = DataReport("")
    for _ in iter_examples(source, data_format, columns, report, fix_encoding):
        pass
    return report


def peek_columns(source):
    """The column names of a source's first rows (for a mapping after its format could not be told); [] when even
    they cannot be read."""
    try:
        _, _, rows = records(source)
        head = itertools.islice(rows, HEAD_ROWS)
        return list(dict.fromkeys(str(k) for _, rec in head if isinstance(rec, dict) for k in rec))[:200]
    except (DataError, OSError):
        return []


def _identity(example):
    """What makes two examples the same example."""
    return json.dumps(example.to_record(), sort_keys=True, ensure_ascii=False)


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

