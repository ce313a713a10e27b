"""One config, many views: the forgetting switches and the Data tab's split are the form's fields, with its ranges
and its validation message; the Studio's estimate counts the Data tab's tokens."""
import json

import pytest

import ftnb
from ftnb import TrainConfig
from ftnb.core.rundir import RunDir
from ftnb.core.train import prepare_data
from ftnb.panels import ConfigForm, DatasetBuilder, ForgettingPanel, TrainingMonitor
from ftnb.panels.form import NO_DATA


@pytest.mark.parametrize("name, value", [("kl_beta", 2.0), ("replay_fraction", 0.8), ("min_retention", 1.2)])
def test_a_valid_value_in_the_form_is_the_switchs_value_unclamped(name, value):
    form = ConfigForm()
    panel = ForgettingPanel(form=form)
    form.fields[name].value = value
    assert panel.switches[name].value == value and getattr(form.config, name) == value
    assert form.fields[name].value == value  # nothing wrote a clamped value back
    panel.switches[name].value = 0.3
    assert getattr(form.config, name) == 0.3 and form.fields[name].value == 0.3
    panel.close()


def test_an_invalid_switch_shows_the_forms_message():
    form = ConfigForm()
    panel = ForgettingPanel(form=form)
    panel.switches["kl_beta"].value = -1.0
    assert form.error.field == "kl_beta" and form.fields["kl_beta"].value == -1.0
    assert "must be 0 or more" in panel.views["kl_beta"].error.value == form.errors["kl_beta"].value
    with pytest.raises(ValueError, match="kl_beta"):
        form.config
    form.fields["kl_beta"].value = 0.1
    assert panel.views["kl_beta"].error.value == "" and form.config.kl_beta == 0.1
    panel.close()  # the views let go; the form's own widgets stay
    form.fields["kl_beta"].value = 0.2
    assert form.config.kl_beta == 0.2 and form.fields["kl_beta"].comm is not None


def test_presets_and_loaded_files_reach_the_views(tmp_path, qa_data):
    form = ConfigForm()
    panel, builder = ForgettingPanel(form=form), DatasetBuilder(autosave=None, form=form)
    builder.load(qa_data)
    form.apply_preset("low-forgetting")
    assert (panel.switches["lora_r"].value, panel.switches["lora_targets"].value) == (8, "attention")
    TrainConfig(model="tiny", kl_beta=3.0, val_fraction=0.5, seed=1).save(tmp_path / "c.json")
    form.load(tmp_path / "c.json")
    assert panel.switches["kl_beta"].value == 3.0 and (builder.val_fraction.value, builder.seed.value) == (0.5, 1)
    assert builder.split_html.value == "12 training examples, 12 validation examples"


def test_alone_a_panel_has_a_form_of_its_own_with_the_configs_defaults():
    defaults = TrainConfig()
    panel = ForgettingPanel()
    assert {n: s.value for n, s in panel.switches.items()} == {n: getattr(defaults, n) for n in panel.switches}
    panel.set_mitigation("replay_fraction", 0.9)
    assert panel.form.config.replay_fraction == 0.9
    builder = DatasetBuilder(autosave=None)
    assert (builder.val_fraction.value, builder.seed.value) == (defaults.val_fraction, defaults.seed)
    panel.close()
    builder.close()


@pytest.mark.parametrize("link", ["form=", "monitor"])
def test_the_split_preview_is_the_split_training_makes(link, qa_data, tmp_path):
    form = ConfigForm()
    if link == "form=":
        builder = DatasetBuilder(autosave=None, form=form)
    else:  # the quickstart's way: builder and form made apart, the monitor links them
        builder = DatasetBuilder(autosave=None)
        TrainingMonitor(form=form, builder=builder)
    builder.load(qa_data)
    form.fields["val_fraction"].value = 0.3
    form.fields["seed"].value = 7
    assert (builder.val_fraction.value, builder.seed.value) == (0.3, 7)
    builder.val_fraction.value = 0.25  # and back: the view edits the form
    assert form.config.val_fraction == 0.25
    train, val = prepare_data(form.config, builder.dataset, None, RunDir(tmp_path / "run"))
    shown_train, shown_val = builder.split()
    trained_on = [json.loads(line) for line in (tmp_path / "run" / "data" / "val.jsonl").read_text().splitlines()]
    assert trained_on == [json.loads(line) for line in shown_val.to_jsonl().splitlines()]
    assert len(val) == len(shown_val) == 6 and len(train) == len(shown_train) == 18
    assert builder.split_html.value == "18 training examples, 6 validation examples"


def test_an_invalid_split_setting_shows_the_forms_message(qa_data):
    form = ConfigForm()
    builder = DatasetBuilder(autosave=None, form=form)
    builder.load(qa_data)
    builder.val_fraction.value = 0.8  # allowed by the config: no slider stops it at 0.5
    assert form.config.val_fraction == 0.8 and "validation examples" in builder.split_html.value
    builder.val_fraction.value = 1.0
    assert form.fields["val_fraction"].value == 1.0 and form.error.field == "val_fraction"
    assert "must be in [0, 1)" in builder._split_views[0].error.value and builder.split_html.value == ""


def test_the_studio_estimate_counts_the_data_tabs_tokens(qa_data):
    alone = ConfigForm()
    alone.show_estimate()
    assert NO_DATA in alone.estimate_html.value  # no data, no time
    s = ftnb.Studio(data=qa_data)
    est = s.form.show_estimate()
    tokens = s.builder.token_count()
    assert est["tokens_per_epoch"] == tokens > 0  # the Data tab's training split, in the model's tokens
    assert NO_DATA not in s.form.estimate_html.value and f"({tokens:,} tokens" in s.form.estimate_html.value
    s.builder.delete_example(0)  # the data changed: the next estimate counts it again
    s.builder.add_example([{"role": "user", "content": "A much longer question than the others, " * 5},
                           {"role": "assistant", "content": "And a much longer answer to it. " * 5}])
    s.form.fields["val_fraction"].value = 0.0
    assert s.form.show_estimate()["tokens_per_epoch"] == s.builder.token_count() > tokens
    s.close()
