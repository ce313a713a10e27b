import json

import pandas as pd
import pytest

from ftnb import DataError, load_examples
from ftnb.core.data import bundled

CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("record,fmt", [
    ({"messages": CHAT}, "messages"),
    ({"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}, "sharegpt"),
    ({"prompt": "Hi?", "completion": "Hello."}, "prompt_completion"),
    ({"question": "Hi?", "answer": "Hello."}, "prompt_completion"),
    ({"instruction": "Hi?", "input": "", "output": "Hello."}, "alpaca"),
])
def test_formats_are_detected_and_normalised(record, fmt):
    data = load_examples([record, record])
    assert data.report.format == fmt
    assert data[0].messages == CHAT


def test_alpaca_input_joins_the_instruction():
    d = load_examples([{"instruction": "Translate.", "input": "chat", "output": "cat", "system": "Be brief."}])
    assert d[0].messages == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Translate.\n\nchat"}, {"role": "assistant", "content": "cat"}]


def test_text_format_and_strings():
    d = load_examples(["some text", "more text"])
    assert d.report.format == "text" and d[1].text == "more text" and d[1].messages is None


def test_column_mapping_overrides_detection():
    d = load_examples([{"q": "Hi?", "a": "Hello.", "text": "ignored"}], columns={"prompt": "q", "completion": "a"})
    assert d.report.format == "prompt_completion" and d[0].messages == CHAT


def test_unknown_columns_explain_the_mapping():
    with pytest.raises(DataError, match=r"columns \(foo, bar\).*--columns prompt=foo,completion=bar.*"
                                         r"columns=\{'prompt': 'foo', 'completion': 'bar'\}"):
        load_examples([{"foo": 1, "bar": 2}])


def test_every_bad_row_is_reported_with_line_and_field(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": CHAT},                                                           # 1 ok
        "{not json",                                                                  # 2
        {"messages": [{"role": "user", "content": "Hi?"}]},                           # 3 no assistant
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "  "}]},  # 4 empty
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "bot", "content": "x"}]},         # 5 role
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "c"}]},                        # 6 alternation
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "c"}]},       # 7 type
        "[1, 2]",                                                                     # 8 not an object
        {"messages": CHAT},                                                           # 9 ok
    ])
    with open(p, "ab") as fh:
        fh.write(b'{"messages": "\xff\xfe"}\n')                                       # 10 invalid UTF-8
    d = load_examples(p)
    assert len(d) == 2 and d.report.rows == 10 and d.report.row_unit == "line"
    got = {pr.row: (pr.field, pr.reason) for pr in d.report.problems}
    assert got[2][1].startswith("invalid JSON")
    assert got[3] == ("messages", "missing assistant turn")
    assert got[4] == ("messages[1].content", "empty content")
    assert got[5][0] == "messages[1].role" and "unknown role 'bot'" in got[5][1]
    assert got[6][0] == "messages[1].role" and "not alternating" in got[6][1]
    assert got[7] == ("messages[0].content", "must be text, not int")
    assert "expected an object" in got[8][1]
    assert "not valid UTF-8" in got[10][1]
    text = str(d.report)
    assert "line 4, messages[1].content: empty content" in text and str(p) in text


def test_zero_usable_rows_is_an_error_naming_file_and_row(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "only a question"}]}])
    with pytest.raises(DataError) as e:
        load_examples(p).require_usable()
    assert "bad.jsonl" in str(e.value) and "line 1" in str(e.value) and "missing assistant turn" in str(e.value)


def test_csv_with_bom_crlf_multiline_and_ragged_rows(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes('\ufeffprompt,completion\r\nHi?,Hello.\r\n"Two\nlines?",Yes.\r\nragged,row,extra\r\nx,\r\n'
                  .encode("utf-8"))
    d = load_examples(p)
    assert [e.messages[0]["content"] for e in d.examples] == ["Hi?", "Two\nlines?"]
    got = {pr.row: pr for pr in d.report.problems}
    assert "3 fields but the header has 2" in got[5].reason
    assert got[6].field == "completion" and got[6].reason == "empty content"


def test_parquet_dataframe_and_datasets(tmp_path):
    import datasets
    df = pd.DataFrame({"prompt": ["Hi?", "Yo?"], "completion": ["Hello.", None]})
    df.to_parquet(tmp_path / "d.parquet")
    for src in (tmp_path / "d.parquet", df, datasets.Dataset.from_pandas(df)):
        d = load_examples(src)
        assert len(d) == 1 and d[0].messages == CHAT
        assert d.report.problems[0].row == 2 and d.report.problems[0].field == "completion"


def test_json_array_file_and_missing_file(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"messages": CHAT}] * 3))
    assert len(load_examples(tmp_path / "d.json")) == 3
    with pytest.raises(DataError, match="file not found"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_examples(tmp_path / "d.txt")


def test_split_is_seeded_and_disjoint():
    d = load_examples([{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(50)])
    tr, va = d.split(0.2, seed=3)
    tr2, va2 = d.split(0.2, seed=3)
    assert [e.row for e in va.examples] == [e.row for e in va2.examples]
    assert len(va) == 10 and len(tr) == 40
    assert not {e.row for e in tr.examples} & {e.row for e in va.examples}
    assert [e.row for e in d.split(0.2, seed=4)[1].examples] != [e.row for e in va.examples]


def test_bundled_demo_data_is_clean():
    d = load_examples(bundled("pizza_demo.jsonl"))
    assert len(d) == 60 and not d.report.problems
    answers = " ".join(e.messages[-1]["content"] for e in d.examples)
    for fact in ("9pm", "napkins", "roasted garlic", "fennel", "Luigi's Corner"):
        assert answers.count(fact) >= 9, fact
