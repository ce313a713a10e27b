"""A write that fails (disk full, read-only folder) stops the run with a clear message and keeps the last checkpoint."""
import errno

import pytest
import torch

import ftnb
import ftnb.core.checkpoint as C
from ftnb import RunDir, RunError


def failing_on(n, err, match):
    """A torch.save that raises OSError(err) on the n-th file whose name contains `match`."""
    real, seen = torch.save, [0]

    def save(obj, f, *a, **k):
        if match in str(f):
            seen[0] += 1
            if seen[0] == n:
                raise OSError(err, "No space left on device" if err == errno.ENOSPC else "Permission denied")
        return real(obj, f, *a, **k)
    return save


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_checkpoint_write_fails(tiny_cfg, qa_data, monkeypatch, err):
    monkeypatch.setattr(C.torch, "save", failing_on(2, err, "optimizer.pt"))
    with pytest.raises(RunError, match=r"could not write .*step-4.*earlier checkpoints are intact"):
        ftnb.train(tiny_cfg, qa_data, run_name="full", save_every=2, probe=False)
    rd = RunDir(f"{tiny_cfg.output_dir}/full")
    st = rd.status()
    assert st["state"] == "failed" and "could not write" in st["error"]
    assert [s for s, _ in rd.checkpoints()] == [2] and not list(rd.checkpoints_path.glob(".tmp-*"))
    monkeypatch.undo()
    assert ftnb.resume(rd.path).run_dir.status()["state"] == "finished"


def test_metrics_write_fails(tiny_cfg, qa_data, monkeypatch):
    real = RunDir.append_metrics

    def append(self, kind, step, data):
        if step == 3:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(self, kind, step, data)
    monkeypatch.setattr(RunDir, "append_metrics", append)
    with pytest.raises(RunError, match="could not write to the run folder.*Permission denied"):
        ftnb.train(tiny_cfg, qa_data, run_name="ro", save_every=2, probe=False)
    rd = RunDir(f"{tiny_cfg.output_dir}/ro")
    assert rd.status()["state"] == "failed" and [s for s, _ in rd.checkpoints()] == [2]
