"""Reading rows from files and Python objects: each source yields (row number, record) or (row number, RowProblem).

Row numbers are what the user sees: the line of a JSONL or CSV file (what a text editor shows), the item of a JSON
array, list or table. Text files are read in the Unicode encoding their first bytes show (decoding.py); a byte that
encoding cannot decode is the problem of its line. Nothing here knows about formats; formats.py turns records into
examples.
"""
import csv
import io
import json
import os
import re
from pathlib import Path

from .decoding import ESCAPE, HEAD_BYTES, lines, sniff
from .errors import DataError, RowProblem

MAX_LINE_BYTES = 64 * 2**20
_ESCAPED = re.compile("[\udc00-\udcff]")  # a byte the file's encoding could not decode (decoding.ESCAPE)
FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
              ".parquet": "parquet", ".pq": "parquet"}


def _read_jsonl(path, enc):
    with open(path, "rb") as fh:
        fh.seek(enc.bom)
        for n, raw in enumerate(lines(fh, enc.newline, MAX_LINE_BYTES), 1):
            if raw is None:
                yield n, RowProblem(n, "-", f"line longer than {MAX_LINE_BYTES:,} bytes")
                continue
            try:
                text = enc.decode(raw)
            except ValueError as e:
                yield n, RowProblem(n, "-", str(e))
                continue
            text = text.rstrip("\r\n").lstrip("\ufeff")  # a BOM left inside by joining files: invisible, not data
            if text.strip(" \t\r\x0b\x0c"):
                yield n, _parse_json(text, n)


def _parse_json(text, n):
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:  # one line, no newline: colno is the character column an editor shows
        return RowProblem(n, "-", f"invalid JSON at column {e.colno}: {json_reason(e)}")
    except RecursionError:
        return RowProblem(n, "-", "JSON nested too deeply")
    return obj


def json_reason(e):
    """What a json.JSONDecodeError says, worded to follow "invalid JSON at line L, column C: "."""
    msg = {"Unterminated string starting at": "a string starts here and never ends",
           "Invalid control character at": "a control character (a raw tab or line break?) inside a string",
           "Extra data": "more data after a complete JSON value"}.get(e.msg, e.msg)
    return msg[0].lower() + msg[1:]


def _read_json(path, enc):
    """(row unit, rows) of a .json file: the items of its array, or its lines when it really is JSON lines. Read
    whole and parsed now, so that a syntax error is reported where it is."""
    raw = Path(path).read_bytes()[enc.bom:]
    try:
        text = enc.decode(raw, whole_file=True)
    except ValueError as e:
        if _is_json_lines(raw.decode(enc.codec, "replace")):
            return "line", _read_jsonl(path, enc)  # JSON lines named .json: a bad byte is the problem of its line
        raise DataError(str(e), source=path) from None
    del raw
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if _is_json_lines(text):
            return "line", _read_jsonl(path, enc)  # a JSON-lines file named .json
        raise DataError(f"invalid JSON at line {e.lineno}, column {e.colno}: {json_reason(e)}", source=path) from None
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
    return "row", ((i + 1, rec) for i, rec in enumerate(obj))


def _is_json_lines(text):
    """Whether text that is not one JSON value is JSON lines: its first line a whole JSON object on its own."""
    first = text.lstrip(" \t\r\n").partition("\n")[0]
    if not first.startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return False


def _read_csv(path, enc):
    delimiter = "\t" if str(path).endswith(".tsv") else ","
    with open(path, "rb") as raw:
        raw.seek(enc.bom)
        fh = io.TextIOWrapper(raw, encoding=enc.codec, errors=ESCAPE, newline="")
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"cannot read the CSV header: {e}", source=path, row=1, unit="line") from None
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
            row = dict(zip(header, cells))
            bad = next(((h, ord(m.group()) - 0xDC00) for h, c in row.items() if (m := _ESCAPED.search(c))), None)
            if bad:
                yield start, RowProblem(start, bad[0], f"not valid {enc.codec.upper()} (byte 0x{bad[1]:02x})")
                continue
            yield start, row


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


def hub_dataset(name):
    """(repo, revision, config, split) of a Hub dataset name: 'repo', 'repo:split' or 'repo:config:split', the repo
    optionally pinned to a revision as 'repo@revision'. The split defaults to 'train', revision and config to None."""
    head, *rest = name.split(":")
    if len(rest) > 2:
        raise DataError("a Hub dataset is 'name', 'name:split' or 'name:config:split' (with 'name@revision' to pin "
                        "a version)", source=name)
    repo, at, revision = head.partition("@")
    config, split = [None, *rest][-2:] if rest else (None, None)
    return repo, (revision or None) if at else None, config or None, split or "train"


def _read_hub(name):
    import datasets
    repo, revision, config, split = hub_dataset(name)
    try:
        ds = datasets.load_dataset(repo, config, split=split, revision=revision)
    except Exception as e:
        raise DataError(_hub_failure(e, repo, revision, config, split), source=name) from None
    for i, rec in enumerate(ds):
        yield i + 1, rec


def _hub_failure(e, repo, revision, config, split):
    """What went wrong loading a Hub dataset, in words: a config to choose, or the error and what to try."""
    what = f"the Hub dataset {repo!r}" + (f" at revision {revision!r}" if revision else "")
    if "Config name is missing" in str(e):  # datasets' words when a dataset has several configs and none was named
        try:
            import datasets
            names = datasets.get_dataset_config_names(repo, revision=revision)
        except Exception:  # not reachable now: datasets' own message lists them
            names = []
        listed = f"its configs: {', '.join(names)}" if names else str(e).strip().replace("\n", " ")
        return f"{what} has several configs; name one as '{repo}:{names[0] if names else 'CONFIG'}:{split}' ({listed})"
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or isinstance(e, OSError)
    hint = (" Offline? Save it to a file where there is network and pass the file." if offline else
            " Check the name, config and split on the dataset's Hub page.")
    return f"could not load {what} (config {config!r}, split {split!r}): {type(e).__name__}: {e}.{hint}"


def _encoding(path):
    with open(path, "rb") as fh:
        return sniff(fh.read(HEAD_BYTES))


def text_encoding(source):
    """How `source` is decoded, as the data report says it ("utf-8", "utf-16-le with BOM", ...): "" for anything
    but a JSONL, JSON or CSV file."""
    if isinstance(source, (str, Path)):
        p = Path(source).expanduser()
        if p.is_file() and FILE_KINDS.get(p.suffix.lower()) in ("jsonl", "json", "csv"):
            return _encoding(p).label
    return ""


def records(source):
    """(label, row_unit, iterator of (row, record|RowProblem)) for any supported source. A .json file is read and
    parsed here (its syntax errors raised as DataError); other sources are read as the iterator is."""
    if isinstance(source, (str, Path)):
        p = Path(source).expanduser()
        if p.is_file():
            kind = FILE_KINDS.get(p.suffix.lower())
            if kind is None:
                raise DataError(f"unsupported file type {p.suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet", source=p)
            if kind == "parquet":
                return str(p), "row", _read_parquet(p)
            enc = _encoding(p)
            if kind == "json":
                return (str(p), *_read_json(p, enc))
            return str(p), "line", (_read_jsonl if kind == "jsonl" else _read_csv)(p, enc)
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
