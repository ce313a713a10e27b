"""The live training monitor: Start, Stop and Resume; training in a background thread; progress with ETA and
tokens/s; live loss, learning-rate and gradient-norm charts; sample answers at each evaluation.

A monitor can also be opened on an existing run folder (`TrainingMonitor.open(path)`): it redraws the whole history
from metrics.jsonl and, while another process is still training it, follows the file.
"""
import threading
import time

import ipywidgets as w
import numpy as np
from plotly.subplots import make_subplots

from ..core.data import ChatData, load_examples
from ..core.events import ENDS
from ..core.metrics import History
from ..core.rundir import RunDir
from ..core.train import resume, train
from ._common import LiveChart, Panel, Throttle, class_or_widget_method, esc, full_width, message, styled

RESUMABLE = ("stopped", "failed", "interrupted")  # states a run continues from its last checkpoint


def button_states(can_start, busy, stopping, state, has_run):
    """{button: enabled}: each of Start, Stop and Resume is enabled only when clicking it does something. `busy`:
    training in this kernel; `state`: the shown run's (another process may be training it); `has_run`: a run is
    shown."""
    live = busy or state == "running"
    return {"start": can_start and not live,
            "stop": live and not stopping,
            "resume": has_run and not live and state in RESUMABLE}


class TrainingMonitor(Panel):
    """monitor = TrainingMonitor(form=form, builder=builder); monitor.start(); monitor.wait(); monitor.run"""

    def __init__(self, config=None, data=None, form=None, builder=None, static=None, redraw_interval=0.5):
        self.config, self.data, self.form, self.builder = config, data, form, builder
        if form is not None and builder is not None and builder.form is not form:
            builder.form = form  # the Data tab's split preview shows the split this form's runs make
        self.run = None                 # the live core Run (training in this kernel)
        self.run_dir = None             # RunDir being shown
        self.history = History()
        self.listeners = []             # other panels: called with every event (in the training thread)
        self.thread = self.follower = None
        self.stop_event = threading.Event()
        self.throttle = Throttle(redraw_interval)
        self.error = None
        self.t0 = None
        self.busy = self.stopping = False  # training in this kernel; a stop was asked for
        self._build(static)

    @class_or_widget_method  # monitor.open() is ipywidgets' (a panel is a widget box)
    def open(cls, run_dir, follow=True, **kw):
        """A monitor on an existing run: its whole history, and new lines while it is still running elsewhere."""
        m = cls(**kw)
        m.attach(run_dir, follow=follow)
        return m

    # -- plain functions (the buttons call these) --
    def start(self):
        """Train in a background thread on the form's config and the builder's examples (or those given)."""
        if self.running:
            return
        cfg = self.form.config if self.form is not None else self.config
        data = self.builder.dataset if self.builder is not None else self.data
        if cfg is None or data is None:
            raise ValueError("the monitor needs a config (form=) and data (builder= or data=)")
        if not isinstance(data, ChatData):  # a file, a list of dicts, a DataFrame: loaded once, here
            data = load_examples(data, cfg.data_format, cfg.columns, cfg.fix_encoding)
        if not cfg.sample_prompts:
            prompts = [m["content"] for ex in list(data)[:2] if ex.messages for m in ex.messages if m["role"] == "user"]
            cfg = cfg.replace(sample_prompts=prompts[:2])
        self.history = History()
        self._launch(lambda: train(cfg, data, subscribers=[self._on_event], stop_event=self.stop_event))

    def stop(self):
        """Stop at the next step; the run saves a checkpoint and can be resumed."""
        if self.running:
            self.stop_event.set()
        elif self.run_dir is not None and self.history.state == "running":
            self.run_dir.request_stop()  # a run trained by another process
        else:
            return
        self.stopping = True
        self.status.value = message("info", "stopping after this step...")
        self._sync_buttons()

    def resume(self):
        """Continue the shown run from its last checkpoint. Its model's own code runs only when this session's
        settings (the form's, or config=) allow it: a run folder cannot."""
        if self.running:
            return
        if self.run_dir is None:
            self.status.value = message("warn", "nothing to resume yet: Start a run, or open one with "
                                                "TrainingMonitor.open(path)")
            return
        rd = self.run_dir.path
        self.history = History()
        for row in self.run_dir.metrics():
            self.history.add(row)
        settings = self.form.config if self.form is not None else self.config
        trust = bool(settings and settings.trust_remote_code)
        self._launch(lambda: resume(rd, subscribers=[self._on_event], stop_event=self.stop_event,
                                    trust_remote_code=trust))

    def wait(self, timeout=None):
        """Block until the training thread ends (for scripts and tests)."""
        for t in (self.thread, self.follower):
            if t is not None:
                t.join(timeout)
        return self

    @property
    def running(self):
        return self.thread is not None and self.thread.is_alive()

    def attach(self, run_dir, follow=True):
        self.run_dir = RunDir(run_dir)
        if not self.run_dir.config_path.exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
        self.history = History()
        offset = self.history.load(self.run_dir.metrics_path)
        self._status_from_disk()
        self.redraw(force=True)
        if follow and self.history.state == "running":
            self.follower = threading.Thread(target=self._follow, args=(offset,), daemon=True)
            self.follower.start()

    def figure(self):
        """A static plotly figure of the curves: display it in a cell to keep it when the notebook is reopened."""
        self.redraw(force=True)
        return self.chart.snapshot()

    def close(self):
        self.stop_event.set()
        self.listeners.clear()
        super().close()

    # -- the training thread's side --
    def _launch(self, target):
        from ..core.models import quiet_loading_bars
        quiet_loading_bars()  # weight-loading bars would print into the notebook from the thread; downloads show
        self.stop_event = threading.Event()
        self.error, self.t0 = None, time.monotonic()
        self.status.value = message("info", "starting (loading the model)...")
        self.busy, self.stopping = True, False

        def work():
            try:
                self.run = target()
            except Exception as e:  # shown in the panel; the run folder holds the details
                self.error = e
                notes = "".join(f"; {n}" for n in getattr(e, "__notes__", ()))
                self.status.value = message("error", f"{type(e).__name__}: {e}{notes}")
            finally:
                self.busy = self.stopping = False
                self._sync_buttons()
        self.thread = threading.Thread(target=work, daemon=True, name="ftnb-train")
        self._sync_buttons()
        self.thread.start()

    def _on_event(self, ev):
        h = self.history
        if ev.kind == "start":
            self.run, self.run_dir = ev.run, ev.run.run_dir
            h.total_steps, h.state = ev.data["total_steps"], "running"
            self.progress.max = max(1, h.total_steps)
            self.status.value = message("info", f"training: {ev.run.run_dir.path}")
            self._sync_buttons()
        elif ev.kind in ("log", "eval", "probe"):
            h.add_event(ev.kind, ev.step, ev.data)
        elif ev.kind in ENDS:
            h.state, h.error = ev.kind, ev.data.get("error")
        for fn in list(self.listeners):
            fn(ev)
        if ev.kind in ENDS:
            self.redraw(force=True)
            self._finish_message(ev)
        elif ev.kind in ("log", "eval", "start"):
            self.redraw(force=ev.kind == "eval")

    def _finish_message(self, ev):
        if ev.kind == "finished":
            self.status.value = message("ok", f"finished: {ev.data.get('output')}")
        elif ev.kind == "stopped":
            self.status.value = message("warn", f"stopped at step {ev.step} ({ev.data.get('reason', '')}); "
                                                "Resume continues from the checkpoint")
        else:
            self.status.value = message("error", f"failed: {ev.data.get('error')}")

    def _status_from_disk(self):
        st = self.run_dir.status()
        h = self.history
        h.state, h.error = st.get("state", "unknown"), st.get("error")
        h.total_steps = st.get("total_steps") or h.total_steps
        h.best = st.get("best_checkpoint", h.best)
        h.warning = st.get("warning", h.warning)
        self.status.value = message("error" if h.state in ("failed", "interrupted", "not responding", "unreadable")
                                    else "info",
                                    f"{self.run_dir.path}: {h.state}" + (f" ({h.error})" if h.error else ""))
        if h.state != "running":
            self.stopping = False
        self._sync_buttons()

    def _follow(self, offset, interval=1.0):
        while not self.stop_event.wait(interval):
            offset = self.history.read_new(self.run_dir.metrics_path, offset)
            self._status_from_disk()
            self.redraw()
            if self.history.state != "running":
                self.redraw(force=True)
                return

    # -- drawing (trait assignments only: safe from the worker thread) --
    def redraw(self, force=False):
        if not (force or self.throttle.ready()):
            return
        h = self.history
        tr, va = h.train, h.val
        updates = {1: {"x": np.asarray(va["step"]), "y": np.asarray(va["val_loss"], float)}}
        for i, key in ((0, "loss"), (2, "lr"), (3, "grad_norm")):
            xs, ys = h.series(key)
            updates[i] = {"x": xs, "y": ys}
        self.chart.update(updates, force=force)
        step = tr["step"][-1] if tr["step"] else 0
        total = h.total_steps or step or 1
        self.progress.max, self.progress.value = max(1, total), min(step, total)
        last = h.last
        parts = [f"step {step}/{total}"]
        if last.get("train_s") and step:
            done = last.get("elapsed_s") or 0
            if h.state == "running" and step < total:
                parts.append(f"ETA {_mmss(done / step * (total - step))}")
            parts.append(f"elapsed {_mmss(done)}")
        if last.get("tokens_per_s"):
            parts.append(f"{last['tokens_per_s']:,.0f} tokens/s")
        if last.get("mem_gb"):
            parts.append(f"GPU memory {last['mem_gb']:.1f} GB")
        if va["val_loss"]:
            parts.append(f"val loss {va['val_loss'][-1]:.3f}")
        best = self.run.best_checkpoint if self.run is not None else h.best
        if best is not None:
            parts.append(f"best checkpoint: step {best}")
        self.progress_label.value = " · ".join(parts)
        warning = self.run.warning if self.run is not None else h.warning
        self.warning.value = message("warn", warning) if warning else ""
        if h.samples:
            rows = "".join(f"<tr><td>{esc(s['prompt'])}</td><td>{esc(s['answer'])}</td></tr>" for s in h.samples)
            self.samples.value = (f"<b>Sample answers at step {esc(va['step'][-1])}</b><table style='font-size:0.9em'>"
                                  f"<tr><th>prompt</th><th>answer</th></tr>{rows}</table>")

    def _build(self, static):
        fig = make_subplots(rows=1, cols=3, subplot_titles=("loss", "learning rate", "gradient norm"),
                            horizontal_spacing=0.08)
        fig.add_scatter(x=[], y=[], name="train loss", mode="lines", row=1, col=1)
        fig.add_scatter(x=[], y=[], name="val loss", mode="lines+markers", row=1, col=1)
        fig.add_scatter(x=[], y=[], name="lr", mode="lines", row=1, col=2, showlegend=False)
        fig.add_scatter(x=[], y=[], name="grad norm", mode="lines", row=1, col=3, showlegend=False)
        fig.update_xaxes(title_text="step")
        self.chart = LiveChart(styled(fig, height=320, legend_below=True), static=static)
        self.start_button = w.Button(description="Start", icon="play", button_style="success")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning")
        self.resume_button = w.Button(description="Resume", icon="forward")
        self.start_button.on_click(lambda _: self._guard(self.start))
        self.stop_button.on_click(lambda _: self._guard(self.stop))
        self.resume_button.on_click(lambda _: self._guard(self.resume))
        self.progress = w.IntProgress(min=0, max=1, value=0, layout=w.Layout(width="400px", min_width="120px",
                                                                             flex="0 1 400px"))
        self.progress_label = w.HTML()
        self.status = w.HTML()
        self.warning = w.HTML()  # a collapse seen while training
        self.samples = w.HTML()
        self.root = w.VBox([w.HBox([self.start_button, self.stop_button, self.resume_button]),
                            w.HBox([self.progress, self.progress_label], layout=w.Layout(flex_flow="row wrap")),
                            self.status, self.warning, self.chart.widget, self.samples], layout=full_width())
        self._sync_buttons()

    @property
    def can_start(self):
        """Start needs settings (form= or config=) and examples (builder= or data=): a monitor opened on a run
        folder alone has neither, and does not offer it."""
        return (self.form is not None or self.config is not None) and \
            (self.builder is not None or self.data is not None)

    def _sync_buttons(self):
        on = button_states(self.can_start, self.busy, self.stopping, self.history.state, self.run_dir is not None)
        for name, b in (("start", self.start_button), ("stop", self.stop_button), ("resume", self.resume_button)):
            b.disabled = not on[name]
        self.start_button.layout.display = None if self.can_start else "none"

    def _guard(self, fn):
        try:
            fn()
        except Exception as e:
            self.status.value = message("error", str(e))


def _mmss(seconds):
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"

