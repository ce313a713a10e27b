"""The REST handlers. All need a logged-in user (token or cookie); POST also needs the XSRF token (Jupyter Server
checks it for cookie-authenticated requests; the lab's ServerConnection sends it)."""
import asyncio
import json
import os
from pathlib import Path

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from traitlets import Float, Unicode, default
from traitlets.config import Configurable

from ..core.rundir import RunDir
from .runs import PathRefused, RunIndex, read_config, resolve_run

# notebooks/01_quickstart.ipynb, copied into the package (tests/test_notebooks.py checks the copy is exact)
TEMPLATE = Path(__file__).resolve().parent.parent / "resources" / "quickstart.ipynb"


class FtnbServer(Configurable):
    """Settings of the ftnb server extension (`c.FtnbServer.runs_dir = ...` in jupyter_server_config.py, or
    `--FtnbServer.runs_dir=...` on the command line)."""

    runs_dir = Unicode(help="Folder searched for runs, up to three levels deep: absolute, or relative to the "
                            "server's root_dir. Empty: the root_dir itself. Default: $FTNB_RUNS_DIR.").tag(config=True)
    cache_seconds = Float(1.0, help="How long the folder scan and the listing are reused. Longer: less disk work "
                                    "with many runs and pollers; shorter: new runs appear sooner.").tag(config=True)

    @default("runs_dir")
    def _runs_dir_default(self):
        return os.environ.get("FTNB_RUNS_DIR", "")


class _Base(APIHandler):
    @property
    def index(self):
        return self.settings["ftnb_index"]

    def run_path(self, rel):
        try:
            return resolve_run(self.index.root, rel)
        except PathRefused as e:
            raise tornado.web.HTTPError(e.status, e.message) from None


class RunsHandler(_Base):
    _track_activity = False  # the sidebar polls all day: that is not a user being active (idle culling still works)

    @tornado.web.authenticated
    async def get(self):
        index = self.index
        if index.stale() and index.refreshing is None:  # one build at a time, in a worker thread
            index.refreshing = asyncio.get_running_loop().run_in_executor(None, index.build)
            index.refreshing.add_done_callback(self._built)
        if index.listing is None:
            await asyncio.shield(index.refreshing)  # the first listing: nothing to show yet
        # otherwise the last listing (at most a build old) while the next one is built
        body, self._ftnb_etag = index.listing
        self.set_header("Content-Type", "application/json")
        self.finish(body)  # 304 without a body when the client's If-None-Match is this ETag

    def compute_etag(self):
        return getattr(self, "_ftnb_etag", None)

    def _built(self, future):
        self.index.refreshing = None
        if not future.cancelled() and future.exception() is not None:
            self.log.error("ftnb: listing runs failed", exc_info=future.exception())


class RunHandler(_Base):
    @tornado.web.authenticated
    def get(self, rel, action=None):
        path = self.run_path(rel + (action or ""))
        config, config_error = read_config(path)
        self.finish(json.dumps({**self.index.summary(path), "config": config, "config_error": config_error}))

    @tornado.web.authenticated
    def post(self, rel, action=None):
        if action != "/stop":
            raise tornado.web.HTTPError(404, "unknown action")
        path = self.run_path(rel)
        state = RunDir(path).status().get("state")
        if state != "running":
            raise tornado.web.HTTPError(409, f"{rel} is not running (it is {state})")
        RunDir(path).request_stop()
        self.index.invalidate()
        self.log.info("ftnb: stop requested for %s", path)
        self.finish(json.dumps({"path": rel, "stop_requested": True}))


class TemplateHandler(_Base):
    @tornado.web.authenticated
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(TEMPLATE.read_bytes())


def runs_root(serverapp, runs_dir):
    """(absolute runs root, the label clients see: relative to the server root when inside it, else absolute)."""
    server_root = Path(os.path.realpath(os.path.expanduser(serverapp.root_dir)))
    root = Path(os.path.realpath(server_root / os.path.expanduser(runs_dir))) if runs_dir else server_root
    if root == server_root:
        return root, ""
    return root, root.relative_to(server_root).as_posix() if server_root in root.parents else str(root)


def setup_handlers(serverapp):
    cfg = FtnbServer(config=serverapp.config, parent=serverapp)
    root, label = runs_root(serverapp, cfg.runs_dir)
    web_app = serverapp.web_app
    web_app.settings["ftnb_index"] = RunIndex(root, label, max_age=cfg.cache_seconds)
    base = web_app.settings["base_url"]
    web_app.add_handlers(".*$", [
        (url_path_join(base, "ftnb/runs/?"), RunsHandler),
        (url_path_join(base, "ftnb/runs/(.+?)(/stop)?"), RunHandler),
        (url_path_join(base, "ftnb/template"), TemplateHandler),
    ])
    serverapp.log.info("ftnb: serving runs under %s", root)
