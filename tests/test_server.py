"""The server extension's REST API, against a real `jupyter server` with a token: listing, detail, stop (a real
training subprocess ends "stopped"), the template, and what it refuses (paths out of the root, no token, no XSRF)."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("jupyter_server")

from ftnb.server.handlers import runs_root
from ftnb.server.runs import PathRefused, find_runs, resolve_run

TOKEN = "ftnb-test-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_run(folder, state="finished", pid=None, step=3, total=10, metrics=None, config=None):
    """A run folder written by hand: what the server reads, without training."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"model": "tiny", "epochs": 1}))
    writer = {"pid": pid or os.getpid(), "host": socket.gethostname(), "heartbeat_s": 3600}  # beats for the module
    (folder / "status.json").write_text(json.dumps({"state": state, "step": step, "total_steps": total, "error": None,
                                                    **writer, "updated": time.time()}))
    if state == "running":  # a running run's writer holds its lock
        (folder / "run.lock").write_text(json.dumps({**writer, "since": time.time()}))
    lines = metrics if metrics is not None else [{"step": step, "loss": 1.25, "elapsed_s": 4.0}]
    (folder / "metrics.jsonl").write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n"
                                                  for line in lines))
    return folder


class Client:
    """Raw HTTP (http.client sends the path as given: no '..' clean-up on the way)."""

    def __init__(self, port):
        self.port = port

    def request(self, method, path, token=TOKEN, headers=None, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"token {token}"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        try:
            data = json.loads(raw, parse_constant=_refuse_constant) if raw else None
        except ValueError:
            data = raw.decode(errors="replace")
        return resp.status, data, resp

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, body=b"", **kw)

    def listing(self):
        status, data, _ = self.get("/ftnb/runs")
        assert status == 200, data
        return {r["path"]: r for r in data["runs"]}, data

    def wait_listing(self, predicate, timeout=30):
        deadline = time.time() + timeout
        while True:
            runs, _ = self.listing()
            if predicate(runs) or time.time() > deadline:
                return runs
            time.sleep(0.2)


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON a browser can parse")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The server root: a real finished run, hand-written runs at several depths, and things that must not show."""
    base = tmp_path_factory.mktemp("server")
    root = base / "root"
    import ftnb
    data = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    ftnb.train(model="tiny", data=data, output_dir=str(root / "runs"), run_name="trained", epochs=1, probe=False)
    fake_run(root / "runs" / "alive", state="running")  # pid: this test process, alive for the whole module
    fake_run(root / "a" / "b" / "deep")  # depth 3: found
    fake_run(root / "a" / "b" / "c" / "too-deep")  # depth 4: not searched
    fake_run(root / ".hidden" / "run")
    fake_run(root / "node_modules" / "run")
    fake_run(root / "runs" / "nan", metrics=['{"step": 3, "loss": NaN, "elapsed_s": Infinity}\n'])
    (root / "runs" / "broken").mkdir()
    (root / "runs" / "broken" / "config.json").write_text("{}")
    (root / "runs" / "broken" / "status.json").write_text("{not json")
    (root / "runs" / "nested").mkdir()  # 2 KB of brackets: deeper than the JSON reader recurses
    (root / "runs" / "nested" / "config.json").write_text("{}")
    (root / "runs" / "nested" / "status.json").write_text("[" * 2048)
    (root / "plain-folder").mkdir()
    # outside the root: a run the server must never read or stop, reached through symlinks
    outside = fake_run(base / "outside" / "secret-run", state="running", config={"secret": "do not serve"})
    (root / "link-out").symlink_to(outside, target_is_directory=True)
    leaky = fake_run(root / "runs" / "leaky")
    (leaky / "config.json").unlink()
    (leaky / "config.json").symlink_to(outside / "config.json")
    return root


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("jupyter-home")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_DATA_DIR": str(home / "data")}
    env.pop("FTNB_RUNS_DIR", None)
    cmd = [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", f"--port={port}",
           f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           "--ServerApp.jpserver_extensions={'ftnb.server': True}", "--FtnbServer.cache_seconds=0.2"]
    with open(home / "server.log", "w") as log:  # the server keeps its own copy of the file descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = Client(port)
    deadline = time.time() + 90
    while True:
        try:
            if client.get("/api/status")[0] == 200 and client.get("/ftnb/runs")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"jupyter server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(0.3)
    yield client
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_listing_finds_runs_with_paths_relative_to_the_root(server):
    runs, data = server.listing()
    assert data["root"] == ""
    assert {"runs/trained", "runs/alive", "a/b/deep", "runs/nan", "runs/broken", "runs/nested"} <= set(runs)
    assert runs["runs/nested"]["state"] == runs["runs/broken"]["state"] == "unreadable"
    assert not any(p.startswith((".hidden", "node_modules", "link-out")) or "too-deep" in p for p in runs)
    assert "plain-folder" not in runs
    trained = runs["runs/trained"]
    assert trained["name"] == "trained" and trained["state"] == "finished"
    assert trained["step"] == trained["total_steps"] >= 1
    assert isinstance(trained["loss"], float) and trained["elapsed_s"] is not None
    assert runs["runs/alive"]["state"] == "running"
    mtimes = [r["mtime"] for r in data["runs"]]
    assert mtimes == sorted(mtimes, reverse=True)


