"""The run directory: the single source of truth of a run.

    config.json       the full config (loads back with TrainConfig.load)
    data.json         data source, content hash, counts, validation summary
    data/             the normalised train/validation examples (resume needs nothing else)
    metrics.jsonl     the curves, one JSON line per train, eval and probe record (written and read by metrics.py)
    status.json       state (running|finished|stopped|failed), step, total_steps, error, the writer's process and
                      `updated`, its heartbeat (refreshed every few seconds while running)
    adapter/ model/   the result (safetensors)
    checkpoints/step-N/  weights, optimizer, scheduler and RNG state
    benchmarks/       lm-eval scores of the tuned model and its base, written after training by ftnb eval (one file
                      a task and weights; the format is ftnb/evaluate/results.py's, outside the core)
    STOP              a stop request; the loop honours it at the next step
    run.lock          held by the one process writing this run: its host, PID and start time; touched by the
                      heartbeat

This module owns status.json and run.lock. Every JSON file is written to a temporary name and renamed. A run folder
may come from anyone: what is read from it is typed here (a field of the wrong type reads as missing), files are
read only when they are regular files (no symlink) of bounded size, and no reader raises on a corrupt file.
"""
import contextlib
import json
import os
import shutil
import socket
import stat
import time
from pathlib import Path

from . import metrics
from .durable import SWAPPED, new_file, remove_dir, restore_swapped, write_json, write_text
from .errors import RunError

STATES = ("running", "finished", "stopped", "failed")
HEARTBEAT_S = 10.0  # how often a running run refreshes status.json's `updated` and touches run.lock
MAX_JSON_BYTES = 4 << 20  # status.json, run.lock and other small JSON files larger than this are not read
MAX_ERROR_CHARS = 2000
LOCK_WRITE_WINDOW_S = 2.0  # an unreadable run.lock younger than this may be an older ftnb between create and write


def read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON: {e}") from None


