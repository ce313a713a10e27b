"""Jupyter hooks for ftnb: the server extension behind the JupyterLab runs sidebar, and the lab extension's files.

    GET  /ftnb/runs              {"root", "runs": [summary, ...]}: every run folder under the root, newest first
    GET  /ftnb/runs/<path>       one run's summary and its config.json
    POST /ftnb/runs/<path>/stop  ask the process training that run to stop (writes STOP)
    GET  /ftnb/template          the quickstart notebook

Nothing here imports jupyter_server at module level: `import ftnb` must work without it.
"""
from pathlib import Path

LABEXTENSION_NAME = "@ftnb/labextension"


def _jupyter_labextension_paths():
    # absolute, so it works whether this is reached as ftnb._jupyter_labextension_paths or from ftnb.server
    return [{"src": str(Path(__file__).resolve().parent.parent / "labextension"), "dest": LABEXTENSION_NAME}]


def _jupyter_server_extension_points():
    return [{"module": "ftnb.server"}]


def _load_jupyter_server_extension(serverapp):
    from .handlers import setup_handlers
    setup_handlers(serverapp)


load_jupyter_server_extension = _load_jupyter_server_extension  # the name older servers look for
