import json

import pytest

from ftnb import TrainConfig
from ftnb.panels import ConfigForm


def test_form_is_generated_from_the_config_and_validates_inline():
    form = ConfigForm()
    assert set(form.fields) == set(TrainConfig.field_help())
    assert form.fields["lora_r"].tooltip == TrainConfig.field_help()["lora_r"]["help"]
    assert form.config.model == "tiny"  # FTNB_DEFAULT_MODEL
    form.fields["learning_rate"].value = 5.0
    assert "(0, 1]" in form.errors["learning_rate"].value and "learning_rate" in form.status.value
    try:
        form.config
        raise AssertionError("an invalid form must not hand out a config")
    except ValueError as e:
        assert "learning_rate" in str(e)
    form.fields["learning_rate"].value = 3e-4
    assert form.errors["learning_rate"].value == "" and form.config.learning_rate == 3e-4


def test_presets_and_json_round_trip(tmp_path):
    form = ConfigForm()
    form.preset.value = "full-finetune"
    form.apply_preset_button.click()
    assert form.config.method == "full" and form.config.learning_rate == 2e-5 and form.config.model == "tiny"
    form.fields["sample_prompts"].value = "one\ntwo"
    form.fields["columns"].value = '{"prompt": "q"}'
    form.path.value = str(tmp_path / "cfg.json")
    form.save_button.click()
    saved = json.loads((tmp_path / "cfg.json").read_text())
    assert saved["sample_prompts"] == ["one", "two"] and saved["columns"] == {"prompt": "q"}
    other = ConfigForm()
    other.path.value = str(tmp_path / "cfg.json")
    other.load_button.click()
    assert other.config == form.config


@pytest.mark.parametrize("flops", [None, 1e15, 1e7])  # as measured here; an idle fast machine; a slow one
def test_estimate_before_running(flops, monkeypatch):
    from ftnb.core import estimate
    if flops:
        monkeypatch.setattr(estimate, "matmul_flops", lambda device_type: flops)
    form = ConfigForm()
    est = form.show_estimate(tokens_per_epoch=10_000)
    assert est["params"] > 0 and 0 < est["trainable_params"] < est["params"]
    # the tiny model's epoch takes milliseconds on a fast machine: a time, never rounded to nothing
    assert est["memory_gb"]["total"] > 0 and est["seconds_per_epoch"] > 0
    html = form.estimate_html.value
    assert "per epoch" in html and "memory" in html and "101K parameters" in html
    if flops == 1e15:
        assert "under a second per epoch" in html
    elif flops == 1e7:
        assert f"{est['seconds_per_epoch'] / 60:.1f} min per epoch" in html
    form.fields["micro_batch_tokens"].value = 900_000
    form.fields["max_seq_len"].value = 900_000
    form.fields["batch_size"].value = 1000
    est = form.show_estimate(tokens_per_epoch=10_000)
    if not est["fits"]:
        assert "not fit" in form.estimate_html.value
