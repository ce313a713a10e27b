import json
import re

import ftnb
from ftnb.panels import ConfigForm, DatasetBuilder, ForgettingPanel, TrainingMonitor


def test_live_probe_curves_flips_answers_and_items(qa_data, tmp_path):
    builder = DatasetBuilder.from_source(qa_data, autosave=None)
    form = ConfigForm()
    for k, v in {"epochs": 2.0, "batch_size": 4, "learning_rate": 5e-3}.items():
        form.fields[k].value = v
    monitor = TrainingMonitor(form=form, builder=builder)
    panel = ForgettingPanel(monitor)
    monitor.start_button.click()
    monitor.wait(180)
    probes = [m for m in monitor.run.metrics() if "probe" in m]
    assert len(probes) == 3 and [s for s, _ in panel.points] == [m["step"] for m in probes]
    chart = panel.chart.data
    assert list(chart[2].x) == [m["step"] for m in probes]          # the paired change in accuracy, in points
    assert list(chart[2].y) == [m["probe"]["change"] * 100 for m in probes] and chart[2].y[0] == 0
    assert all(lo <= c <= hi for lo, c, hi in zip(chart[1].y, chart[2].y, chart[0].y))  # inside its band
    assert [m["probe"]["n"] for m in probes] == [900, 300, 900]  # the quick subset between step 0 and the end
    cats = panel.categories_chart.data[0]
    assert len(cats.x) == 6 and list(cats.text) == ["n=150"] * 6  # per category, at the last probe
    assert probes[-1]["probe"]["verdict"] in panel.headline.value
    assert list(chart[4].y) == [m["probe"]["kl"] for m in probes] and chart[4].y[0] == 0
    assert "retention" in panel.headline.value and "right &rarr; wrong" in panel.flips.value
    assert re.search(r"one probe pass \d+\.\d s", panel.headline.value)
    assert panel.answers.value.count("<tr>") == 1 + 8  # header + the 8 probe questions, base next to now
    # the user's own items go to a file the next run reads
    panel.mc_question.value = "What is the <b>wifi</b> password?"
    panel.mc_choices.value = "pizza123\nluigi"
    panel.mc_answer.value = 2
    panel.add_mc_button.click()
    panel.q_text.value = "Who founded the restaurant?"
    panel.q_expect.value = "Luigi, Rossi"
    panel.add_q_button.click()
    items = [json.loads(line) for line in panel.items_path.read_text().splitlines()]
    assert items[0]["answer"] == 1 and items[1]["expect"] == ["luigi", "rossi"]
    assert form.config.probe_items == str(panel.items_path)
    panel.mc_choices.value = "only one"
    panel.add_mc_button.click()
    assert "2+ choices" in panel.items_msg.value


def test_mitigation_switches_are_the_form_fields():
    form = ConfigForm()
    panel = ForgettingPanel(form=form)
    panel.switches["replay_fraction"].value = 0.2
    assert form.config.replay_fraction == 0.2
    form.fields["kl_beta"].value = 0.1
    assert panel.switches["kl_beta"].value == 0.1
    panel.set_mitigation("budget_action", "stop")
    assert form.config.budget_action == "stop"
    panel.switches["l2sp_alpha"].value = 0.5  # LoRA: the form's own rule answers, inline
    assert "l2sp_alpha" in form.status.value


def test_open_on_a_finished_run_and_escape_answers(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data)
    step = max(int(p.stem.split("-")[1]) for p in (run.run_dir.path / "probe").glob("step-*.json"))
    f = run.run_dir.path / "probe" / f"step-{step}.json"
    d = json.loads(f.read_text())
    d["gen"][0]["answer"] = "<script>alert(1)</script>{{ x }}"
    f.write_text(json.dumps(d))
    panel = ForgettingPanel(run_dir=run.run_dir.path)
    assert len(panel.points) == 3
    assert "&lt;script&gt;" in panel.answers.value and "<script>" not in panel.answers.value
