"""The installed package enables its JupyterLab extension and its server extension (what `pip install .` promises)."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("jupyter") is None, reason="JupyterLab is not installed")


def run(*args):
    r = subprocess.run(["jupyter", *args], capture_output=True, text=True, timeout=120)
    return r.stdout + r.stderr


def test_lab_extension_is_enabled():
    out = run("labextension", "list")
    line = next((x for x in out.splitlines() if "@ftnb/labextension" in x), "")
    if not line and os.environ.get("FTNB_REQUIRE_BROWSER") != "1":
        pytest.skip("the lab extension was not built (no Node.js at install time)")
    assert "enabled" in line and "OK" in line, out


def test_server_extension_is_enabled():
    out = run("server", "extension", "list")
    assert any("ftnb.server" in x and "enabled" in x for x in out.splitlines()), out
    assert any("ftnb.server" in x and "OK" in x for x in out.splitlines()), out


ROOT = Path(__file__).resolve().parent.parent


def test_one_version_for_the_package_and_the_lab_extension():
    """labextension/package.json holds the version; pyproject.toml reads it (hatch-nodejs-version), ftnb reports it."""
    import ftnb
    version = json.loads((ROOT / "labextension" / "package.json").read_text())["version"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'source = "nodejs"' in pyproject and 'path = "labextension/package.json"' in pyproject
    assert ftnb.__version__ == version, "reinstall after bumping labextension/package.json (pip install -e .)"
    built = ROOT / "ftnb" / "labextension" / "package.json"
    if built.exists():
        assert json.loads(built.read_text())["version"] == version


def test_the_sdist_carries_the_built_lab_extension_and_its_wheel_needs_no_node(tmp_path):
    """`python -m build --sdist` includes ftnb/labextension (git-ignored), and a wheel built from that sdist installs
    it without running npm: `node` and `npm` on PATH only record that they were called. About 10 s."""
    for module in ("build", "hatchling", "hatch_jupyter_builder", "hatch_nodejs_version"):
        pytest.importorskip(module)
    if not (ROOT / "ftnb" / "labextension" / "static" / "style.js").exists():
        if os.environ.get("FTNB_REQUIRE_BROWSER") == "1":
            pytest.fail("the lab extension is not built")
        pytest.skip("the lab extension is not built (no Node.js at install time)")
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir"]
    subprocess.run([*build, str(tmp_path), "--sdist", str(ROOT)], check=True, capture_output=True, timeout=300)
    sdist = next(tmp_path.glob("ftnb-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "src", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    top = names[0].split("/")[0]
    static = [n for n in names if n.startswith(f"{top}/ftnb/labextension/static/")]
    assert f"{top}/ftnb/labextension/package.json" in names and f"{top}/ftnb/labextension/static/style.js" in names
    assert any(re.search(r"/remoteEntry\.[0-9a-f]+\.js$", n) for n in static), static
    assert not any("/node_modules/" in n for n in names)

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("node", "npm", "jlpm"):
        (fake_bin / tool).write_text(f"#!/bin/sh\necho {tool} >> {tmp_path / 'called'}\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([*build, str(tmp_path / "wheel"), "--wheel", str(tmp_path / "src" / top)], env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not (tmp_path / "called").exists(), (tmp_path / "called").read_text()
    wheel = next((tmp_path / "wheel").glob("ftnb-*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        shared = [n for n in whl.namelist() if "/share/jupyter/labextensions/@ftnb/labextension/" in n]
    version = json.loads((ROOT / "labextension" / "package.json").read_text())["version"]
    assert wheel.name.startswith(f"ftnb-{version}-") and top == f"ftnb-{version}"
    assert {"package.json", "install.json", "static/style.js"} <= {n.split("@ftnb/labextension/")[1] for n in shared}
