import subprocess
import sys
import threading
import time

import ipywidgets as w
import pytest

from ftnb import RunDir
from ftnb.panels import ConfigForm, DatasetBuilder, TrainingMonitor


def panels(qa_data, **settings):
    builder = DatasetBuilder.from_source(qa_data, autosave=None)
    form = ConfigForm()
    for k, v in {"epochs": 2.0, "batch_size": 4, "learning_rate": 1e-3, "probe": False, **settings}.items():
        form.fields[k].value = v
    return builder, form, TrainingMonitor(form=form, builder=builder)


def test_start_button_trains_and_every_logged_point_reaches_the_chart(qa_data):
    builder, form, m = panels(qa_data)
    m.start_button.click()
    m.wait(120)
    assert m.history.state == "finished" and m.error is None
    logged = [r for r in m.run.metrics() if "loss" in r]
    assert list(m.chart.data[0].x) == [r["step"] for r in logged]
    assert list(m.chart.data[0].y) == pytest.approx([r["loss"] for r in logged])
    assert list(m.chart.data[2].y) == pytest.approx([r["lr"] for r in logged])
    assert list(m.chart.data[3].y) == pytest.approx([r["grad_norm"] for r in logged])
    assert list(m.chart.data[1].x) == [r["step"] for r in m.run.metrics() if "val_loss" in r]
    n = m.run.total_steps
    assert m.progress.value == m.progress.max == n and f"step {n}/{n}" in m.progress_label.value
    assert "finished" in m.status.value and "Sample answers" in m.samples.value
    fig = m.figure()
    assert list(fig.data[0].x) == list(m.chart.data[0].x)


def test_stop_button_mid_run_then_resume(qa_data):
    builder, form, m = panels(qa_data, epochs=3.0)
    m.listeners.append(lambda ev: ev.kind == "log" and ev.step == 5 and m.stop_button.click())  # a person clicks
    m.start_button.click()
    m.wait(120)
    assert m.history.state == "stopped" and RunDir(m.run_dir.path).status()["state"] == "stopped"
    assert m.progress.value == 5 and "Resume" in m.status.value
    m.listeners.clear()
    m.resume_button.click()
    m.wait(120)
    assert m.history.state == "finished"
    steps = [r["step"] for r in RunDir(m.run_dir.path).metrics() if "loss" in r]
    assert steps == list(range(1, m.run.total_steps + 1)) and list(m.chart.data[0].x) == steps


def test_open_an_existing_run_redraws_its_history(qa_data, tiny_cfg):
    import ftnb
    run = ftnb.train(tiny_cfg, qa_data, probe=False)
    m = TrainingMonitor.open(run.run_dir.path)
    assert list(m.chart.data[0].x) == [r["step"] for r in run.metrics() if "loss" in r]
    assert m.history.state == "finished" and m.progress.value == 10


def test_following_a_run_trained_by_another_process(tmp_path):
    code = ("import ftnb\n"
            "data=[{'prompt': f'q{i}', 'completion': f'answer {i}'} for i in range(16)]\n"
            f"ftnb.train(model='tiny', data=data, output_dir={str(tmp_path)!r}, run_name='other', epochs=300, "
            "batch_size=4, probe=False, val_fraction=0, save_every=100000, log_every=5)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    rd = RunDir(tmp_path / "other")
    deadline = time.time() + 60
    while not (rd.status_path.exists() and rd.metrics()) and time.time() < deadline:
        time.sleep(0.2)
    m = TrainingMonitor.open(rd.path)
    assert m.history.state == "running" and m.follower.is_alive()
    first = len(m.chart.data[0].x)
    time.sleep(2.5)
    assert len(m.chart.data[0].x) > first  # new lines from the other process were drawn
    m.stop_button.click()  # writes the STOP request the other process honours
    proc.wait(60)
    m.wait(10)
    assert m.history.state == "stopped" and rd.status()["state"] == "stopped"


def test_widgets_answer_within_200ms_while_training(qa_data):
    builder, form, m = panels(qa_data, epochs=60.0)
    m.start()
    while m.history.state != "running":
        time.sleep(0.05)
    slider, answered = w.IntSlider(), threading.Event()
    slider.observe(lambda ch: answered.set(), names="value")
    worst = 0.0
    for i in range(1, 21):
        answered.clear()
        t0 = time.perf_counter()
        slider.value = i
        assert answered.wait(1)
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.05)
    assert m.running
    m.stop()
    m.wait(60)
    assert worst < 0.2


def test_static_chart_fallback(qa_data):
    builder, form, m = panels(qa_data)
    m2 = TrainingMonitor(form=form, builder=builder, static=True)
    m2.start()
    m2.wait(120)
    out = m2.chart.widget.outputs[0]
    assert out["output_type"] == "display_data" and "application/vnd.plotly.v1+json" in out["data"]
    assert len(m2.chart.fig.data[0].x) == m2.run.total_steps and "plotly" in out["data"]["text/html"]
