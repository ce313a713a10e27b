"""Studio: every panel in one set of tabs, wired together (builder -> form -> monitor -> forgetting -> comparison,
export and chat)."""
import ipywidgets as w

from ..core.data import bundled
from .chat import Chat
from .compare import RunComparison
from .dataset import DatasetBuilder
from .export import ExportPanel
from .forgetting import ForgettingPanel
from .form import ConfigForm
from .monitor import TrainingMonitor
from ._common import Panel


class Studio(Panel):
    """studio = ftnb.Studio(); studio.builder / .form / .monitor / .forgetting / .comparison / .export / .chat are the
    panels."""

    def __init__(self, data=None, preset="quick-cpu-demo", config=None, runs_dir=None, autosave=None):
        """`data`: what the Data tab starts with (default: the bundled Luigi's Corner examples); `autosave`: a JSONL
        file that keeps the Data tab's examples and edits, restored when the Studio is made again."""
        self.form = ConfigForm(config=config, preset=None if config else preset)
        self.builder = DatasetBuilder.from_source(bundled("pizza_demo.jsonl") if data is None else data,
                                                  autosave=autosave, form=self.form, model=self.form.values()["model"])
        self.form.estimate_tokens = self.builder.token_count  # counted when asked: the Data tab's examples then
        self.form.fields["model"].observe(self._model_changed, names="value")
        self.monitor = TrainingMonitor(form=self.form, builder=self.builder)
        self.forgetting = ForgettingPanel(self.monitor, form=self.form)
        self.comparison = RunComparison(runs_dir or self.form.values()["output_dir"])
        if runs_dir is None:  # compare the runs where the form writes them
            w.dlink((self.form.fields["output_dir"], "value"), (self.comparison.folder, "value"))
        self.monitor.listeners.append(lambda ev: ev.kind in ("finished", "stopped") and self.comparison.refresh())
        self.export = ExportPanel(self.monitor)
        self.chat = Chat(monitor=self.monitor)  # talks to the Train tab's run when it ends
        self.tabs = w.Tab(children=[p.root for p in (self.builder, self.form, self.monitor, self.forgetting,
                                                     self.comparison, self.export, self.chat)])
        for i, title in enumerate(("Data", "Settings", "Train", "Forgetting", "Compare", "Export", "Chat")):
            self.tabs.set_title(i, title)
        self.root = self.tabs

    def _model_changed(self, change):
        self.builder.model_name, self.builder.tokenizer = change["new"], None

    def close(self):
        for p in (self.chat, self.export, self.monitor, self.forgetting, self.comparison, self.form, self.builder):
            p.close()
        super().close()  # the tabs and the Studio's own box
