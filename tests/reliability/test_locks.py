"""Who writes a run (issue 13, items 7 and 8): a heartbeat tells a frozen or silenced writer from a slow one, and a
lock is judged by host, boot and process start time, is never seen half written, and can be taken over."""
import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import ftnb
import ftnb.core.rundir as rundir
from ftnb import RunDir, RunError


@pytest.fixture
def sleeper():
    """A live process that is not this one (its PID and start time)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield {"pid": proc.pid, "host": socket.gethostname(), "boot": rundir._boot_id(),
           "start": rundir._start_time(proc.pid)}
    proc.kill()
    proc.wait()


def running_folder(folder, writer, updated):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": "tiny"}))
    (folder / "status.json").write_text(json.dumps({"state": "running", "step": 3, "total_steps": 9, **writer,
                                                    "updated": updated, "heartbeat_s": 10}))
    (folder / "run.lock").write_text(json.dumps({**writer, "since": updated, "heartbeat_s": 10}))
    return RunDir(folder)


# -- item 7: the heartbeat ---------------------------------------------------------------------------------------------

def test_a_run_whose_heartbeat_stopped_is_not_responding(tmp_path, sleeper):
    fresh = running_folder(tmp_path / "fresh", sleeper, time.time())
    frozen = running_folder(tmp_path / "frozen", sleeper, time.time() - 3600)
    assert fresh.status()["state"] == "running"
    st = frozen.status()
    assert st["state"] == "not responding" and "no heartbeat for 36" in st["error"]
    assert {r["name"]: r["state"] for r in ftnb.list_runs(tmp_path)} == {"fresh": "running",
                                                                         "frozen": "not responding"}
    assert fresh.status(now=time.time() + 120)["state"] == "not responding"  # 6 missed beats of 10 s


def test_the_heartbeat_beats_while_a_step_takes_long(tiny_cfg, qa_data, monkeypatch):
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.1)
    seen = []

    def slow(ev):  # one long pause inside the run (a slow step, a long evaluation)
        if ev.kind == "log" and ev.step == 2:
            for _ in range(8):
                time.sleep(0.1)
                seen.append(json.loads(ev.run.run_dir.status_path.read_text())["updated"])
    run = ftnb.train(tiny_cfg, qa_data, run_name="slow", probe=False, max_steps=3, subscribers=[slow])
    assert len(set(seen)) >= 3  # refreshed during the pause
    assert not any(t.name == "ftnb-heartbeat" and t.is_alive() for t in threading.enumerate())
    assert run.run_dir.status()["state"] == "finished"


def full_disk_at_step_3(monkeypatch):
    """A metrics line cannot be written at step 3 (the run fails), and neither can the failed status."""
    real_append, real_status = RunDir.append_metrics, RunDir.write_status

    def append(self, kind, step, data):
        if step == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, kind, step, data)

    def write_status(self, state, **fields):
        if state == "failed":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_status(self, state, **fields)
    monkeypatch.setattr(RunDir, "append_metrics", append)
    monkeypatch.setattr(RunDir, "write_status", write_status)


def test_a_full_disk_while_writing_the_failure(tiny_cfg, qa_data, monkeypatch):
    """status.json is left saying "running", but no reader believes it, and the caller is told."""
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.05)
    full_disk_at_step_3(monkeypatch)
    with pytest.warns(UserWarning, match="could not record the failure"):
        with pytest.raises(RunError, match="No space left") as info:
            ftnb.train(tiny_cfg, qa_data, run_name="full", probe=False, max_steps=6)
    assert any("not responding" in note for note in info.value.__notes__)
    rd = RunDir(f"{tiny_cfg.output_dir}/full")
    assert json.loads(rd.status_path.read_text())["state"] == "running"  # what the disk holds
    before = rd.status_path.stat().st_mtime_ns
    time.sleep(0.3)
    assert rd.status_path.stat().st_mtime_ns == before  # no heartbeat keeps it alive
    assert rd.status()["state"] == "interrupted"  # its writer let go of the run
    assert ftnb.list_runs(tiny_cfg.output_dir)[0]["state"] == "interrupted"


def test_the_monitor_shows_the_failed_status_write(tiny_cfg, qa_data, monkeypatch):
    from ftnb.panels import TrainingMonitor
    full_disk_at_step_3(monkeypatch)
    monitor = TrainingMonitor(config=tiny_cfg.replace(run_name="m", probe=False, max_steps=6), data=qa_data)
    with pytest.warns(UserWarning, match="could not record the failure"):
        monitor.start()
        monitor.wait(120)
    assert "No space left" in monitor.status.value and "could not record the failure" in monitor.status.value


# -- item 8: locks -----------------------------------------------------------------------------------------------------

def test_a_reused_pid_does_not_hold_a_lock(tmp_path):
    me = rundir.this_process()
    if me["start"] is None:
        pytest.skip("process start times are read from /proc (Linux)")
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.lock_path.write_text(json.dumps({**me, "start": me["start"] - 1}))  # this PID, another process's start
    rd.acquire_lock()
    assert json.loads(rd.lock_path.read_text())["start"] == me["start"]


def test_a_lock_from_another_host(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.lock_path.write_text(json.dumps({"pid": 4242, "host": "preempted-node-7", "heartbeat_s": 10}))
    with pytest.raises(RunError, match=r"process 4242 on preempted-node-7.*ftnb resume .* --force"):
        rd.acquire_lock()  # its heartbeat is fresh: it may be training there now
    old = time.time() - 3600
    os.utime(rd.lock_path, (old, old))  # an hour without a heartbeat: that node is gone
    rd.acquire_lock()
    assert json.loads(rd.lock_path.read_text())["pid"] == os.getpid()
    rd.lock_path.write_text(json.dumps({"pid": 4242, "host": "preempted-node-7"}))
    rd.acquire_lock(force=True)
    assert json.loads(rd.lock_path.read_text())["pid"] == os.getpid()


def test_resume_takes_over_with_force(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, run_name="r", probe=False, max_steps=4, save_every=2)
    lock = {"pid": 4242, "host": "another-node", "heartbeat_s": 10}
    run.run_dir.lock_path.write_text(json.dumps(lock))
    with pytest.raises(RunError, match="--force"):
        ftnb.resume(run.run_dir.path, max_steps=6)
    assert json.loads(run.run_dir.lock_path.read_text()) == lock  # refused: left as it was
    from ftnb.cli import main
    main(["resume", str(run.run_dir.path), "--force"])
    assert run.run_dir.status()["state"] == "finished" and not run.run_dir.lock_path.exists()


def test_a_half_written_lock_is_a_leftover_not_an_error(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.lock_path.write_text('{"pid": 12')
    old = time.time() - 60
    os.utime(rd.lock_path, (old, old))
    rd.acquire_lock()
    assert json.loads(rd.lock_path.read_text())["pid"] == os.getpid()


def test_a_lock_in_its_write_window_is_left_to_its_writer(tmp_path, sleeper):
    """An older ftnb creates its lock empty and writes it a moment later: that empty lock is not deleted."""
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.lock_path.write_text("")
    writer = threading.Timer(0.3, lambda: rd.lock_path.write_text(json.dumps(sleeper)))
    writer.start()
    with pytest.raises(RunError, match=f"being written by process {sleeper['pid']}"):
        rd.acquire_lock()
    writer.join()
    assert json.loads(rd.lock_path.read_text()) == sleeper


def test_a_new_lock_is_never_seen_empty(tmp_path, monkeypatch):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    seen = []
    real_link = os.link

    def link(src, dst, *a, **k):
        real_link(src, dst, *a, **k)
        seen.append(rd.lock_path.read_text())  # the moment the lock exists
    monkeypatch.setattr(os, "link", link)
    rd.acquire_lock()
    assert json.loads(seen[0])["pid"] == os.getpid()
