"""Nothing from someone else's run folder or model folder runs code."""
import pickle

import pytest

import ftnb
from ftnb import ModelNotFoundError, RunError


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


def test_a_poisoned_optimizer_state_is_refused(tiny_cfg, qa_data, tmp_path):
    run = ftnb.train(tiny_cfg, qa_data, run_name="p", probe=False, max_steps=2, save_every=1)
    step, folder = run.run_dir.checkpoints()[0]
    marker = tmp_path / "pwned"
    (folder / "optimizer.pt").write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(RunError, match="could not be loaded safely"):
        ftnb.resume(run.run_dir.path, checkpoint=step)
    assert not marker.exists()


def test_pickle_weights_need_explicit_permission(tmp_path):
    from ftnb.core.models import load_model
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(str(tmp_path / "pwned"))))
    with pytest.raises(ModelNotFoundError, match="pickle"):
        load_model(str(tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_remote_code_is_off_by_default():
    assert ftnb.TrainConfig().trust_remote_code is False
