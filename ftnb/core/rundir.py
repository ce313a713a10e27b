"""The run directory: the single source of truth of a run.

    config.json       the full config (loads back with TrainConfig.load)
    data.json         data source, content hash, counts, validation summary
    data/             the normalised train/validation examples (resume needs nothing else)
    metrics.jsonl     one JSON object per line (train lines, eval lines with val_loss, probe lines)
    status.json       state (running|finished|stopped|failed), step, total_steps, error, pid
    adapter/ model/   the result (safetensors)
    checkpoints/step-N/  weights, optimizer, scheduler and RNG state
    STOP              a stop request; the loop honours it at the next step
    run.lock          held by the one process writing this run

Every JSON file is written to a temporary name and renamed; metrics lines are appended with one write each,
and a torn last line (a crash mid-append) is skipped by the reader.
"""
import json
import os
import shutil
import socket
import time
from pathlib import Path

from .durable import SWAPPED, remove_dir, restore_swapped, write_json, write_text
from .errors import RunError

STATES = ("running", "finished", "stopped", "failed")


def read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON: {e}") from None


def read_jsonl(path, tail_bytes=None):
    """Complete lines of a JSONL file; a torn or corrupt line is skipped.
    With `tail_bytes`, only the lines within the file's last `tail_bytes` bytes (cheap on long histories)."""
    rows = []
    try:
        with open(path, "rb") as fh:
            if tail_bytes is not None:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - tail_bytes))
                if size > tail_bytes:
                    fh.readline()  # partial first line
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn last line: the writer died mid-append
                try:
                    rows.append(json.loads(raw))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return rows


def _pid_alive(pid, host):
    if host != socket.gethostname():
        return True  # cannot tell from here: trust the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """Paths and safe reads/writes of one run folder. Cheap to create; holds no open files."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self):
        return str(self.path)

    # -- paths --
    config_path = property(lambda self: self.path / "config.json")
    data_path = property(lambda self: self.path / "data.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    status_path = property(lambda self: self.path / "status.json")
    stop_path = property(lambda self: self.path / "STOP")
    lock_path = property(lambda self: self.path / "run.lock")
    checkpoints_path = property(lambda self: self.path / "checkpoints")

    @property
    def weights_path(self):
        """`adapter/` or `model/`, whichever the run produced (None before it finished)."""
        for name in ("adapter", "model"):
            if (self.path / name).is_dir():
                return self.path / name
        return None

    # -- reads --
    def config(self):
        from .config import TrainConfig
        return TrainConfig.load(self.config_path)

    def metrics(self):
        return read_jsonl(self.metrics_path)

    def status(self):
        """status.json, with a stale 'running' (its process is gone) reported as 'interrupted'."""
        st = read_json(self.status_path, default=None) or {"state": "unknown"}
        if st.get("state") == "running" and st.get("pid") and not _pid_alive(st["pid"], st.get("host")):
            st = {**st, "state": "interrupted",
                  "error": "the training process ended without finishing; resume from the last checkpoint"}
        return st

    def checkpoints(self):
        """Complete checkpoints, oldest first, as (step, path)."""
        out = []
        if self.checkpoints_path.is_dir():
            for p in self.checkpoints_path.iterdir():
                if p.name.startswith("step-") and (p / "trainer_state.json").exists():
                    try:
                        out.append((int(p.name[5:]), p))
                    except ValueError:
                        pass
        return sorted(out)

    def stop_requested(self):
        return self.stop_path.exists()

    # -- writes --
    def request_stop(self):
        """Ask the process training this run to stop (it saves a checkpoint first)."""
        if not self.path.is_dir():
            raise RunError(f"{self.path} is not a run directory")
        write_text(self.stop_path, f"stop requested at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    def write_status(self, state, **fields):
        assert state in STATES, state
        write_json(self.status_path, {"state": state, **fields, "pid": os.getpid(), "host": socket.gethostname(),
                                      "updated": time.time()})

    def append_metrics(self, row):
        line = json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line)  # one write per line: a crash leaves at most a torn last line, skipped on read

    def truncate_metrics(self, step):
        """Drop metric lines after `step` (a resumed run rewrites them)."""
        keep = [r for r in self.metrics() if r.get("step", 0) <= step]
        write_text(self.metrics_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))

    def acquire_lock(self):
        """One writer per run: a second process training into the same folder fails clearly."""
        self.path.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = read_json(self.lock_path, default=None) if self.lock_path.stat().st_size else None
                if other and _pid_alive(other.get("pid", -1), other.get("host")):
                    raise RunError(f"{self.path} is being written by process {other['pid']} on {other['host']}; "
                                   "stop that run first or choose another run_name") from None
                self.lock_path.unlink(missing_ok=True)  # stale lock of a dead process
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return
        raise RunError(f"could not take the lock {self.lock_path}")

    def release_lock(self):
        other = read_json(self.lock_path, default=None)
        if other and other.get("pid") == os.getpid():
            self.lock_path.unlink(missing_ok=True)

    def clean_partial(self):
        """Finish what a process killed mid-write left: a folder swapped out by atomic_dir goes back if its
        replacement never arrived; temporary folders, half-deleted folders and temporary JSON files are removed."""
        for folder in (self.path, self.checkpoints_path):
            if folder.is_dir():
                for p in list(folder.iterdir()):
                    if p.name.startswith(SWAPPED) and p.is_dir():
                        restore_swapped(p.with_name(p.name[len(SWAPPED):]))
                    elif p.name.startswith((".tmp-", ".old-")) and p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    elif p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                        p.unlink(missing_ok=True)

    def prune_checkpoints(self, keep, protect=()):
        """Remove all but the `keep` newest checkpoints, sparing those in `protect` and the newest one whose weights
        were checked finite when saved (a run that diverged keeps one to resume from)."""
        cks = self.checkpoints()
        finite = next((s for s, p in reversed(cks) if read_json(p / "trainer_state.json", {}).get("finite")), None)
        for step, p in cks[:-keep] if keep else cks:
            if step not in protect and step != finite:
                remove_dir(p)  # a kill mid-delete must not leave a checkpoint that looks complete but is not


def list_runs(root):
    """Run folders directly under (or one level below) `root`, newest first, with their status and last metrics."""
    root = Path(root)
    found = []
    if not root.is_dir():
        return found
    candidates = [root] + [p for p in root.iterdir() if p.is_dir()]
    for p in candidates:
        if (p / "config.json").exists() and (p / "status.json").exists():
            found.append(summarize(RunDir(p)))
    return sorted(found, key=lambda r: r["mtime"], reverse=True)


def summarize(run):
    st = run.status()
    last, last_val, last_probe = {}, None, None
    for r in read_jsonl(run.metrics_path, tail_bytes=256 * 1024):
        if "val_loss" in r:
            last_val = r["val_loss"]
        elif "probe" in r:
            last_probe = r["probe"]
        elif "loss" in r:
            last = r
    try:
        mtime = run.status_path.stat().st_mtime
    except FileNotFoundError:
        mtime = 0
    return {"path": str(run.path), "name": run.path.name, "state": st.get("state"), "step": st.get("step", 0),
            "total_steps": st.get("total_steps"), "loss": last.get("loss"), "val_loss": last_val,
            "retention": (last_probe or {}).get("retention"), "elapsed_s": last.get("elapsed_s"),
            "error": st.get("error"), "mtime": mtime}