def read_untrusted_json(path, max_bytes=MAX_JSON_BYTES):
    """(value, None) or (None, why) for a small JSON file from a run folder: a regular file (a symlink is refused,
    so a folder cannot make us read outside it), at most `max_bytes`, valid JSON of any nesting. Never raises;
    a missing file is (None, None)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None, None
    except OSError as e:  # ELOOP: a symlink
        if os.path.islink(path):
            return None, f"{Path(path).name} is not a regular file (a symlink)"
        return None, f"{Path(path).name} cannot be read ({e.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"{Path(path).name} is not a regular file"
        if st.st_size > max_bytes:
            return None, f"{Path(path).name} is too large ({st.st_size:,} bytes)"
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(max_bytes + 1)
        return json.loads(raw), None
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        return None, f"{Path(path).name} is not valid JSON ({type(e).__name__})"
    except OSError as e:
        return None, f"{Path(path).name} cannot be read ({e.strerror})"
    finally:
        os.close(fd)


# -- who is writing a run -------------------------------------------------------------------------------------------

def _boot_id():
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid):
    """When process `pid` started (clock ticks since boot, Linux), or None where that cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        return int(raw[raw.rindex(b")") + 2:].split()[19])  # field 22; the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def this_process():
    """What tells this process apart from any other, now and later: host, boot, PID and the PID's start time."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot": _boot_id(), "start": _start_time(pid)}


def process_alive(rec):
    """Whether the process a record names still runs: True, False, or None when it cannot be told from here (another
    host). A reused PID (another start time) or a reboot since counts as gone."""
    pid, host = rec.get("pid"), rec.get("host")
    if pid is None:
        return None
    if host is not None and host != socket.gethostname():
        return None
    if rec.get("boot") and _boot_id() and rec["boot"] != _boot_id():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        pass
    start = rec.get("start")
    return start is None or _start_time(pid) in (None, start)


def not_responding_after(heartbeat_s):
    """Seconds without a heartbeat after which a run that says it is running is called "not responding"."""
    return max(60.0, 6 * (heartbeat_s or HEARTBEAT_S))


STATUS = metrics.record({
    "state": metrics.text, "step": metrics.whole, "total_steps": metrics.whole, "error": metrics.text,
    "reason": metrics.text, "output": metrics.text, "best_checkpoint": metrics.whole, "pid": metrics.whole,
    "host": metrics.text, "boot": metrics.text, "start": metrics.whole, "updated": metrics.number,
    "heartbeat_s": metrics.number, "warning": metrics.text}, lenient=True)
LOCK = metrics.record({"pid": metrics.whole, "host": metrics.text, "boot": metrics.text, "start": metrics.whole,
                       "since": metrics.number, "heartbeat_s": metrics.number}, required=("pid", "host"), lenient=True)


def read_status(path):
    """status.json typed: {state, step, total_steps, error, ...}; a field of the wrong type reads as missing, an
    unreadable file gives state "unreadable" with the reason, a missing one state "unknown"."""
    value, why = read_untrusted_json(path)
    if why:
        return {"state": "unreadable", "step": 0, "error": why}
    if value is None:
        return {"state": "unknown", "step": 0}
    try:
        st = STATUS(value)
    except metrics.Skip:
        return {"state": "unreadable", "step": 0, "error": "status.json does not hold an object"}
    st = {k: v for k, v in st.items() if v is not None}
    if st.get("state") not in STATES:
        return {"state": "unreadable", "step": 0, "error": f"status.json names no known state ({st.get('state')!r:.60})"}
    st.setdefault("step", 0)
    if len(st.get("error") or "") > MAX_ERROR_CHARS:
        st["error"] = st["error"][:MAX_ERROR_CHARS] + "..."
    return st


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
        """config.json as a TrainConfig (every field typed and checked); RunError when it cannot be read."""
        from .config import TrainConfig
        from .errors import ConfigError
        value, why = read_untrusted_json(self.config_path)
        if why or not isinstance(value, dict):
            raise RunError(f"{self.config_path}: {why or 'missing' if value is None else 'not a JSON object'}")
        try:
            return TrainConfig.from_dict(value)
        except ConfigError as e:
            raise RunError(f"{self.config_path}: {e}") from None

    def metrics(self):
        """The typed rows of metrics.jsonl (odd lines skipped)."""
        return metrics.read(self.metrics_path)[0]

    def status(self, now=None):
        """status.json typed, with what can be told from here about a run that says it is running: its process is
        gone or has released the lock ("interrupted"), or its heartbeat stopped ("not responding")."""
        st = read_status(self.status_path)
        if st["state"] != "running":
            return st
        if process_alive(st) is False or not self.lock_path.exists():
            st = read_status(self.status_path)  # it may have finished since the first read
            if st["state"] == "running":
                return {**st, "state": "interrupted",
                        "error": "the training process ended without finishing; resume from the last checkpoint"}
            return st
        age = (now or time.time()) - st.get("updated", 0)
        if age > not_responding_after(st.get("heartbeat_s")):
            return {**st, "state": "not responding",
                    "error": f"no heartbeat for {age:.0f} s: the training process is frozen or cannot write to the "
                             "run folder (a full disk?). Stop or restart it; resume from the last checkpoint"}
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
        write_json(self.status_path, {"state": state, **fields, **this_process(), "updated": time.time(),
                                      "heartbeat_s": HEARTBEAT_S})

    def append_metrics(self, kind, step, data):
        metrics.append(self.metrics_path, kind, step, data)

    def truncate_metrics(self, step):
        """Drop metric lines after `step` (a resumed run rewrites them)."""
        metrics.truncate(self.metrics_path, step, write_text)

    def acquire_lock(self, force=False):
        """One writer per run: a second process training into the same folder fails clearly. A lock whose process is
        gone (same host: PID absent, reused or rebooted since; another host: no heartbeat for a while) is taken
        over; `force` takes over any lock."""
        self.path.mkdir(parents=True, exist_ok=True)
        mine = json.dumps({**this_process(), "since": time.time(), "heartbeat_s": HEARTBEAT_S})
        for _ in range(10):
            if _create_exclusive(self.lock_path, mine):
                return
            held, why = self._lock_holder()
            if held is None:
                continue  # gone meanwhile
            if "pid" not in held and not (force or why):  # unreadable and young: give its writer a moment
                time.sleep(LOCK_WRITE_WINDOW_S / 4)
                continue
            if force or why:
                self._break_lock(held)
                continue
            raise RunError(f"{self.path} is being written by process {held.get('pid')} on {held.get('host')}; stop "
                           "that run first or choose another run_name. If that process is gone (a crashed or "
                           f"preempted machine), take the run over: ftnb resume {self.path} --force "
                           "(ftnb.resume(path, force=True))") from None
        raise RunError(f"could not take the lock {self.lock_path}; another process keeps taking it")

    def _lock_holder(self):
        """(the lock's content as read, or None when there is no lock; why it is stale, or None when it is held)."""
        try:
            raw = self.lock_path.read_bytes()[:MAX_JSON_BYTES]
            age = time.time() - self.lock_path.stat().st_mtime
        except FileNotFoundError:
            return None, None
        try:
            rec = LOCK(json.loads(raw))
        except (ValueError, RecursionError):  # metrics.Skip is a ValueError
            # an old ftnb writes its lock after creating it: an unreadable lock is only a leftover once it is older
            # than that moment
            return {"raw": raw}, ("an unreadable lock file" if age > LOCK_WRITE_WINDOW_S else None)
        alive = process_alive(rec)
        if alive is False:
            return {**rec, "raw": raw}, "its process is gone"
        if alive is None and age > not_responding_after(rec.get("heartbeat_s")):
            return {**rec, "raw": raw}, f"no heartbeat from {rec.get('host')} for {age:.0f} s"
        return {**rec, "raw": raw}, None

    def _break_lock(self, held):
        """Remove the lock judged stale, unless another process replaced it meanwhile (then it is left alone)."""
        aside = self.lock_path.with_name(f".{self.lock_path.name}.{os.getpid()}.stale")
        try:
            os.replace(self.lock_path, aside)
        except FileNotFoundError:
            return
        if aside.read_bytes()[:MAX_JSON_BYTES] != held["raw"]:  # a fresh lock: put it back
            with contextlib.suppress(OSError):
                os.link(aside, self.lock_path)
        aside.unlink(missing_ok=True)

    def release_lock(self):
        held, _ = self._lock_holder()
        if held and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
            self.lock_path.unlink(missing_ok=True)

    def heartbeat(self):
        """Show this run's writer is alive: touch the lock (readers on other hosts judge it by its age)."""
        with contextlib.suppress(OSError):
            os.utime(self.lock_path)

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
        finite = next((s for s, p in reversed(cks) if _marked_finite(p)), None)
        for step, p in cks[:-keep] if keep else cks:
            if step not in protect and step != finite:
                remove_dir(p)  # a kill mid-delete must not leave a checkpoint that looks complete but is not


def _marked_finite(checkpoint):
    state, _ = read_untrusted_json(checkpoint / "trainer_state.json")
    return isinstance(state, dict) and state.get("finite") is True


def _create_exclusive(path, text):
    """Create `path` holding `text` if it does not exist, atomically: readers never see it empty or half written
    (a complete temporary file is hard-linked to the name). False when it exists."""
    path = Path(path)
    fd, tmp = new_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: create, then write (the window old ftnb also had)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        return True
    finally:
        os.unlink(tmp)


def list_runs(root):
    """Run folders directly under (or one level below) `root`, newest first, with their status and last metrics.
    A folder whose files are corrupt is listed with state "unreadable", never breaks the listing."""
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
    """A run's state and last metrics, as plain typed values (numbers, strings, None)."""
    st = run.status()
    last, last_val, last_probe = metrics.last_values(run.metrics_path)
    try:
        mtime = os.lstat(run.status_path).st_mtime
    except OSError:
        mtime = 0
    return {"path": str(run.path), "name": run.path.name, "state": st["state"], "step": st["step"],
            "total_steps": st.get("total_steps"), "loss": last.get("loss"), "val_loss": last_val,
            "retention": (last_probe or {}).get("retention"), "retention_low": (last_probe or {}).get("retention_low"),
            "retention_high": (last_probe or {}).get("retention_high"), "verdict": (last_probe or {}).get("verdict"),
            "elapsed_s": last.get("elapsed_s"),
            "error": st.get("error"), "warning": st.get("warning"), "mtime": mtime}