def test_unchanged_listing_revalidates_with_its_etag(server):
    status, _, resp = server.get("/ftnb/runs")
    etag = resp.getheader("Etag")
    assert status == 200 and etag
    status, body, _ = server.get("/ftnb/runs", headers={"If-None-Match": etag})  # nothing changes meanwhile
    assert status == 304 and body is None


def test_listing_survives_broken_runs_and_non_finite_numbers(server):
    runs, _ = server.listing()  # the client's parser refuses NaN/Infinity
    assert runs["runs/nan"]["loss"] == "nan" and runs["runs/nan"]["elapsed_s"] == "inf"
    assert runs["runs/broken"]["state"] == "unreadable"
    assert "not valid JSON" in runs["runs/broken"]["error"]


def test_detail_has_the_summary_and_config(server):
    status, data, _ = server.get("/ftnb/runs/runs/trained")
    assert status == 200
    assert data["path"] == "runs/trained" and data["state"] == "finished"
    assert data["config"]["model"] == "tiny" and data["config_error"] is None


def test_detail_never_reads_a_config_symlinked_from_outside(server):
    status, data, _ = server.get("/ftnb/runs/runs/leaky")
    assert status == 200
    assert data["config"] is None and "not a regular file" in data["config_error"]
    assert "do not serve" not in json.dumps(data)


def test_a_folder_that_is_not_a_run_is_404(server):
    for path in ("/ftnb/runs/plain-folder", "/ftnb/runs/runs", "/ftnb/runs/no/such/run"):
        status, data, _ = server.get(path)
        assert status == 404 and "not a run folder" in data["message"]
    assert server.post("/ftnb/runs/plain-folder/stop")[0] == 404


@pytest.mark.parametrize("path", [
    "/ftnb/runs/../link-out",
    "/ftnb/runs/%2e%2e/outside/secret-run",
    "/ftnb/runs/%2E%2E/%2E%2E/etc",
    "/ftnb/runs/runs/..%2f..%2foutside%2fsecret-run",
    "/ftnb/runs/runs/%2e%2e/%2e%2e/outside/secret-run",
    "/ftnb/runs/%2Fetc",
    "/ftnb/runs/%2F" + "tmp",
    "/ftnb/runs/link-out",
    "/ftnb/runs/runs/./trained",
])
def test_paths_out_of_the_root_are_refused(server, root, path):
    outside = root.parent / "outside" / "secret-run"
    status, data, _ = server.get(path)
    assert status in (403, 404)
    assert isinstance(data, dict) and data["message"]
    assert "do not serve" not in json.dumps(data)
    status, data, _ = server.post(path + "/stop")
    assert status in (403, 404) and data["message"]
    assert not (outside / "STOP").exists()


