"""Every panel is a widget box around its root: it shows itself and fits inside other ipywidgets containers."""
import ipywidgets as w
import pytest

from ftnb.panels import ConfigForm, DatasetBuilder, ExportPanel, ForgettingPanel, RunComparison, Studio, TrainingMonitor

MAKERS = {
    "DatasetBuilder": lambda data: DatasetBuilder.from_source(data),
    "ConfigForm": lambda data: ConfigForm(),
    "TrainingMonitor": lambda data: TrainingMonitor(data=data),
    "ForgettingPanel": lambda data: ForgettingPanel(TrainingMonitor(data=data)),
    "RunComparison": lambda data: RunComparison("runs"),
    "ExportPanel": lambda data: ExportPanel(TrainingMonitor(data=data)),
    "Studio": lambda data: Studio(data=data),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_a_panel_fits_inside_a_box(name, small_examples):
    panel = MAKERS[name](small_examples)
    box = w.VBox([w.HTML("my notebook's own header"), panel])  # ipywidgets checks that children are widgets
    assert box.children[1] is panel and panel.children == (panel.root,)
    view = box._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == box.model_id
    assert box.get_state()["children"][1] == f"IPY_MODEL_{panel.model_id}"
    assert "application/vnd.jupyter.widget-view+json" in panel._repr_mimebundle_()  # and shows itself alone
    panel.close()
    assert panel.comm is None and panel.root.comm is None


def test_the_monitor_still_opens_runs_as_a_class_method(tmp_path):
    assert TrainingMonitor.open.__self__ is TrainingMonitor  # TrainingMonitor.open(path), as the lab extension writes
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        TrainingMonitor.open(tmp_path)
    monitor = TrainingMonitor()
    comm = monitor.comm
    monitor.open()  # ipywidgets' own open(): the widget's connection, already there
    assert comm is not None and monitor.comm is comm
