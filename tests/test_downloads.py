"""Getting models and data from the Hub, offline: huggingface_hub's and datasets' calls are recorded, not made."""
import json

import pytest

import ftnb.core.models as M
from ftnb import DataError, load_examples


class Recorder:
    """Stands in for a library function: records each call and returns (or raises) what `answer(**kw)` gives."""

    def __init__(self, answer):
        self.calls, self.answer = [], answer

    def __call__(self, *args, **kw):
        self.calls.append((args, kw))
        return self.answer(*args, **kw)


def fake_snapshot(folder, auto_map=False, code=False):
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", **({"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}
                                          if auto_map else {})}
    (folder / "config.json").write_text(json.dumps(config))
    if code:
        (folder / "modeling_x.py").write_text("# the repository's own code\n")
    return str(folder)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """huggingface_hub.snapshot_download recorded: the cache (local_files_only) holds what `cached` says; a download
    makes a snapshot with *.py when the patterns ask for it."""
    import huggingface_hub
    state = {"cached": None}

    def answer(repo_id, revision=None, local_files_only=False, allow_patterns=None, **kw):
        if local_files_only:
            if state["cached"] is None:
                raise FileNotFoundError("not in the cache")
            return state["cached"]
        return fake_snapshot(tmp_path / "downloaded" / (revision or "main"), auto_map=True,
                             code="*.py" in (allow_patterns or []))
    rec = Recorder(answer)
    rec.state = state
    monkeypatch.setattr(huggingface_hub, "snapshot_download", rec)
    monkeypatch.setattr(M, "hub_reachable", lambda timeout=3.0: True)
    return rec


def downloads(rec):
    return [kw for _, kw in rec.calls if not kw.get("local_files_only")]


def test_remote_code_is_fetched_only_when_trusted(hub):
    M.resolve_model("org/custom")
    M.resolve_model("org/custom", trust_remote_code=True)
    plain, trusted = downloads(hub)
    assert "*.py" not in plain["allow_patterns"] and "*.safetensors" in plain["allow_patterns"]
    assert "*.py" in trusted["allow_patterns"]


def test_a_cached_copy_without_its_code_is_completed_when_trusted(hub, tmp_path):
    hub.state["cached"] = fake_snapshot(tmp_path / "cache", auto_map=True, code=False)
    assert M.resolve_model("org/custom") == hub.state["cached"]  # untrusted: the cached weights as they are
    assert not downloads(hub)
    path = M.resolve_model("org/custom", trust_remote_code=True)
    assert path != hub.state["cached"] and "*.py" in downloads(hub)[0]["allow_patterns"]
    hub.state["cached"] = fake_snapshot(tmp_path / "cache2", auto_map=True, code=True)
    assert M.resolve_model("org/custom", trust_remote_code=True) == hub.state["cached"]  # complete: no download


def test_a_model_revision_is_pinned_in_every_hub_call(hub):
    M.resolve_model("org/name@v1.0")
    M.resolve_model("org/name@refs/pr/3")  # a revision may hold slashes
    calls = [(args, kw) for args, kw in hub.calls]
    assert [(a[0], kw["revision"]) for a, kw in calls] == [("org/name", "v1.0")] * 2 + [("org/name", "refs/pr/3")] * 2
    assert M.split_revision("org/name") == ("org/name", None)


def test_an_unreachable_pinned_model_says_how_to_get_that_revision(monkeypatch):
    monkeypatch.setattr(M, "_from_hf_cache", lambda *a: None)
    with pytest.raises(M.ModelNotFoundError, match=r"hf download org/name --revision v2"):
        M.resolve_model("org/name@v2")


def test_load_model_fetches_code_only_when_trusted(monkeypatch, tiny_path):
    seen = []
    real = M.resolve_model
    monkeypatch.setattr(M, "resolve_model", lambda name, **kw: seen.append(kw) or real(name, **kw))
    M.load_model(tiny_path)
    M.load_model(tiny_path, trust_remote_code=True)
    assert [kw.get("trust_remote_code") for kw in seen] == [False, True]