def test_symlink_out_of_the_root_is_403(server):
    status, data, _ = server.get("/ftnb/runs/link-out")
    assert status == 403 and "outside" in data["message"]


def test_stop_writes_the_stop_request(server, root):
    status, data, _ = server.post("/ftnb/runs/runs/alive/stop")
    assert status == 200 and data == {"path": "runs/alive", "stop_requested": True}
    assert (root / "runs" / "alive" / "STOP").exists()


def test_stop_of_a_run_that_is_not_running_is_409(server, root):
    status, data, _ = server.post("/ftnb/runs/runs/trained/stop")
    assert status == 409 and "not running" in data["message"]
    assert not (root / "runs" / "trained" / "STOP").exists()


def test_stop_never_follows_a_symlinked_status(server, root, tmp_path_factory):
    """Like GET, the stop reads status.json only as a small regular file: no field of an outside file in the answer,
    no 300 MB read."""
    outside = tmp_path_factory.mktemp("outside-status")
    (outside / "status.json").write_text(json.dumps({"state": "TOP-SECRET-VALUE", "step": 1}))
    with open(outside / "huge.json", "wb") as fh:
        fh.truncate(300 << 20)
    for name, target in (("linked-status", outside / "status.json"), ("huge-status", outside / "huge.json")):
        run = fake_run(root / "runs" / name, state="running")
        (run / "status.json").unlink()
        (run / "status.json").symlink_to(target)
        status, data, _ = server.post(f"/ftnb/runs/runs/{name}/stop")
        assert status == 409 and "unreadable" in data["message"], (name, status, data)
        assert "TOP-SECRET" not in json.dumps(data) and not (run / "STOP").exists()
        assert "TOP-SECRET" not in json.dumps(server.get(f"/ftnb/runs/runs/{name}")[1])


def test_a_dead_training_process_shows_as_interrupted(server, root):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        fake_run(root / "runs" / "dies", state="running", pid=proc.pid)
        runs = server.wait_listing(lambda r: "runs/dies" in r)
        assert runs["runs/dies"]["state"] == "running"
    finally:
        proc.kill()
        proc.wait()
    # status.json does not change when a process is killed: the cached summary must notice anyway
    runs = server.wait_listing(lambda r: r["runs/dies"]["state"] != "running")
    assert runs["runs/dies"]["state"] == "interrupted"
    assert server.post("/ftnb/runs/runs/dies/stop")[0] == 409


def test_requests_without_a_token_are_refused(server):
    for method, path in [("GET", "/ftnb/runs"), ("GET", "/ftnb/runs/runs/trained"), ("GET", "/ftnb/template"),
                         ("POST", "/ftnb/runs/runs/alive/stop")]:
        status, _, _ = server.request(method, path, token=None, body=b"" if method == "POST" else None)
        assert status in (401, 403), (method, path, status)
        status, _, _ = server.request(method, path, token="wrong", body=b"" if method == "POST" else None)
        assert status in (401, 403), (method, path, status)


def _cookies(resp):
    jar = {}
    for header, value in resp.getheaders():
        if header.lower() == "set-cookie":
            name, _, rest = value.partition("=")
            jar[name] = rest.split(";")[0]
    return jar


def test_post_with_a_login_cookie_needs_the_xsrf_token(server, root):
    """A browser is logged in by cookie; then only a request carrying the _xsrf token may stop a run."""
    run = fake_run(root / "runs" / "xsrf", state="running")
    jar = _cookies(server.get("/login", token=None)[2])  # the login page sets the _xsrf cookie
    jar.update(_cookies(server.get(f"/login?token={TOKEN}", token=None)[2]))  # a token in the URL logs in
    login = {k: v for k, v in jar.items() if k != "_xsrf"}
    assert login and "_xsrf" in jar, jar
    cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
    assert server.get("/ftnb/runs", token=None, headers={"Cookie": cookie})[0] == 200  # logged in
    status, data, _ = server.post("/ftnb/runs/runs/xsrf/stop", token=None, headers={"Cookie": cookie})
    assert status == 403 and "xsrf" in data["message"].lower()
    assert not (run / "STOP").exists()
    status, _, _ = server.post("/ftnb/runs/runs/xsrf/stop", token=None,
                               headers={"Cookie": cookie, "X-XSRFToken": jar["_xsrf"]})
    assert status == 200 and (run / "STOP").exists()


