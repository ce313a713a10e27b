import ftnb


def test_studio_tabs_wire_the_panels(qa_data):
    s = ftnb.Studio(data=qa_data)
    assert [s.tabs.get_title(i) for i in range(7)] == ["Data", "Settings", "Train", "Forgetting", "Compare", "Export",
                                                      "Chat"]
    assert len(s.builder.examples) == 24 and s.form.config.model == "tiny"
    s.form.fields["epochs"].value = 1.0
    s.form.fields["probe"].value = False
    s.monitor.start_button.click()
    s.monitor.wait(120)
    assert s.monitor.history.state == "finished"
    assert len(s.comparison.picker.options) == 1  # refreshed when the run finished
    s.close()


def test_studio_restores_an_autosaved_dataset(qa_data, tmp_path):
    ftnb.Studio(data=qa_data[:5], autosave="mine.jsonl").close()
    again = ftnb.Studio(autosave="mine.jsonl")
    assert len(again.builder.examples) == 5 and again.builder.restored
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["mine.jsonl"]
    ftnb.Studio().close()  # no autosave asked: no file written
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["mine.jsonl"]
