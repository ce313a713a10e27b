"""The export panel: the checkpoint to export is chosen from the run's own, and each button does what its plain
method does, in a thread, with the verification shown."""
import ftnb
from ftnb.panels import ConfigForm, DatasetBuilder, ExportPanel, TrainingMonitor


def test_checkpoints_offered_and_a_merged_export(qa_data, tmp_path):
    run = ftnb.train(model="tiny", data=qa_data, output_dir=str(tmp_path / "runs"), run_name="r", max_steps=6,
                     batch_size=4, eval_every=2, save_every=2, probe=False)
    panel = ExportPanel(run_dir=run.run_dir.path)
    values = [v for _, v in panel.checkpoint.options]
    assert values[:2] == ["last", "best"] and set(values[2:]) == {s for s, _ in run.run_dir.checkpoints()}
    panel.checkpoint.value = "best"
    panel.merged_out.value = str(tmp_path / "merged")
    panel.merged_button.click()
    panel.wait(120)
    assert "done, and verified" in panel.status.value, panel.status.value
    best = run.run_dir.status()["best_checkpoint"]
    assert panel.result["weights"] == f"the best checkpoint of step {best}" and panel.result["max_logit_gap"] < 1e-3
    assert "max_logit_gap" in panel.results.value and (tmp_path / "merged" / "config.json").exists()
    panel.merged_button.click()  # the folder exists now: refused with a message, nothing overwritten
    panel.wait(60)
    assert "exists and is not empty" in panel.status.value


def test_the_panel_follows_the_monitor(qa_data):
    builder = DatasetBuilder.from_source(qa_data)
    form = ConfigForm()
    form.fields["max_steps"].value = 2
    form.fields["probe"].value = False
    monitor = TrainingMonitor(form=form, builder=builder)
    panel = ExportPanel(monitor)
    assert "no run yet" not in panel.status.value and panel.checkpoint.options[0][1] == "last"
    monitor.start()
    monitor.wait(120)
    assert str(panel.run_dir()) == str(monitor.run_dir.path)
    assert any(v == 2 for _, v in panel.checkpoint.options)  # refreshed when the run finished
    panel.close()
