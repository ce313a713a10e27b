"""ftnb's core: config, data, models, the training loop, events and run directories.

Never imports ipywidgets, plotly or IPython: the panels are views over this package, not part of it.
"""
from .batching import pack, tokenize_data
from .config import PRESETS, TrainConfig
from .data import ChatData, DataReport, load_examples
from .errors import ConfigError, DataError, FtnbError, ModelNotFoundError, RunError
from .events import Event, ProgressBar, Recorder
from .generate import compare, generate
from .models import load_model, resolve_model
from .rundir import RunDir, list_runs
from .train import Run, load_run, resume, train

__all__ = ["TrainConfig", "PRESETS", "ChatData", "DataReport", "load_examples", "pack", "tokenize_data",
           "ConfigError", "DataError", "FtnbError", "ModelNotFoundError", "RunError", "Event", "ProgressBar", "Recorder",
           "generate", "compare", "load_model", "resolve_model", "RunDir", "list_runs", "Run", "train", "resume",
           "load_run"]
