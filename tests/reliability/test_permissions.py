"""A run's files and folders get the permissions the umask gives: with 022 a teammate or a server running as another
user can read them all; with 077 nobody but the owner can."""
import os
import stat

import pytest

import ftnb
from ftnb.export import export


@pytest.fixture
def umask():
    def set_umask(mask):
        os.umask(mask)
    before = os.umask(0o022)
    yield set_umask
    os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_run_files_follow_the_umask(tiny_cfg, qa_data, tmp_path, umask, mask):
    umask(mask)
    run = ftnb.train(tiny_cfg, qa_data, run_name="shared", epochs=1, save_every=2, probe_every=-1)
    export(run.run_dir.path, tmp_path / "runs" / "merged")
    root = run.run_dir.path
    for name in ("checkpoints", "adapter", "data", "probe", "status.json", "metrics.jsonl", "config.json"):
        assert (root / name).exists(), name  # all of these are checked below
    assert run.run_dir.checkpoints()
    paths = [root, *root.rglob("*"), tmp_path / "runs" / "merged", *(tmp_path / "runs" / "merged").rglob("*")]
    wrong = [f"{p}: {stat.filemode(p.stat().st_mode)}" for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~mask]
    assert not wrong
