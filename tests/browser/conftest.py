"""What the browser tests share: a real `jupyter lab` serving this checkout's built lab extension, and one headless
Chromium page on it (Playwright driving /usr/bin/chromium; it never downloads a browser).

Each test module gets its own lab: it defines a `root` fixture (the lab's notebook folder) and may override `lab_env`
(extra environment for the server and so for its kernels), `viewport`, and `frontend` (Notebook 7 instead of
JupyterLab: tests/browser/test_notebook7.py).

Without a browser, the built extension, playwright or jupyterlab the tests skip; with FTNB_REQUIRE_BROWSER=1 (CI)
they fail instead.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from labtools import wait_for

REPO = Path(__file__).resolve().parents[2]
BUILT = REPO / "ftnb" / "labextension"
CHROMIUM = os.environ.get("FTNB_CHROMIUM", "/usr/bin/chromium")
TOKEN = "ftnb-browser-test"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]


def missing():
    """Why the browser tests cannot run here (empty when they can)."""
    why = []
    if not Path(CHROMIUM).exists():
        why.append(f"no browser at {CHROMIUM} (apt-get install chromium)")
    if not (BUILT / "package.json").exists():
        why.append("the lab extension is not built (cd labextension && npm install && npm run build:prod)")
    for module, package in (("playwright.sync_api", "playwright"), ("jupyterlab", "jupyterlab")):
        try:
            __import__(module)
        except ImportError:
            why.append(f"the {package} python package is not installed")
    return why


@pytest.fixture(scope="session", autouse=True)
def browser_requirements():
    why = missing()
    if why and os.environ.get("FTNB_REQUIRE_BROWSER") == "1":
        pytest.fail("FTNB_REQUIRE_BROWSER=1, but " + "; ".join(why), pytrace=False)
    if why:
        pytest.skip("; ".join(why))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab_env(request):
    """Extra environment for the lab server (its kernels inherit it): a test module's LAB_ENV, if it has one."""
    return getattr(request.module, "LAB_ENV", {})


@pytest.fixture(scope="module")
def viewport():
    return {"width": 1400, "height": 850}


@pytest.fixture(scope="module")
def frontend():
    """The server's module (`python -m ...`), its own options, the page the tests open and what shows it is ready."""
    return {"module": "jupyterlab", "page": "/lab", "ready": ".jp-LauncherCard",
            "args": ["--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]}


@pytest.fixture(scope="module")
def lab(root, lab_env, frontend, tmp_path_factory):
    """`jupyter lab` (or `frontend`'s server) on `root` with a token, the server extension on, and this checkout's
    built lab extension."""
    home = tmp_path_factory.mktemp("lab-home")
    ext_dir = home / "jupyter" / "labextensions" / "@ftnb"
    ext_dir.mkdir(parents=True)
    (ext_dir / "labextension").symlink_to(BUILT, target_is_directory=True)
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port = free_port()
    env = {**os.environ, "JUPYTER_PATH": str(home / "jupyter"), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "HF_HUB_OFFLINE": "1", **lab_env}
    env.pop("FTNB_RUNS_DIR", None)
    cmd = [sys.executable, "-m", frontend["module"], "--allow-root", "--no-browser", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.token={TOKEN}", f"--notebook-dir={root}",
           "--ServerApp.jpserver_extensions={'ftnb.server': True}", f"--LabServerApp.user_settings_dir={home / 'settings'}",
           *frontend["args"]]
    with open(home / "lab.log", "w") as log:  # the server keeps its own copy of the file descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        assert proc.poll() is None, (home / "lab.log").read_text()[-3000:]
        try:
            req = urllib.request.Request(f"{url}/ftnb/runs", headers={"Authorization": f"token {TOKEN}"})
            return urllib.request.urlopen(req, timeout=5).status == 200
        except OSError:
            return False

    try:
        wait_for(up, 120, "jupyter lab to start")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(lab, viewport, frontend):
    """The lab's main page, loaded; `page.dialogs` and `page.errors` collect alerts and browser errors."""
    from playwright.sync_api import sync_playwright
    dialogs, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        page.set_default_timeout(30000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text} {m.location}"))
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        page.dialogs, page.errors = dialogs, errors
        page.goto(f"{lab}{frontend['page']}?token={TOKEN}")
        page.locator(frontend["ready"]).first.wait_for()
        yield page
        context.close()
        browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    page = item.funcargs.get("page")
    if report.failed and call.when == "call" and page is not None:  # what the browser showed, for the log
        path = Path(tempfile.gettempdir()) / f"ftnb-fail-{item.name}.png"
        try:
            page.screenshot(path=str(path))
            report.sections.append(("failure screenshot", str(path)))
        except Exception as e:  # noqa: BLE001  the browser itself may be what failed
            report.sections.append(("failure screenshot", f"none: {e}"))
    return report
