import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


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
