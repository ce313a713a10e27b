"""One writer per run folder; two runs in two folders (two notebooks) at once both succeed."""
import threading

import pytest

import ftnb
from ftnb import RunError


def test_two_runs_in_two_folders_at_once(tiny_cfg, qa_data):
    results = {}

    def go(name):
        results[name] = ftnb.train(tiny_cfg, qa_data, run_name=name, probe=False)
    threads = [threading.Thread(target=go, args=(n,)) for n in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert {r.run_dir.status()["state"] for r in results.values()} == {"finished"}


def test_a_second_writer_into_the_same_folder_fails_clearly(tiny_cfg, qa_data):
    started, release = threading.Event(), threading.Event()

    def hold(ev):
        if ev.kind == "log" and ev.step == 2:
            started.set()
            release.wait(60)
    t = threading.Thread(target=ftnb.train, args=(tiny_cfg, qa_data),
                         kwargs=dict(run_name="one", probe=False, save_every=1, subscribers=[hold]))
    t.start()
    assert started.wait(60)
    with pytest.raises(RunError, match="being written by process"):
        ftnb.resume(f"{tiny_cfg.output_dir}/one")
    release.set()
    t.join(60)
