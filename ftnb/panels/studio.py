"""Studio: every panel in one set of tabs, wired together (builder -> form -> monitor -> forgetting -> comparison)."""
import ipywidgets as w

from ..core.data import bundled
from .compare import RunComparison
from .dataset import DatasetBuilder
from .forgetting import ForgettingPanel
from .form import ConfigForm
from .monitor import TrainingMonitor
from ._common import Panel


class Studio(Panel):
    """studio = ftnb.Studio(); studio.builder / .form / .monitor / .forgetting / .comparison are the panels."""

    def __init__(self, data=None, preset="quick-cpu-demo", config=None, runs_dir=None, autosave="ftnb-dataset.jsonl"):
        self.builder = DatasetBuilder(autosave=autosave)
        if data is None and not self.builder.examples:
            data = bundled("pizza_demo.jsonl")
        if data is not None:
            self.builder.load(data)
        self.form = ConfigForm(config=config, preset=None if config else preset)
        self.builder.model_name = self.form.values()["model"]  # the token view uses the form's model's tokenizer
        self.form.fields["model"].observe(self._model_changed, names="value")
        self.monitor = TrainingMonitor(form=self.form, builder=self.builder)
        self.forgetting = ForgettingPanel(self.monitor, form=self.form)
        self.comparison = RunComparison(runs_dir or self.form.values()["output_dir"])
        if runs_dir is None:  # compare the runs where the form writes them
            w.dlink((self.form.fields["output_dir"], "value"), (self.comparison.folder, "value"))
        self.monitor.listeners.append(lambda ev: ev.kind in ("finished", "stopped") and self.comparison.refresh())
        self.tabs = w.Tab(children=[p.root for p in (self.builder, self.form, self.monitor, self.forgetting,
                                                     self.comparison)])
        for i, title in enumerate(("Data", "Settings", "Train", "Forgetting", "Compare")):
            self.tabs.set_title(i, title)
        self.root = self.tabs

    def _model_changed(self, change):
        self.builder.model_name, self.builder.tokenizer = change["new"], None

    def close(self):
        for p in (self.monitor, self.forgetting, self.comparison, self.form, self.builder):
            p.close()
