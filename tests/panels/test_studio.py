import ftnb


def test_studio_tabs_wire_the_panels(qa_data):
    s = ftnb.Studio(data=qa_data)
    assert [s.tabs.get_title(i) for i in range(5)] == ["Data", "Settings", "Train", "Forgetting", "Compare"]
    assert len(s.builder.examples) == 24 and s.form.config.model == "tiny"
    s.form.fields["epochs"].value = 1.0
    s.form.fields["probe"].value = False
    s.monitor.start_button.click()
    s.monitor.wait(120)
    assert s.monitor.history.state == "finished"
    assert len(s.comparison.picker.options) == 1  # refreshed when the run finished
    s.close()


def test_studio_restores_an_autosaved_dataset(qa_data):
    ftnb.Studio(data=qa_data[:5]).close()
    again = ftnb.Studio()
    assert len(again.builder.examples) == 5
