import json

import pytest

from ftnb import PRESETS, ConfigError, TrainConfig


@pytest.mark.parametrize("field,value,words", [
    ("learning_rate", 0, "learning_rate"), ("learning_rate", 5.0, "(0, 1]"), ("method", "qlora", "'lora', 'full'"),
    ("lora_r", 0, "at least 1"), ("val_fraction", 1.0, "[0, 1)"), ("batch_size", 0, "at least 1"),
    ("micro_batch_tokens", 100, "max_seq_len"), ("device", "tpu", "'cuda'"), ("run_name", "../x", "plain folder"),
    ("epochs", float("nan"), "positive"),
])
def test_validation_names_the_field(field, value, words):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value})
    assert e.value.field == field
    assert words in str(e.value)


def test_round_trip(tmp_path):
    cfg = TrainConfig(model="tiny", lora_r=4, columns={"prompt": "q", "completion": "a"}, sample_prompts=["hi"])
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text())["lora_r"] == 4


def test_unknown_setting_is_named(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"lora_rank": 8}))
    with pytest.raises(ConfigError, match="lora_rank"):
        TrainConfig.load(tmp_path / "c.json")


def test_broken_json_names_the_file(tmp_path):
    (tmp_path / "c.json").write_text("{oops")
    with pytest.raises(ConfigError, match="c.json is not valid JSON"):
        TrainConfig.load(tmp_path / "c.json")


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid(name):
    cfg = TrainConfig.from_preset(name, model="tiny")
    assert cfg.model == "tiny"
    assert PRESETS[name]["help"]


def test_every_field_has_help_and_group():
    for name, meta in TrainConfig.field_help().items():
        assert len(meta["help"]) > 20, name
        assert meta["group"] in ("model", "lora", "data", "training", "forgetting", "runtime"), name
