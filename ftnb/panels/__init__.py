"""Notebook panels: ipywidgets views over ftnb.core. Each panel's buttons call plain methods you can call too."""
from .chat import Chat
from .compare import RunComparison
from .dataset import DatasetBuilder
from .export import ExportPanel
from .forgetting import ForgettingPanel
from .form import ConfigForm
from .monitor import TrainingMonitor
from .studio import Studio

__all__ = ["DatasetBuilder", "ConfigForm", "TrainingMonitor", "ForgettingPanel", "RunComparison", "ExportPanel",
           "Chat", "Studio"]
