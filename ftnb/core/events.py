"""Events out of the training loop, and the subscribers that turn them into files and progress bars.

A subscriber is any callable taking an `Event` (or an object with `on_event(event)`). The loop calls subscribers in
its own thread, between steps; a slow subscriber slows training, so views should only copy data and return.
Event kinds: data (the data report, before training), start, log (train metrics), eval (val_loss), probe, checkpoint,
finished, stopped, failed.
A subscriber that raises is detached with a warning, unless it is `essential` (the run-directory writer): then the
run fails, because the run directory is the source of truth.
"""
import collections
import sys
import threading
import warnings
from dataclasses import dataclass, field

KINDS = ("data", "start", "log", "eval", "probe", "checkpoint", "finished", "stopped", "failed")
ENDS = ("finished", "stopped", "failed")


@dataclass
class Event:
    kind: str
    step: int
    data: dict = field(default_factory=dict)
    run: object = field(default=None, repr=False)  # the live Run: model, tokenizer, run_dir, request_stop()


class EventBus:
    """Calls every subscriber with every event, in order. An event emitted by a subscriber (the probe publishes
    `probe` events) is queued and delivered after the current one has reached everybody."""

    def __init__(self, subscribers=()):
        self.subscribers = list(subscribers)
        self.queue = collections.deque()
        self.busy = False

    def subscribe(self, fn):
        self.subscribers.append(fn)

    def emit(self, kind, step, run=None, **data):
        ev = Event(kind, step, data, run)
        self.queue.append(ev)
        if self.busy:
            return ev
        self.busy = True
        try:
            while self.queue:
                self._deliver(self.queue.popleft())
        finally:
            self.busy = False
            self.queue.clear()
        return ev

    def _deliver(self, ev):
        kind = ev.kind
        for sub in list(self.subscribers):
            fn = getattr(sub, "on_event", sub)
            try:
                fn(ev)
            except Exception as e:
                if getattr(sub, "essential", False):
                    raise
                self.subscribers.remove(sub)
                warnings.warn(f"ftnb: subscriber {sub!r} raised {e!r} on {kind!r} and was detached", stacklevel=3)


class RunDirWriter:
    """Writes metrics.jsonl lines and status.json of the run as events arrive, and keeps a heartbeat: while the run
    is running, a thread rewrites status.json (refreshing `updated`) and touches run.lock every HEARTBEAT_S seconds,
    so readers can tell a frozen or silenced writer (a full disk) from a slow step."""
    essential = True
    LINES = {"log": "train", "eval": "eval", "probe": "probe"}

    def __init__(self, run_dir, heartbeat_s=None):
        from .rundir import HEARTBEAT_S
        self.run_dir = run_dir
        self.total_steps = None
        self.heartbeat_s = heartbeat_s or HEARTBEAT_S
        self.status = None  # the fields of the last "running" status written
        self.lock = threading.Lock()  # the loop's status writes and the heartbeat's, one at a time
        self.stopped = threading.Event()
        self.thread = None

    def on_event(self, ev):
        try:
            self._write(ev)
        except OSError as e:
            from .errors import RunError
            raise RunError(f"could not write to the run folder {self.run_dir.path}: {e.strerror or e} (disk full or "
                           "read-only?); the last checkpoint is intact") from e

    def _write(self, ev):
        rd, d = self.run_dir, ev.data
        warning = {"warning": ev.run.warning} if ev.run is not None and ev.run.warning else {}
        if ev.kind == "start":
            self.total_steps = d["total_steps"]
            self._running(step=ev.step, total_steps=self.total_steps, error=None, **warning)
            self.start_heartbeat()
        elif ev.kind in self.LINES:
            rd.append_metrics(self.LINES[ev.kind], ev.step, d)
            if ev.kind in ("log", "eval", "probe"):  # a warning may come with any of them
                self._running(step=max(ev.step, (self.status or {}).get("step", 0)), total_steps=self.total_steps,
                              error=None, **warning)
        elif ev.kind in ENDS:
            self.close()  # no heartbeat may write "running" after this
            rd.write_status(ev.kind, step=ev.step, total_steps=self.total_steps, error=d.get("error"), **warning,
                            **{k: d[k] for k in ("output", "best_checkpoint", "reason") if k in d})

    def _running(self, **fields):
        with self.lock:
            self.run_dir.write_status("running", **fields)
            self.status = fields

    def start_heartbeat(self):
        if self.thread is None:
            self.thread = threading.Thread(target=self._beat, daemon=True, name="ftnb-heartbeat")
            self.thread.start()

    def _beat(self):
        while not self.stopped.wait(self.heartbeat_s):
            with self.lock:
                if self.stopped.is_set():
                    return
                self.run_dir.heartbeat()
                try:
                    self.run_dir.write_status("running", **self.status)
                except OSError:
                    pass  # a full disk: the heartbeat stops showing, and readers say "not responding"

    def close(self):
        """Stop the heartbeat (the run ended, or failed in a way that may leave status.json behind)."""
        self.stopped.set()
        with self.lock:
            pass  # a heartbeat write in progress has finished
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()


class ProgressBar:
    """The data report, then a tqdm bar with loss and tokens/s, for the console."""

    def __init__(self, desc="training", file=None):
        self.desc, self.file, self.bar, self.postfix = desc, file, None, {}

    def on_event(self, ev):
        from tqdm import tqdm
        if ev.kind == "data":  # no bar yet: a plain print
            print(ev.data["summary"], file=self.file or sys.stdout, flush=True)
        elif ev.kind == "start":
            self.bar = tqdm(total=ev.data["total_steps"], initial=ev.step, desc=self.desc, unit="step", file=self.file,
                            dynamic_ncols=True, mininterval=0.2)
        elif self.bar is None:
            return
        elif ev.kind == "log":
            self.postfix.update(loss=f"{ev.data['loss']:.3f}", tok_s=f"{ev.data['tokens_per_s']:.0f}")
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(ev.step - self.bar.n)
        elif ev.kind == "eval":
            self.postfix["val_loss"] = f"{ev.data['val_loss']:.3f}"
            self.bar.set_postfix(self.postfix)
        elif ev.kind in ENDS:
            self.bar.update(ev.step - self.bar.n)
            self.bar.close()
            self.bar = None


class Recorder:
    """Keeps every event in a list (for tests and for code that wants the metrics without reading files)."""

    def __init__(self):
        self.events = []

    def __call__(self, ev):
        self.events.append(ev)

    def of(self, kind):
        return [e for e in self.events if e.kind == kind]
