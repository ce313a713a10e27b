"""Talk to a run's model: a transcript that grows while the answer is generated, the sampling settings, the
checkpoint to talk to, and for LoRA the base model's answer beside the tuned one (the same weights, adapter off).

    chat = Chat(run_dir="runs/20261130-101500-lora")   # or Chat(run), or Chat(monitor=monitor)
    chat.send("When do you close on Sundays?")          # blocks and returns the answer; the buttons do not block
    chat.messages                                       # the conversation, as the chat template receives it
"""
import threading

import ipywidgets as w

from ..core.chat import Conversation
from ..core.rundir import RunDir
from ..core.saved import best_step, load_run
from ._common import Panel, Throttle, esc, message

SIDES = ("tuned", "base")
# column-reverse keeps a transcript scrolled to its end while the answer grows (no script needed)
CSS = ("<style>.ftnb-chat{max-height:420px;overflow-y:auto;padding:4px 6px;"
       "border:1px solid var(--jp-border-color2,#ddd);border-radius:4px;"
       "display:flex;flex-direction:column-reverse}"
       ".ftnb-msg{margin:4px 0;padding:4px 8px;border-radius:6px;white-space:pre-wrap;word-break:break-word}"
       ".ftnb-msg-user{background:rgba(33,150,243,0.14)}.ftnb-msg-assistant{background:rgba(128,128,128,0.12)}"
       ".ftnb-who{font-size:0.8em;color:var(--jp-ui-font-color2,#555);display:block}</style>")


