"""The export panel: a run's model, from the checkpoint you choose, as a merged transformers folder, a GGUF file for
llama.cpp / Ollama / LM Studio, or an upload to the Hugging Face Hub with a model card; each verified before it says
so. Every button calls a plain method (export_merged, export_gguf, push) that returns what was done."""
import threading
from pathlib import Path

import ipywidgets as w

from ..core.rundir import RunDir
from ..core.saved import best_step
from ._common import Panel, esc, message

GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")


class ExportPanel(Panel):
    """ExportPanel(monitor) (the monitor's run) or ExportPanel(run_dir="runs/..."); .result -> the last result."""

    def __init__(self, monitor=None, run_dir=None):
        self.monitor, self.result, self.thread = monitor, None, None
        self.run_path = w.Text(value=str(run_dir or ""), description="run", layout=w.Layout(width="520px"),
                               placeholder="a run folder (the Train tab's run when empty)")
        self.checkpoint = w.Dropdown(options=[("last (the final weights)", "last")], description="checkpoint",
                                     layout=w.Layout(width="420px"))
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self._guard(self.refresh))
        self.merged_out = w.Text(value="merged-model", description="folder")
        self.merged_button = w.Button(description="Export merged", icon="download", layout=w.Layout(width="auto"))
        self.merged_button.on_click(lambda _: self._in_thread(self.export_merged, self.merged_out.value))
        self.gguf_out = w.Text(value="model.gguf", description="file")
        self.gguf_type = w.Dropdown(options=GGUF_TYPES, value="f16", description="type")
        self.gguf_button = w.Button(description="Export GGUF", icon="download", layout=w.Layout(width="auto"))
        self.gguf_button.on_click(lambda _: self._in_thread(self.export_gguf, self.gguf_out.value,
                                                            self.gguf_type.value))
        self.repo_id = w.Text(description="repo id", placeholder="you/luigi-smollm2")
        self.private = w.Checkbox(value=True, description="private", indent=False)
        self.push_merged = w.Checkbox(value=False, description="merged weights", indent=False)
        self.push_button = w.Button(description="Push to the Hub", icon="upload", layout=w.Layout(width="auto"))
        self.push_button.on_click(lambda _: self._in_thread(self.push, self.repo_id.value, self.private.value,
                                                            self.push_merged.value))
        self.status = w.HTML()
        self.results = w.HTML()
        note = ("<span style='color:var(--jp-ui-font-color2,#555);font-size:0.9em'>{}</span>").format
        self.root = w.VBox([
            w.HBox([self.run_path, self.refresh_button]), self.checkpoint,
            w.HTML("<b>Merged transformers folder</b> " + note("the adapter merged into the base weights; checked "
                                                               "against the tuned model's logits")),
            w.HBox([self.merged_out, self.merged_button]),
            w.HTML("<b>GGUF</b> " + note("for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile beside it; "
                                         "loaded back and compared before it is reported written")),
            w.HBox([self.gguf_out, self.gguf_type, self.gguf_button]),
            w.HTML("<b>Hugging Face Hub</b> " + note("with a model card (data, settings, validation loss, "
                                                     "forgetting); needs a token (HF_TOKEN) and network")),
            w.HBox([self.repo_id, self.private, self.push_merged, self.push_button]),
            self.status, self.results])
        if monitor is not None:
            monitor.listeners.append(self._on_event)
        self.refresh()

    # -- plain functions (the buttons call these, in a thread) --
    def run_dir(self):
        path = self.run_path.value.strip()
        if not path and self.monitor is not None and self.monitor.run_dir is not None:
            path = str(self.monitor.run_dir.path)
        if not path:
            raise ValueError("no run yet: train one in the Train tab, or name a run folder")
        return Path(path)

    def refresh(self):
        """The checkpoints the run has: the final weights, the best one, and each saved step."""
        try:
            rd = RunDir(self.run_dir())
        except ValueError:
            return
        options = [("last (the final weights)", "last")]
        best = best_step(rd)
        if best is not None:
            options.append((f"best (step {best})", "best"))
        options += [(f"step {step}", step) for step, _ in rd.checkpoints()]
        value = self.checkpoint.value if self.checkpoint.value in [v for _, v in options] else "last"
        self.checkpoint.options, self.checkpoint.value = options, value

    def export_merged(self, out, overwrite=False):
        from ..export import export
        return self._done("merged folder", export(self.run_dir(), out, checkpoint=self.checkpoint.value,
                                                  overwrite=overwrite))

    def export_gguf(self, out, type="f16", overwrite=False):
        from ..export.gguf import export_gguf
        return self._done("GGUF", export_gguf(self.run_dir(), out, type=type, checkpoint=self.checkpoint.value,
                                              overwrite=overwrite))

    def push(self, repo_id, private=True, merged=False):
        from ..export.hub import push_to_hub
        if not repo_id.strip():
            raise ValueError("name the repository, e.g. you/luigi-smollm2")
        return self._done("Hub", push_to_hub(self.run_dir(), repo_id.strip(), private=private, merged=merged,
                                             checkpoint=self.checkpoint.value))

    # -- view --
    def _done(self, what, result):
        self.result = result
        rows = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{esc(_short(v))}</td></tr>" for k, v in result.items())
        self.results.value = f"<b>{esc(what)}</b><table style='font-size:0.88em'>{rows}</table>"
        return result

    def _in_thread(self, fn, *args):
        if self.thread is not None and self.thread.is_alive():
            self.status.value = message("warn", "an export is still running")
            return

        def work():
            try:
                fn(*args)
                self.status.value = message("ok", "done, and verified")
            except Exception as e:  # shown in the panel: the files kept for inspection are named in the message
                self.status.value = message("error", f"{type(e).__name__}: {e}")
            finally:
                for b in (self.merged_button, self.gguf_button, self.push_button):
                    b.disabled = False
        for b in (self.merged_button, self.gguf_button, self.push_button):
            b.disabled = True
        self.status.value = message("info", f"working ({fn.__name__.replace('_', ' ')})...")
        self.thread = threading.Thread(target=work, daemon=True, name="ftnb-export")
        self.thread.start()

    def wait(self, timeout=None):
        if self.thread is not None:
            self.thread.join(timeout)
        return self

    def _on_event(self, ev):
        if ev.kind in ("finished", "stopped"):
            self.refresh()

    def _guard(self, fn):
        try:
            fn()
        except Exception as e:
            self.status.value = message("error", str(e))

    def close(self):
        if self.monitor is not None and self._on_event in self.monitor.listeners:
            self.monitor.listeners.remove(self._on_event)
        super().close()


def _short(value, n=300):
    text = str(value)
    return text if len(text) <= n else text[:n] + "..."
