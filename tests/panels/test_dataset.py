import json

from ftnb.panels import DatasetBuilder

EVIL = '<script>alert(1)</script><img src=x onerror=alert(2)>{{ 7*7 }}'


def test_load_page_edit_delete_and_autosave(tmp_path, qa_data):
    b = DatasetBuilder(autosave="auto.jsonl")
    b.load(qa_data)
    assert b.report.format == "messages" and len(b.examples) == 24
    assert "page 1 of 3" in b.page_label.value
    b.next_button.click()
    assert "page 2 of 3" in b.page_label.value and "What is 10 plus 10?" in b.table.value
    b.pick.value = 3
    assert b.editor_messages()[0]["content"] == "What is 2 plus 2?"
    b.turns.children[1].children[1].value = "Four."
    b.save_button.click()
    assert b.examples[2].messages[1]["content"] == "Four."
    saved = [json.loads(line) for line in (tmp_path / "auto.jsonl").read_text().splitlines()]
    assert saved[2]["messages"][1]["content"] == "Four." and len(saved) == 24
    b.new_button.click()
    b.turns.children[0].children[1].value = "New question?"
    b.turns.children[1].children[1].value = "New answer."
    b.save_button.click()
    assert len(b.examples) == 25 and len((tmp_path / "auto.jsonl").read_text().splitlines()) == 25
    b.delete_button.click()
    assert len(b.examples) == 24
    # a bad edit is refused with the field named, and nothing is lost
    b.pick.value = 1
    b.turns.children[1].children[0].value = "user"
    b.save_button.click()
    assert "not alternating" in b.editor_msg.value and len(b.examples) == 24


def test_kernel_death_loses_nothing(tmp_path, qa_data):
    b = DatasetBuilder(autosave="auto.jsonl")
    b.load(qa_data[:3])
    b.add_example([{"role": "user", "content": "typed"}, {"role": "assistant", "content": "before the crash"}])
    restored = DatasetBuilder(autosave="auto.jsonl")  # a new kernel, same folder
    assert len(restored.examples) == 4 and restored.examples[-1].messages[1]["content"] == "before the crash"
    again = DatasetBuilder.from_source(qa_data[:2], autosave="auto.jsonl")  # the cell run again: the edits are kept
    assert again.restored and len(again.examples) == 4 and "your edits" in again.status.value
    assert len((tmp_path / "auto.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.jsonl"]  # one working copy, never auto-2.jsonl


def test_validation_report_mapping_and_upload(tmp_path):
    rows = [{"q": "Hi?", "a": "Hello."}, {"q": "Empty?", "a": ""}, {"q": "Bye?", "a": "Bye."}]
    b = DatasetBuilder(autosave=None)
    b.load(rows, columns={"prompt": "q", "completion": "a"})
    assert len(b.examples) == 2 and "row 2, a: empty content" in b.report_html.value
    csv = b"question,answer\nWhat?,That.\n"
    b.upload.value = ({"name": "d.csv", "type": "text/csv", "size": len(csv), "content": memoryview(csv),
                       "last_modified": __import__("datetime").datetime.now()},)
    assert b.report.format == "prompt_completion" and b.examples[0].messages[1]["content"] == "That."
    assert "question" in [dd for dd in b.mapping["prompt"].options]


def test_template_tokens_histogram_split_and_escaping(qa_data):
    b = DatasetBuilder(autosave=None, model="tiny")
    b.load(qa_data + [{"messages": [{"role": "user", "content": EVIL}, {"role": "assistant", "content": EVIL}]}])
    b.pick.value = 25
    b.show_template.click()
    html = b.template_html.value
    assert "<mark" in html and "&lt;script&gt;" in html and "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in b.table.value and "<script>" not in b.table.value
    assert len(b.hist.data[0].x) == 25 and min(b.hist.data[0].x) > 5
    b.val_fraction.value = 0.2
    assert "20 training examples, 5 validation examples" in b.split_html.value
    train, val = b.split()
    assert len(train) == 20 and len(val) == 5