def test_an_adapter_names_its_pinned_base(tmp_path, tiny_path):
    from ftnb import TrainConfig
    from ftnb.core.checkpoint import save_weights
    model, tok, _ = M.load_model(tiny_path)
    model = M.apply_lora(model, TrainConfig(model="tiny", lora_r=2))
    save_weights(model, tok, tmp_path / "adapter", "org/name@v1.0")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "org/name" and saved["revision"] == "v1.0"


# -- datasets ---------------------------------------------------------------------------------------------------------

ROWS = [{"prompt": "What is 2 plus 2?", "completion": "4."}, {"prompt": "And 3 plus 3?", "completion": "6."}]


@pytest.fixture
def load_dataset(monkeypatch):
    import datasets
    rec = Recorder(lambda *a, **kw: ROWS)
    monkeypatch.setattr(datasets, "load_dataset", rec)
    return rec


@pytest.mark.parametrize("name,args,kw", [
    ("org/qa", ("org/qa", None), {"split": "train", "revision": None}),
    ("org/qa:test", ("org/qa", None), {"split": "test", "revision": None}),
    ("org/qa:main:test", ("org/qa", "main"), {"split": "test", "revision": None}),
    ("org/qa@v2:main:", ("org/qa", "main"), {"split": "train", "revision": "v2"}),
    ("org/qa@abc123:validation", ("org/qa", None), {"split": "validation", "revision": "abc123"}),
])
def test_hub_dataset_names_give_config_split_and_revision(load_dataset, name, args, kw):
    data = load_examples(name)
    assert len(data) == 2 and load_dataset.calls == [(args, kw)]


def test_too_many_parts_in_a_dataset_name_are_explained(load_dataset):
    with pytest.raises(DataError, match="'name:config:split'"):
        load_examples("org/qa:a:b:c")


MISSING = ("Config name is missing.\nPlease pick one among the available configs: ['en', 'fr']\nExample of usage:\n\t"
           "`load_dataset('org/multi', 'en')`")


def test_a_missing_config_is_named_with_the_choices(monkeypatch):
    import datasets

    def refuse(*a, **kw):
        raise ValueError(MISSING)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    names = Recorder(lambda *a, **kw: ["en", "fr", "de"])
    monkeypatch.setattr(datasets, "get_dataset_config_names", names)
    with pytest.raises(DataError) as e:
        load_examples("org/multi@v1:test")
    said = str(e.value)
    assert "has several configs; name one as 'org/multi:en:test' (its configs: en, fr, de)" in said
    assert "Offline" not in said and names.calls == [(("org/multi",), {"revision": "v1"})]

    def unreachable(*a, **kw):
        raise ConnectionError("no network")
    monkeypatch.setattr(datasets, "get_dataset_config_names", unreachable)  # datasets' own list is used then
    with pytest.raises(DataError, match=r"name one as 'org/multi:CONFIG:test' \(Config name is missing.*'en', 'fr'"):
        load_examples("org/multi:test")


def test_offline_is_suggested_only_for_network_trouble(monkeypatch):
    import datasets

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach the Hub")

    def unknown_split(*a, **kw):
        raise ValueError("Unknown split \"tset\". Should be one of ['train', 'test'].")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="Offline?"):
        load_examples("org/qa")
    monkeypatch.setattr(datasets, "load_dataset", unknown_split)
    with pytest.raises(DataError) as e:
        load_examples("org/qa:tset")
    assert "Unknown split" in str(e.value) and "Offline" not in str(e.value)


# -- progress bars ----------------------------------------------------------------------------------------------------

def test_downloads_show_progress_while_weight_loading_stays_quiet():
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    from ftnb.cli import _quiet_libraries
    hub_utils.enable_progress_bars()  # as in a fresh process: whatever an earlier test switched off
    try:
        _quiet_libraries()  # what `ftnb ...` does first (and the monitor before it trains)
        assert not hf_logging.is_progress_bar_enabled()  # transformers' "Loading weights" bars
        assert not hub_utils.are_progress_bars_disabled()  # huggingface_hub's download bars
        hub_utils.disable_progress_bars()  # a user who turned downloads off keeps them off
        M.quiet_loading_bars()
        assert hub_utils.are_progress_bars_disabled()
    finally:
        hf_logging.enable_progress_bar()
