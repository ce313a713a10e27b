"""Reading rows from files and Python objects: each source yields (row number, record) or (row number, RowProblem).

Row numbers are what the user sees: the line of a JSONL or CSV file (what a text editor shows), the item of a JSON
array, list or table. Nothing here knows about formats; formats.py turns records into examples.
"""
import csv
import json
from pathlib import Path

from .errors import DataError, RowProblem

MAX_LINE_BYTES = 64 * 2**20
FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
              ".parquet": "parquet", ".pq": "parquet"}


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


def records(source):
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
