"""ftnb: fine-tune chat language models from a notebook, and watch what they forget.

Names are imported on first use, so `import ftnb` is instant (Jupyter imports it to find its extension hooks).
"""
__version__ = "0.1.0"

# Jupyter looks for these hooks on the package (`jupyter server extension list`, `jupyter labextension develop .`)
from .server import _jupyter_labextension_paths, _jupyter_server_extension_points  # noqa: F401


def __getattr__(name):
    """ftnb.train, ftnb.TrainConfig ... (everything in ftnb.core.__all__), ftnb.bundled and ftnb.Studio."""
    if name == "bundled":
        from .core.data import bundled
        return bundled
    if name == "Studio":
        from .panels.studio import Studio
        return Studio
    if not name.startswith("_") and name != "core":
        import importlib
        core = importlib.import_module("ftnb.core")
        if name in core.WHERE:
            return core.lookup(name)
    raise AttributeError(f"module 'ftnb' has no attribute {name!r}")
