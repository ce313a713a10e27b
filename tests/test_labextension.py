"""The lab extension's own unit tests (Jest), run from the Python suite so one command runs everything."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

EXT = Path(__file__).resolve().parent.parent / "labextension"


def test_jest_unit_tests():
    if not (shutil.which("npm") and (EXT / "node_modules").is_dir()):
        if os.environ.get("FTNB_REQUIRE_BROWSER") == "1":
            pytest.fail("npm or labextension/node_modules missing (pip install -e . runs npm install)")
        pytest.skip("npm or labextension/node_modules missing")
    r = subprocess.run(["npm", "test", "--silent"], cwd=EXT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