def test_template_is_the_quickstart_notebook(server):
    status, nb, _ = server.get("/ftnb/template")
    assert status == 200 and nb["nbformat"] == 4
    import nbformat
    nbformat.validate(nbformat.from_dict(nb))
    quickstart = Path(__file__).resolve().parent.parent / "notebooks" / "01_quickstart.ipynb"
    assert nb == json.loads(quickstart.read_text())


def test_a_real_run_stops_when_asked(server, root, train_forever):
    """A tiny model trains in another process; the API sees it running, asks it to stop, and it ends 'stopped'."""
    proc = train_forever(root / "live", "long")
    status_path = root / "live" / "long" / "status.json"
    deadline = time.time() + 120
    while not (status_path.exists() and json.loads(status_path.read_text()).get("step", 0) > 0):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the training subprocess did not start"
        time.sleep(0.2)
    runs = server.wait_listing(lambda r: r.get("live/long", {}).get("state") == "running")
    assert runs["live/long"]["total_steps"] > runs["live/long"]["step"]
    status, data, _ = server.post("/ftnb/runs/live/long/stop")
    assert status == 200, data
    proc.wait(120)
    assert json.loads(status_path.read_text())["state"] == "stopped"
    runs = server.wait_listing(lambda r: r["live/long"]["state"] != "running")
    assert runs["live/long"]["state"] == "stopped"


# -- the pieces, without a server --

def test_find_runs_depth_hidden_and_symlinks(root):
    found = {p.relative_to(root).as_posix() for p in find_runs(root)}
    assert "a/b/deep" in found and "runs/trained" in found
    assert not any("too-deep" in p or p.startswith((".hidden", "node_modules", "link-out")) for p in found)


@pytest.mark.parametrize("rel,status", [
    ("", 403), ("/etc", 403), ("..", 403), ("runs/../runs/trained", 403), ("runs//trained", 403),
    ("runs\\trained", 403), ("link-out", 403), ("plain-folder", 404), ("nope", 404),
])
def test_resolve_run_refuses(root, rel, status):
    with pytest.raises(PathRefused) as e:
        resolve_run(Path(os.path.realpath(root)), rel)
    assert e.value.status == status


def test_runs_root_option(tmp_path, monkeypatch):
    app = SimpleNamespace(root_dir=str(tmp_path))
    (tmp_path / "work" / "runs").mkdir(parents=True)
    assert runs_root(app, "") == (tmp_path.resolve(), "")
    assert runs_root(app, "work/runs") == ((tmp_path / "work" / "runs").resolve(), "work/runs")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    assert runs_root(app, str(elsewhere)) == (elsewhere.resolve(), str(elsewhere.resolve()))
    from ftnb.server.handlers import FtnbServer
    monkeypatch.setenv("FTNB_RUNS_DIR", "work/runs")
    assert FtnbServer().runs_dir == "work/runs"


def test_extension_points():
    import ftnb.server as srv
    assert srv._jupyter_server_extension_points() == [{"module": "ftnb.server"}]
    (ext,) = srv._jupyter_labextension_paths()
    assert ext["dest"] == "@ftnb/labextension" and ext["src"].endswith("ftnb/labextension")
    config = Path(__file__).resolve().parent.parent / "jupyter-config" / "jupyter_server_config.d" / "ftnb.json"
    assert json.loads(config.read_text()) == {"ServerApp": {"jpserver_extensions": {"ftnb.server": True}}}
