"""Data you can trust (issue 14): columns found as a new user names them, a report that says what happened to every
row, printed before training, by `ftnb data` and in the Data panel; duplicates never split; no stray files."""
import csv
import json
import re
import shlex

import pytest

import ftnb
from ftnb import DataError, load_examples
from ftnb.cli import main


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def faq_rows(n=12):
    return [[f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.", "maths"] for i in range(n)]


@pytest.mark.parametrize("header", [["Questions", "Answers", "Category"], ["question", "answer", "category"],
                                    ["Query", "Response", "category"], ["INPUT", "OUTPUT", "category"],
                                    ["Prompt", "Completion", "Category"]])
def test_columns_are_found_without_case_and_through_synonyms(tmp_path, header):
    data = load_examples(write_csv(tmp_path / "faq.csv", header, faq_rows()))
    assert data.report.format == "prompt_completion" and len(data) == 12 and not data.report.problems
    assert data[0].messages[1]["content"] == "0 plus 0 is 0."
    assert data.report.detected == f"from the columns: {header[0]} (prompt), {header[1]} (completion)"
    assert data.report.ignored_columns == [header[2]]


def test_an_undecidable_file_gives_a_command_line_that_works_as_pasted(tmp_path, capsys):
    path = write_csv(tmp_path / "my faq.csv", ["Frage", "Antwort"], [r[:2] for r in faq_rows()])
    with pytest.raises(DataError) as e:
        load_examples(path)
    message = str(e.value)
    assert "(Frage, Antwort)" in message and "Traceback" not in message
    command = re.search(r"(ftnb train .*?) \(in Python", message).group(1)
    argv = shlex.split(command)[1:]
    assert argv[:2] == ["train", "--data"] and argv[2] == str(path)
    main(["data", *argv[2:], "--model", "tiny"])  # the same flags, as pasted, read the file
    out = capsys.readouterr().out
    assert "12 of 12 rows kept" in out and "Frage (prompt), Antwort (completion)" in out


def test_cli_columns_readable_form_json_and_clear_errors(tmp_path, capsys):
    path = write_csv(tmp_path / "faq.csv", ["Q", "A"], [r[:2] for r in faq_rows()])
    main(["data", str(path), "--columns", "prompt=Q, completion=A", "--model", "tiny"])
    assert "12 of 12 rows kept" in capsys.readouterr().out
    main(["data", str(path), "--columns", '{"prompt": "q", "completion": "a"}', "--model", "tiny"])  # any case
    assert "12 of 12 rows kept" in capsys.readouterr().out
    for columns, says in (("prompt=Q", "needs a completion column"), ("prompt=Q,completion=Answer",
                                                                        "completion=Answer names no column"),
                          ("question=Q,answer=A", "'question' is not a role"), ("prompt", "ROLE=COLUMN")):
        with pytest.raises(SystemExit) as e:
            main(["data", str(path), "--columns", columns, "--model", "tiny"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, (columns, err)


def test_duplicates_are_reported_and_never_split(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(30)]
    rows += [rows[3], rows[3], rows[7]]
    data = load_examples(rows)
    assert [(n.row, n.detail) for n in data.report.duplicates] == [(31, "repeats row 4"), (32, "repeats row 4"),
                                                                  (33, "repeats row 8")]
    for seed in range(20):
        train, val = data.split(0.3, seed=seed)
        assert len(train) + len(val) == 33 and len(val) >= 9
        seen = {json.dumps(e.to_record()) for e in train.examples}
        assert not any(json.dumps(e.to_record()) in seen for e in val.examples), seed


def test_the_summary_is_printed_before_training(tmp_path, capsys):
    header = ["Questions", "Answers", "Notes"]
    rows = [r[:2] + ["x"] for r in faq_rows(20)]
    rows[4][1] = ""  # line 6: an empty answer
    rows[9] = list(rows[2])  # line 11 repeats line 4
    rows[12][1] = "a very long answer " * 40  # line 14: longer than max_seq_len
    path = write_csv(tmp_path / "faq.csv", header, rows)
    main(["train", "--data", str(path), "--model", "tiny", "--max-steps", "1", "--no-probe", "--max-seq-len", "64",
          "--output-dir", str(tmp_path / "runs"), "--run-name", "r"])
    out = capsys.readouterr().out
    summary = out[:out.index("run directory")]
    assert f"{path}: 18 of 20 rows kept (prompt/completion; from the columns: Questions (prompt), Answers " \
           "(completion)" in summary
    assert "line 6, Answers: empty content" in summary
    assert "line 14: dropped: longer than max_seq_len (64 tokens)" in summary
    assert "line 11: repeats line 4" in summary and "ignored columns: Notes" in summary
    assert re.search(r"\d+ examples to train on, \d+ to validate", summary)
    saved = json.loads((tmp_path / "runs" / "r" / "data.json").read_text())
    assert saved["summary"] in out and saved["report"]["overlong"][0]["row"] == 14


def test_ftnb_data_exit_status(tmp_path, capsys):
    good = write_csv(tmp_path / "good.csv", ["prompt", "completion"], [r[:2] for r in faq_rows(3)])
    main(["data", str(good), "--model", "tiny"])
    assert "3 examples ready to train (model tiny, max_seq_len 1024)" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["data", str(bad), "--model", "tiny"])
    assert e.value.code == 1
    captured = capsys.readouterr()
    assert "line 1, messages: missing assistant turn" in captured.out and "nothing to train on" in captured.err


def test_the_panel_offers_a_mapping_after_a_failed_load_and_shows_the_report(tmp_path):
    from ftnb.panels import DatasetBuilder
    path = write_csv(tmp_path / "faq.csv", ["Frage", "Antwort", "Thema"], faq_rows(6))
    with pytest.warns(UserWarning, match="cannot tell the format"):
        b = DatasetBuilder.from_source(str(path), model="tiny")
    assert b.failure is not None and "all 0 rows" not in b.report_html.value and "nothing was loaded" in \
        b.report_html.value
    assert set(b.mapping) == {"prompt", "completion", "system"}
    assert list(b.mapping["prompt"].options) == ["", "Frage", "Antwort", "Thema"]
    b.mapping["prompt"].value, b.mapping["completion"].value = "Frage", "Antwort"
    b.remap_button.click()
    assert len(b.examples) == 6 and b.failure is None and "ignored columns: Thema" in b.report_html.value
    b.examples[5].messages[1]["content"] = "long " * 300
    report = b.check(max_seq_len=64)
    assert report.overlong[0].row == 7 and "line 7: dropped" in b.report_html.value
    assert len(b.report.overlong) == 0  # the check works on a copy: the examples stay as they are
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faq.csv"]  # no autosave asked: no file


def test_encodings_json_errors_and_tool_calls_reach_the_cli_and_the_panel(tmp_path, capsys):
    from ftnb.panels import DatasetBuilder
    faq = tmp_path / "faq.csv"  # a spreadsheet export: UTF-16 with a BOM, one answer with mojibake
    faq.write_text("Question,Answer\nOpening hours?,We’re open from 6pm.\nSundays?,"
                   + "We’re closed on Sundays.".encode("utf-8").decode("cp1252") + "\n", encoding="utf-16")
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"prompt": "a", "completion": "b"},\n {"prompt": "c" "completion": "d"}\n]\n')
    tools = tmp_path / "tools.jsonl"
    tools.write_text(json.dumps({"tools": [{"type": "function", "function": {"name": "check_table"}}], "messages": [
        {"role": "user", "content": "Table for 2?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "check_table", "arguments": '{"people": 2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "free"},
        {"role": "assistant", "content": "Yes, we have one."}]}) + "\n")
    main(["data", str(faq), "--model", "tiny"])
    out = capsys.readouterr().out
    assert "utf-16-le with BOM" in out and "line 3, Answer: mojibake 'â€™' repaired to '’'" in out
    with pytest.raises(SystemExit):
        main(["data", str(broken), "--model", "tiny"])
    assert "invalid JSON at line 3, column 17" in capsys.readouterr().err
    main(["data", str(tools), "--model", "tiny"])
    assert "1 row with tools or tool calls, rendered in ftnb's fallback tool format" in capsys.readouterr().out
    b = DatasetBuilder.from_source(str(faq), model="tiny")
    assert "utf-16-le with BOM" in b.report_html.value and "mojibake" in b.report_html.value
    assert b.examples[1].messages[1]["content"] == "We’re closed on Sundays."
