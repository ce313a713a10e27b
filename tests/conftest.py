import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def tiny_path():
    from ftnb.core.models import resolve_model
    return resolve_model("tiny")


@pytest.fixture
def qa_data():
    """24 short chat examples the tiny model can fit."""
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]


@pytest.fixture
def tiny_cfg(tmp_path):
    from ftnb import TrainConfig
    return TrainConfig(model="tiny", output_dir=str(tmp_path / "runs"), epochs=2, batch_size=4, learning_rate=1e-3,
                       val_fraction=0.2)


TRAIN_FOREVER = """
import sys, ftnb
data = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]
ftnb.train(model="tiny", data=data, output_dir=sys.argv[1], run_name=sys.argv[2], epochs=2000, batch_size=4,
           probe=False, eval_every=10**6, save_every=10**6)
"""


@pytest.fixture
def train_forever():
    """launch(output_dir, run_name) starts the tiny model training (for 2000 epochs) in another process and returns
    the Popen; whatever still runs when the test ends is killed."""
    procs = []

    def launch(output_dir, run_name):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", TRAIN_FOREVER, str(output_dir), run_name], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        return procs[-1]
    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
