"""ftnb: fine-tune chat language models from a notebook, and watch what they forget.

Names are imported on first use, so `import ftnb` is instant (Jupyter imports it to find its extension hooks);
`dir(ftnb)` lists them all, so tab completion shows them before they are imported.

`ftnb.export` is the package of what comes after training (merge, model card, Hub upload); its functions are also
here under names of their own: `ftnb.export_model` (ftnb.export.export: merge a run into a transformers folder) and
`ftnb.export_gguf`, `ftnb.push_to_hub`. A name means one thing: `ftnb.export` never turns from a function into the package.
"""

# Jupyter looks for these hooks on the package (`jupyter server extension list`, `jupyter labextension develop .`)
from .server import _jupyter_labextension_paths, _jupyter_server_extension_points  # noqa: F401

_ELSEWHERE = {  # public name -> (module, attribute), beside everything in ftnb.core.__all__
    "bundled": ("ftnb.core.data", "bundled"), "Studio": ("ftnb.panels.studio", "Studio"),
    "export_model": ("ftnb.export.merge", "export"), "push_to_hub": ("ftnb.export.hub", "push_to_hub"),
    "export_gguf": ("ftnb.export.gguf", "export_gguf"), "benchmark": ("ftnb.evaluate.harness", "benchmark"),
}
_PACKAGES = ("core", "evaluate", "export", "panels")  # sub-packages, found by attribute access too


def __getattr__(name):
    """ftnb.train, ftnb.TrainConfig ... (everything in ftnb.core.__all__), ftnb.bundled, ftnb.Studio,
    ftnb.export_model, ftnb.export_gguf, ftnb.push_to_hub, ftnb.benchmark, and the sub-packages ftnb.evaluate,
    ftnb.export and ftnb.panels."""
    import importlib
    if name == "__version__":
        return _version()
    if name in _ELSEWHERE:
        module, attr = _ELSEWHERE[name]
        return getattr(importlib.import_module(module), attr)
    if name in _PACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if not name.startswith("_"):
        core = importlib.import_module("ftnb.core")
        if name in core.WHERE:
            return core.lookup(name)
    raise AttributeError(f"module 'ftnb' has no attribute {name!r}")


def _version():
    """The installed version; one number with the lab extension's, set in labextension/package.json (pyproject.toml's
    [tool.hatch.version] reads it from there)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("ftnb")
    except PackageNotFoundError:  # a checkout on sys.path, never installed
        import json
        from pathlib import Path
        package = Path(__file__).resolve().parent.parent / "labextension" / "package.json"
        return json.loads(package.read_text())["version"]


def __dir__():
    from .core import WHERE
    return sorted({*globals(), "__version__", *WHERE, *_ELSEWHERE, *_PACKAGES})
