"""How the panels look and which of their buttons can be clicked (issue 17), without a browser: figures that let the
theme show through and fill their container, one colour per run, labels from the config, the states of Start, Stop
and Resume, the applied preset and the detected columns. tests/browser/test_panels_look.py checks the same in
JupyterLab's light and dark themes."""
import json

import pytest

from ftnb.core.config import TrainConfig
from ftnb.panels import ConfigForm, DatasetBuilder, ForgettingPanel, RunComparison, TrainingMonitor
from ftnb.panels._common import COLORS, PANEL_CLASS, message
from ftnb.panels.compare import trade_off_figure
from ftnb.panels.form import label
from ftnb.panels.monitor import button_states


def fake_run(path, state, steps=4, name=None, probe=True):
    """A run folder as training leaves it: config.json, status.json and metrics.jsonl (no weights)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": "tiny", "run_name": name or path.name}))
    (path / "status.json").write_text(json.dumps({"state": state, "step": steps, "total_steps": steps}))
    rows = [{"step": s, "loss": 2.0 / s, "lr": 1e-3, "grad_norm": 1.0, "elapsed_s": s, "train_s": s}
            for s in range(1, steps + 1)]
    rows.append({"step": steps, "val_loss": 1.0 + 0.1 * len(path.name)})
    if probe:
        rows.append({"step": steps, "probe": {"acc": 0.5, "acc_base": 0.5, "acc_low": 0.4, "acc_high": 0.6,
                                              "retention": 0.9 + 0.01 * len(path.name),
                                              "retention_low": 0.8, "retention_high": 1.0, "kl": 0.0, "ppl": 9.0}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def enabled(m):
    return {"start": not m.start_button.disabled, "stop": not m.stop_button.disabled,
            "resume": not m.resume_button.disabled}


def test_button_states_follow_the_run():
    # before any run: only Start; while training: only Stop; once Stop is asked: nothing until it ends
    assert button_states(True, False, False, "new", False) == {"start": True, "stop": False, "resume": False}
    assert button_states(True, True, False, "running", True) == {"start": False, "stop": True, "resume": False}
    assert button_states(True, True, True, "running", True) == {"start": False, "stop": False, "resume": False}
    assert button_states(True, False, False, "stopped", True) == {"start": True, "stop": False, "resume": True}
    assert button_states(True, False, False, "finished", True) == {"start": True, "stop": False, "resume": False}
    # a folder opened without settings or data: no Start; another process's live run can be stopped
    assert button_states(False, False, False, "finished", True) == {"start": False, "stop": False, "resume": False}
    assert button_states(False, False, False, "running", True) == {"start": False, "stop": True, "resume": False}
    assert button_states(False, False, False, "failed", True)["resume"]


def test_a_new_monitor_offers_only_start(qa_data):
    m = TrainingMonitor(form=ConfigForm(), data=qa_data)
    assert enabled(m) == {"start": True, "stop": False, "resume": False}
    m.stop_button.click()  # disabled in the browser; called anyway it says nothing false
    assert "stopping" not in m.status.value


def test_a_monitor_on_a_finished_run_does_not_offer_start(tmp_path):
    m = TrainingMonitor.open(fake_run(tmp_path / "done", "finished"))
    assert enabled(m) == {"start": False, "stop": False, "resume": False}
    assert m.start_button.layout.display == "none"  # not offered at all: it has no settings or data to train on
    stopped = TrainingMonitor.open(fake_run(tmp_path / "paused", "stopped"))
    assert enabled(stopped) == {"start": False, "stop": False, "resume": True}
    with_form = TrainingMonitor.open(tmp_path / "done", form=ConfigForm(), data=[])
    assert enabled(with_form)["start"] and with_form.start_button.layout.display is None


def test_figures_are_transparent_fill_their_container_and_keep_titles_off_the_axes(qa_data):
    m = TrainingMonitor(data=qa_data)
    layout = m.chart.fig.layout
    assert layout.paper_bgcolor == layout.plot_bgcolor == "rgba(0,0,0,0)"  # the theme's page shows through
    assert layout.autosize and layout.width is None  # as wide as its container
    assert layout.margin.t >= 45 and layout.margin.b >= 70 and layout.legend.y < 0  # titles, axis title, legend apart
    assert m.chart.fig.layout.xaxis.gridcolor.startswith("rgba(128")  # grey that reads on light and dark
    assert PANEL_CLASS in m._dom_classes and "ftnb-chart" in m.chart.widget._dom_classes
    assert "var(--jp-ui-font-color1" in message("info", "x") and "#333" in message("info", "x")  # theme, or light


def test_one_colour_per_run_in_every_chart(tmp_path):
    paths = [str(fake_run(tmp_path / n, "finished")) for n in ("a", "bb", "ccc")]
    cmp = RunComparison(str(tmp_path))
    res = cmp.select(paths)
    curves = cmp.curves.fig.data
    for i, r in enumerate(res["runs"]):
        train, val = curves[2 * i], curves[2 * i + 1]
        assert train.name == val.name == r["name"]
        assert train.line.color == val.line.color == val.marker.color == COLORS[i]
        assert train.showlegend is not False and val.showlegend is False  # one legend entry, in the run's colour
    assert list(cmp.scatter.fig.data[0].marker.color) == [COLORS[i] for i in range(3)]
    assert cmp.scatter.fig.data[0].cliponaxis is False  # run names at the edge are not cut off
    fig = trade_off_figure(res)
    assert fig.layout.margin.t >= 50 and fig.layout.margin.r >= 50


def test_mitigation_labels_are_the_forms_labels():
    form = ConfigForm()
    panel = ForgettingPanel(form=form)
    meta = TrainConfig.field_help()
    for name, widget in panel.switches.items():
        assert widget.description == form.fields[name].description == label(name, meta[name])
    assert panel.switches["kl_beta"].description == "kl beta"


def test_probe_item_inputs_fit_their_column():
    panel = ForgettingPanel()
    for widget in (panel.mc_question, panel.mc_choices, panel.q_text, panel.q_expect):
        assert widget.layout.width == "auto" and widget.layout.align_self == "stretch"  # fills, inside its margins


@pytest.mark.parametrize("preset", ["quick-cpu-demo", "low-forgetting"])
def test_the_preset_dropdown_names_the_applied_preset(preset, tmp_path):
    form = ConfigForm(preset=preset)
    assert form.preset.value == preset and form.preset_help.value
    form.preset.value = "full-finetune"
    form.apply_preset_button.click()
    assert form.preset.value == "full-finetune" and form.config.method == "full"
    form.fields["epochs"].value = 7.0  # edited: the settings are no longer the preset's
    assert form.preset.value == "" and form.config.epochs == 7.0
    form.save(tmp_path / "c.json")
    form.load(tmp_path / "c.json")
    assert form.preset.value == "" and form.preset.label == "(your own settings)"
    assert ConfigForm().preset.value == ""


def test_the_column_mapping_shows_the_detected_columns():
    b = DatasetBuilder(autosave=None)
    b.load([{"Question": "Hi?", "Answer": "Hello."}, {"Question": "Bye?", "Answer": "Bye."}])
    assert b.report.format == "prompt_completion"
    assert {role: dd.value for role, dd in b.mapping.items()} == {"prompt": "Question", "completion": "Answer",
                                                                  "system": ""}
    b._select(1)
    assert 'class="ftnb-selected"' in b.table.value and "#e3f2fd" not in b.table.value


def test_the_static_fallback_reads_on_a_light_page(qa_data):
    """Where panels.css is not loaded (Colab, VS Code) the figure's own colours show: dark text, grey grid."""
    m = TrainingMonitor(data=qa_data, static=True)
    fig = m.chart.fig
    assert fig.layout.paper_bgcolor == "rgba(0,0,0,0)" and m.chart.widget.layout.width == "100%"
    text = fig.layout.font.color or fig.layout.template.layout.font.color
    assert text == "#2a3f5f"  # plotly's default text: dark on the light page behind it
    assert "plotly" in str(m.chart.widget.outputs[0]["data"]["text/html"])