class Chat(Panel):
    """chat = Chat(run_dir=...); chat.send(text) (from code: waits and returns the tuned answer; wait=False returns
    the thread), chat.stop(), chat.clear(), chat.messages / chat.base_messages, chat.run (the core Run)."""

    def __init__(self, run=None, run_dir=None, monitor=None, checkpoint="last", device="auto", redraw_interval=0.25):
        self.run, self.monitor, self.device = run, monitor, device
        self.loaded = None                     # the checkpoint self.run was loaded with ("live": a run in memory)
        self.conversations = {side: Conversation() for side in SIDES}
        self.streaming = {}                    # side -> the ChatStream being generated
        self.waiting = {}                      # side -> the question it answers after the other side
        self.skipped = {side: set() for side in SIDES}  # answers not begun (Stop came first), by message index
        self.thread, self.error, self.answer = None, None, None
        self.stop_event = threading.Event()
        self.redraw_interval = redraw_interval
        self._quiet = False                    # True while options are set from code: no reload
        self._build(run_dir)
        if monitor is not None:
            monitor.listeners.append(self._on_event)
        if run is not None:
            self.use(run)
        elif run_dir is not None:
            self.refresh()
            self.load(checkpoint)

    # -- plain functions (the buttons call these) --
    @property
    def messages(self):
        """The tuned model's conversation: [{"role", "content"}], the system prompt not included."""
        return self.conversations["tuned"].messages

    @property
    def base_messages(self):
        return self.conversations["base"].messages

    @property
    def busy(self):
        return self.thread is not None and self.thread.is_alive()

    @property
    def lora(self):
        return self.run is not None and hasattr(self.run.model, "disable_adapter")

    def run_dir(self):
        path = self.run_path.value.strip()
        if not path and self.monitor is not None and self.monitor.run_dir is not None:
            path = str(self.monitor.run_dir.path)
        if not path and self.run is not None:
            path = str(self.run.run_dir.path)
        if not path:
            raise ValueError("no run yet: train one in the Train tab, or name a run folder")
        return path

    def load(self, checkpoint=None, wait=True):
        """Load the run folder's weights at `checkpoint` ('last', 'best' or a step; default: the chooser's). The
        conversation is kept: the next answer comes from these weights."""
        from ..core.models import quiet_loading_bars
        quiet_loading_bars()  # weight-loading bars would print into the notebook; downloads show
        checkpoint = self.checkpoint.value if checkpoint is None else checkpoint
        self.stop()
        self.wait()
        return self._start(lambda: self._load(checkpoint), wait)

    def use(self, run):
        """Talk to a run in memory (the Train tab's, when it ends): its model as it is, no second copy."""
        self.run, self.loaded = run, "live"
        self.refresh()
        self._show_run(run.weights or f"the run just trained ({run.run_dir.path.name}, step {run.step})")

    def send(self, text=None, wait=True):
        """Answer `text` (default: the input box's, which is emptied): the tuned model, then for LoRA with 'base
        beside tuned' the base model, one after the other. Waits and returns the tuned answer; wait=False (the Send
        button) returns the thread at once while the transcript fills in."""
        text = self.input.value if text is None else text
        if not text.strip():
            return None
        if self.busy:
            self.status.value = message("warn", "still answering: Stop it first")
            return None
        if self.run is None:
            self.run_dir()  # says so when there is no run to talk to (the text stays in the box)
        self.input.value = ""
        settings = {"system": self.system.value.strip() or None, "max_new_tokens": self.max_new_tokens.value,
                    "temperature": self.temperature.value, "top_p": self.top_p.value, "greedy": self.greedy.value,
                    "seed": int(self.seed.value) if self.seed.value.strip() else None}
        return self._start(lambda: self._answer(text, settings), wait, generating=True)

    def stop(self):
        """End the answer being generated at the next token (the base answer, not started yet, is skipped)."""
        self.stop_event.set()

    def clear(self):
        """Forget the conversation (stopping an answer first)."""
        self.stop()
        self.wait()
        for side, conv in self.conversations.items():
            conv.reset()
            self.skipped[side].clear()
        self.answer = None
        self.redraw()

    def wait(self, timeout=None):
        if self.thread is not None:
            self.thread.join(timeout)
        return self

    def refresh(self):
        """The checkpoints the run folder has: its final weights, the best one and each saved step."""
        options = [("last (the final weights)", "last")]
        try:
            rd = RunDir(self.run_dir())
            best = best_step(rd)
            if best is not None:
                options.append((f"best (step {best})", "best"))
            options += [(f"step {step}", step) for step, _ in rd.checkpoints()]
        except (ValueError, OSError):
            pass
        value = self.checkpoint.value if self.checkpoint.value in [v for _, v in options] else "last"
        self._quiet = True
        try:
            self.checkpoint.options, self.checkpoint.value = options, value
        finally:
            self._quiet = False

    def close(self):
        self.stop()
        if self.monitor is not None and self._on_event in self.monitor.listeners:
            self.monitor.listeners.remove(self._on_event)
        super().close()

    # -- the worker thread's side (trait assignments only) --
    def _start(self, work, wait, generating=False):
        self.stop_event = threading.Event()
        self.error = None

        def run():
            try:
                work()
            except Exception as e:  # shown in the panel; raised again by a waiting send()
                self.error = e
                self.status.value = message("error", f"{type(e).__name__}: {e}")
            finally:
                self.streaming, self.waiting = {}, {}
                self.redraw()
                self.stop_button.disabled, self.send_button.disabled = True, False
        self.stop_button.disabled, self.send_button.disabled = not generating, True
        self.thread = threading.Thread(target=run, daemon=True, name="ftnb-chat-panel")
        self.thread.start()
        if not wait:
            return self.thread
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.answer if generating else self.run

    def _load(self, checkpoint):
        self.status.value = message("info", f"loading {checkpoint} from {self.run_dir()}...")
        self.run = load_run(self.run_dir(), device=self.device, checkpoint=checkpoint)
        self.loaded = checkpoint
        self._quiet = True
        try:
            if checkpoint in [v for _, v in self.checkpoint.options]:
                self.checkpoint.value = checkpoint
        finally:
            self._quiet = False
        self._show_run(self.run.weights)

    def _answer(self, text, settings):
        if self.run is None:
            self._load(self.checkpoint.value)
        model, tok = self.run.model, self.run.tokenizer
        sides = ["tuned"] + (["base"] if self.lora and self.side_by_side.value else [])
        self.answer, self.waiting, streams = None, {side: text for side in sides[1:]}, {}
        for side in sides:
            conv = self.conversations[side]
            conv.system = settings["system"]
            self.waiting.pop(side, None)
            if self.stop_event.is_set():  # stopped before this side began: its turn is kept, unanswered
                conv.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
                self.skipped[side].add(len(conv.messages) - 1)
                continue
            self.status.value = message("info", f"{side} model answering...")
            stream = conv.ask(model, tok, text, adapter=side == "tuned", stop_event=self.stop_event,
                              **{k: v for k, v in settings.items() if k != "system"})
            self.streaming[side] = streams[side] = stream
            self.redraw()  # the question shows at once, the answer as it comes
            throttle = Throttle(self.redraw_interval)
            try:
                for _ in stream:
                    if throttle.ready():
                        self.redraw(side)
            finally:
                stream.close()
                self.streaming.pop(side, None)
            self.redraw(side)
            if side == "tuned":
                self.answer = conv.messages[-1]["content"]
        stopped = [st for st in streams.values() if st.finish == "stopped"]
        if self.stop_event.is_set():
            self.status.value = message("warn", "stopped" + (f" after {len(stopped[0].tokens)} tokens" if stopped
                                                             else ""))
            return
        ended = {"end of turn": "ended its turn", "length": "cut at max tokens"}
        self.status.value = message("ok", "answered (" + ", ".join(f"{s}: {ended.get(st.finish, st.finish)}"
                                                                 for s, st in streams.items()) + ")")

    def _on_event(self, ev):
        if ev.kind in ("finished", "stopped") and ev.run is not None:
            self.use(ev.run)

    # -- drawing --
    def redraw(self, side=None):
        for s in ([side] if side else SIDES):
            self.transcripts[s].value = self._html(s)

    def _html(self, side):
        rows = []
        for i, m in enumerate(self.conversations[side].messages):
            who = "you" if m["role"] == "user" else side
            text = m["content"] or ("" if m["role"] == "user" else "(stopped before it began)"
                                    if i in self.skipped[side] else "(an empty answer)")
            rows.append(f'<div class="ftnb-msg ftnb-msg-{esc(m["role"])}"><span class="ftnb-who">{esc(who)}</span>'
                        f"{esc(text)}</div>")
        live = self.streaming.get(side)
        if live is not None:  # the answer being generated: its text so far
            rows.append(f'<div class="ftnb-msg ftnb-msg-assistant ftnb-live"><span class="ftnb-who">{esc(side)} '
                        f"(answering)</span>{esc(live.text)}&#9612;</div>")
        if side in self.waiting:  # its turn comes after the tuned answer
            rows.append(f'<div class="ftnb-msg ftnb-msg-user"><span class="ftnb-who">you</span>'
                        f'{esc(self.waiting[side])}</div><div class="ftnb-msg ftnb-msg-assistant ftnb-waiting">'
                        f'<span class="ftnb-who">{esc(side)}</span>(answers when the tuned model is done)</div>')
        return f'<div class="ftnb-chat ftnb-chat-{side}"><div>{"".join(rows)}</div></div>'

    def _show_run(self, what):
        lora = self.lora
        self.side_by_side.disabled = not lora
        self._show_run_columns()
        self.status.value = message("ok", f"talking to {what}" + ("" if lora else
                                    " (a full fine-tune: no base model beside it, that would take a second copy)"))
        self.redraw()

    def _build(self, run_dir):
        self.run_path = w.Text(value=str(run_dir or ""), description="run", layout=w.Layout(width="460px"),
                               placeholder="a run folder (the Train tab's run when empty)")
        self.checkpoint = w.Dropdown(options=[("last (the final weights)", "last")], value="last",
                                     description="checkpoint", layout=w.Layout(width="300px"))
        self.checkpoint.observe(self._checkpoint_changed, names="value")
        self.load_button = w.Button(description="Load", icon="refresh")
        self.load_button.on_click(lambda _: self._guard(lambda: (self.refresh(), self.load(wait=False))))
        self.system = w.Textarea(description="system", placeholder="an optional system prompt",
                                 layout=w.Layout(width="600px", height="48px"))
        wide = {"description_width": "initial"}
        self.temperature = w.FloatSlider(value=0.7, min=0.0, max=2.0, step=0.05, description="temperature", style=wide)
        self.top_p = w.FloatSlider(value=0.9, min=0.05, max=1.0, step=0.05, description="top-p", style=wide)
        self.max_new_tokens = w.BoundedIntText(value=256, min=1, max=32768, description="max tokens", style=wide,
                                               layout=w.Layout(width="180px"))
        self.greedy = w.Checkbox(value=False, description="greedy (always the likeliest token)", indent=False,
                                 layout=w.Layout(width="auto"))
        self.greedy.observe(lambda ch: self._greedy_changed(), names="value")
        self.seed = w.Text(description="seed", placeholder="random", layout=w.Layout(width="160px"))
        self.side_by_side = w.Checkbox(value=True, indent=False, disabled=True, layout=w.Layout(width="auto"),
                                       description="base beside tuned (LoRA: the same weights, adapter off)")
        self.side_by_side.observe(lambda ch: self._show_run_columns(), names="value")
        self.transcripts = {side: w.HTML(value=self._html(side)) for side in SIDES}
        tuned_column = w.VBox([w.HTML("<b>tuned</b>"), self.transcripts["tuned"]], layout=w.Layout(width="50%"))
        self.base_column = w.VBox([w.HTML("<b>base</b> (adapter off)"), self.transcripts["base"]],
                                  layout=w.Layout(width="50%", display="none"))
        self.input = w.Textarea(placeholder="Message (Send answers it)", layout=w.Layout(width="600px", height="60px"))
        self.send_button = w.Button(description="Send", icon="paper-plane", button_style="primary")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning", disabled=True)
        self.clear_button = w.Button(description="Clear", icon="eraser")
        self.send_button.on_click(lambda _: self._guard(lambda: self.send(wait=False)))
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self._guard(self.clear))
        self.status = w.HTML()
        self.root = w.VBox([
            w.HTML(CSS), w.HBox([self.run_path, self.checkpoint, self.load_button]), self.system,
            w.HBox([self.temperature, self.top_p, self.max_new_tokens]),
            w.HBox([self.greedy, self.seed, self.side_by_side]),
            w.HBox([tuned_column, self.base_column], layout=w.Layout(width="100%")),
            w.HBox([self.input, w.VBox([self.send_button, self.stop_button, self.clear_button])]), self.status])
        self.root.add_class("ftnb-chat-panel")

    def _greedy_changed(self):
        self.temperature.disabled = self.top_p.disabled = self.seed.disabled = self.greedy.value

    def _show_run_columns(self):
        self.base_column.layout.display = None if self.lora and self.side_by_side.value else "none"

    def _checkpoint_changed(self, change):
        if not self._quiet and change["new"] != self.loaded:
            self._guard(lambda: self.load(change["new"], wait=False))

    def _guard(self, fn):
        try:
            fn()
        except Exception as e:
            self.status.value = message("error", f"{type(e).__name__}: {e}")
