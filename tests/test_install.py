"""The installed package enables its JupyterLab extension and its server extension (what `pip install .` promises)."""
import os
import shutil
import subprocess

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
