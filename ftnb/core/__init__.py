"""ftnb's core: config, data, models, the training loop, events and run directories.

Never imports ipywidgets, plotly or IPython: the panels are views over this package, not part of it. Names are
imported on first use, so the Jupyter server can read run folders (rundir, metrics) without importing torch.
"""
import importlib

WHERE = {  # public name -> the module that defines it
    "TrainConfig": "config", "PRESETS": "config", "ChatData": "data", "DataReport": "data", "load_examples": "data",
    "pack": "batching", "tokenize_data": "batching", "ConfigError": "errors", "DataError": "errors",
    "FtnbError": "errors", "ModelNotFoundError": "errors", "RunError": "errors", "Event": "events",
    "ProgressBar": "events", "Recorder": "events", "generate": "generate", "compare": "generate",
    "chat_stream": "chat", "Conversation": "chat",
    "load_model": "models", "resolve_model": "models", "RunDir": "rundir", "list_runs": "rundir", "Run": "run",
    "train": "train", "resume": "train", "load_run": "saved", "probe_run": "probe_saved", "probe_model": "probe_saved",
    "format_summary": "probe",
}
__all__ = list(WHERE)


def lookup(name):
    """The public object `name`, taken from its module: `ftnb.train` is the function even once the module
    `ftnb.core.train` has been imported (which makes the package attribute `train` that module)."""
    return getattr(importlib.import_module(f"{__name__}.{WHERE[name]}"), name)


def __getattr__(name):
    if name in WHERE:
        return lookup(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
