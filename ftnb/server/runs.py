"""Finding run folders under a root, summarising them cheaply, and refusing paths that leave the root.

Run folders can come from other people (a shared drive, a cloned repository), so everything here only reads JSON
files, never follows a symlink out of the root, and reads only regular files of bounded size. Nothing is imported or
executed from a run folder.
"""
import hashlib
import json
import math
import os
import stat
import time
from pathlib import Path

from ..core.rundir import MAX_JSON_BYTES, RunDir, read_untrusted_json, summarize

MAX_DEPTH = 3  # runs are found in root/a, root/a/b and root/a/b/c
MAX_DIRS = 20000  # a scan stops after this many folders, so a huge tree cannot stall the server
SKIP_DIRS = {"node_modules", "checkpoints", "site-packages", "__pycache__"}


class PathRefused(Exception):
    """`status` is the HTTP status to answer with (403 outside the root, 404 not a run)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def resolve_run(root, rel):
    """The real path of run `rel` (a '/'-separated path relative to `root`), or PathRefused.

    Refused: empty, absolute, '.' or '..' segments, backslashes, NUL, and anything whose real path (symlinks
    resolved) is outside the root. A folder without config.json and status.json is not a run (404)."""
    if not rel or "\0" in rel or "\\" in rel:
        raise PathRefused(403, "invalid run path")
    if rel.startswith("/") or os.path.isabs(rel) or os.path.splitdrive(rel)[0]:
        raise PathRefused(403, "absolute paths are refused; give the run's path relative to the runs root")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise PathRefused(403, "'.', '..' and empty path segments are refused")
    real = Path(os.path.realpath(os.path.join(root, *parts)))
    if not _inside(real, root):
        raise PathRefused(403, "the path leads outside the runs root")
    if not _is_run_dir(real):
        raise PathRefused(404, f"{rel} is not a run folder (it needs config.json and status.json)")
    return real


def _inside(real, root):
    return real != root and root in real.parents


def _is_run_dir(path):
    return (path / "config.json").is_file() and (path / "status.json").is_file()


def find_runs(root, max_depth=MAX_DEPTH):
    """Run folders (holding config.json and status.json) below `root`, without following symlinks, skipping hidden
    folders, node_modules, checkpoints and site-packages. A run folder's own sub-folders are not searched."""
    found, visited = [], 0
    stack = [(root, 0)]
    while stack and visited < MAX_DIRS:
        path, depth = stack.pop()
        visited += 1
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            continue
        names = {e.name for e in entries}
        if depth > 0 and "config.json" in names and "status.json" in names:
            found.append(Path(path))
            continue
        if depth < max_depth:
            for e in entries:
                if e.name[0] != "." and e.name not in SKIP_DIRS and e.is_dir(follow_symlinks=False):
                    stack.append((e.path, depth + 1))
    return found


def _regular(path):
    """lstat of a regular file (no symlink, fifo or device), or None when absent; ValueError otherwise."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path.name} is not a regular file")
    return st


def _key(run_path):
    """Changes whenever the run's summary can: status.json rewritten or metrics.jsonl appended to."""
    st, mt = _regular(run_path / "status.json"), _regular(run_path / "metrics.jsonl")
    if st is None:
        raise ValueError("status.json is missing")
    if st.st_size > MAX_JSON_BYTES:
        raise ValueError("status.json is too large")
    return (st.st_mtime_ns, st.st_size, mt and mt.st_mtime_ns, mt and mt.st_size)


def _json_safe(value):
    """NaN and infinities become strings ("nan", "inf"): browsers' JSON.parse refuses them as numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def summarize_run(run_path, rel):
    """summarize() of one run (typed by the core's readers), with its path relative to the runs root; an unreadable
    run reports why."""
    try:
        _key(run_path)
        s = summarize(RunDir(run_path))
    except (OSError, ValueError) as e:  # not a regular file, too large, gone meanwhile
        s = {"name": run_path.name, "state": "unreadable", "step": 0, "total_steps": None, "loss": None,
             "val_loss": None, "retention": None, "elapsed_s": None, "error": str(e), "mtime": 0}
    return _json_safe({**s, "path": rel})


def read_config(run_path):
    """config.json as plain JSON (never loaded into code): (config, error)."""
    config, why = read_untrusted_json(run_path / "config.json")
    if why or config is None:
        return None, why or "config.json is missing"
    try:
        return _json_safe(config), None
    except RecursionError:  # JSON that parsed may still be too deep to walk again
        return None, "config.json is nested too deeply"


class RunIndex:
    """Summaries of the runs under `root`, cached per run by (status.json, metrics.jsonl) mtime and size; the folder
    scan and the serialised listing are rebuilt at most every `max_age` seconds."""

    def __init__(self, root, label, max_age=1.0):
        self.root = Path(os.path.realpath(root))
        self.label = label  # the root as shown to clients: relative to the server root, or absolute
        self.max_age = max_age
        self._summaries = {}  # rel -> (key, summary)
        self.listing, self.built = None, 0.0  # (JSON body, its ETag) and when it was made (monotonic)
        self.refreshing = None  # the build in progress (a future), set by the handler

    def rel(self, run_path):
        return Path(run_path).relative_to(self.root).as_posix()

    def summary(self, run_path):
        """One run's summary, from the cache while its files are unchanged."""
        rel = self.rel(run_path)
        try:
            key = _key(run_path)
        except (OSError, ValueError):
            key = None
        hit = self._summaries.get(rel)
        if key is not None and hit and hit[0] == key and not self._went_stale(run_path, hit[1]):
            return hit[1]
        s = summarize_run(run_path, rel)
        if key is not None:
            self._summaries[rel] = (key, s)
        return s

    @staticmethod
    def _went_stale(run_path, s):
        # a process that dies without a last write leaves status.json unchanged: ask again while it says running
        return s.get("state") == "running" and RunDir(run_path).status().get("state") != "running"

    def build(self):
        """Scan, summarise and serialise; returns (body, etag). Safe to run in a worker thread (one at a time)."""
        runs = [self.summary(p) for p in find_runs(self.root)]
        live = {r["path"] for r in runs}
        self._summaries = {k: v for k, v in self._summaries.items() if k in live}
        runs.sort(key=lambda r: r.get("mtime") or 0, reverse=True)
        body = json.dumps({"root": self.label, "runs": runs}, allow_nan=False).encode()
        self.listing = (body, f'"{hashlib.sha1(body).hexdigest()}"')  # one assignment: body and etag agree
        self.built = time.monotonic()
        return self.listing

    def stale(self):
        return self.listing is None or time.monotonic() - self.built > self.max_age

    def invalidate(self):
        self.built = 0.0
