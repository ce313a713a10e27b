"""Small helpers the browser tests share (imported by name: pytest puts this folder on sys.path)."""
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# FTNB_SCREENSHOTS=1 refreshes the README's images in docs/screenshots; otherwise a test run leaves tracked files alone
SHOTS = (REPO / "docs" / "screenshots" if os.environ.get("FTNB_SCREENSHOTS") == "1"
         else Path(tempfile.gettempdir()) / "ftnb-screenshots")
# a test module's LAB_ENV for kernels that train the tiny model on one thread each (2 cores: lab, browser, kernel)
TINY_KERNELS = {"FTNB_DEFAULT_MODEL": "tiny", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def wait_for(predicate, timeout, what):
    """Poll `predicate` every 0.2 s until it returns something true (returned), or fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while not (result := predicate()):
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return result


def state_of(run):
    """A run folder's status.json, or {} while it is absent or being replaced."""
    try:
        return json.loads((run / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
