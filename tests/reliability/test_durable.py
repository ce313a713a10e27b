"""Durability beyond a killed process: checkpoints and the folders they are renamed in are fsynced; a kill between the
two renames of a folder swap loses neither folder; an export that fails leaves the previous export in place."""
import errno
import os
import re
import signal
import subprocess
import sys

import pytest
import transformers

import ftnb
from ftnb import RunDir, RunError
from ftnb.core.durable import atomic_dir
from ftnb.export import export

KILL_MID_SWAP = """
import os, signal, sys
from pathlib import Path
from ftnb.core.durable import atomic_dir
real, n = os.replace, [0]
def replace(src, dst):  # the swap's renames: final -> hidden old name, then new -> final; die between them
    n[0] += 1
    if n[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
atomic_dir(Path(sys.argv[1]), lambda tmp: (tmp / "weights").write_text("new"))
"""


@pytest.mark.parametrize("recovery", ["clean_partial", "atomic_dir"])
def test_kill_between_the_renames_of_a_swap(tmp_path, recovery):
    rd = RunDir(tmp_path / "run")
    final = rd.checkpoints_path / "step-4"
    final.mkdir(parents=True)
    (final / "weights").write_text("old")
    (final / "trainer_state.json").write_text('{"step": 4}')
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SWAP, str(final)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists()  # the kill came between the renames: the old folder is hidden, the new one not in place
    if recovery == "clean_partial":  # what resume does first
        rd.clean_partial()
        assert (final / "weights").read_text() == "old"
        assert [p.name for p in rd.checkpoints_path.iterdir()] == ["step-4"]  # the killed write's folder is gone too
    else:  # the next write of the same folder puts the old one back first, then replaces it
        seen = []

        def write(tmp):
            seen.append((final / "weights").read_text())
            (tmp / "weights").write_text("newer")
            (tmp / "trainer_state.json").write_text('{"step": 4}')
        atomic_dir(final, write)
        assert seen == ["old"] and (final / "weights").read_text() == "newer"
    assert [s for s, _ in rd.checkpoints()] == [4]
    assert not list(rd.checkpoints_path.glob(".prev-*"))


def test_checkpoints_and_renames_are_fsynced(tiny_cfg, qa_data, monkeypatch):
    synced, real = set(), os.fsync

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}"))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    run = ftnb.train(tiny_cfg, qa_data, run_name="sync", epochs=1, save_every=2, probe=False)
    rd = run.run_dir
    # the files were synced under their temporary folder's name, before it was renamed to its final one
    synced = {re.sub(r"/\.tmp-([^/]+)-[0-9a-f]+(?=/|$)", r"/\1", p) for p in synced}
    written = [rd.path / "adapter"] + [folder for _, folder in rd.checkpoints()]
    assert len(written) == 3  # adapter/ and the checkpoints of steps 4 and 5 (step 2's was pruned)
    for folder in written:
        for p in [folder, *folder.rglob("*")]:
            assert str(p.resolve()) in synced, f"{p} was not fsynced"
    for parent in (rd.path, rd.checkpoints_path, rd.path / "data"):  # renames in them: status.json, checkpoints, data
        assert str(parent.resolve()) in synced, f"{parent} was not fsynced after a rename in it"


def test_export_overwrite_that_fails_keeps_the_old_export(tiny_cfg, qa_data, tmp_path, monkeypatch):
    run = ftnb.train(tiny_cfg, qa_data, run_name="exp", epochs=1, probe=False)
    out = tmp_path / "merged"
    export(run.run_dir.path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full)
    with pytest.raises(RunError) as failed:
        export(run.run_dir.path, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert re.search(f"could not write {out}: No space left on device.*{out} is as it was", str(failed.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "runs"]  # no temporary or swapped-out folder
    monkeypatch.undo()
    assert export(run.run_dir.path, out, overwrite=True)["merged"]
