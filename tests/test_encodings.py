"""Files as a new user has them: other Unicode encodings, mojibake, broken JSON; each read or named honestly."""
import codecs
import csv
import io
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ftnb.core.sources as sources
from ftnb import DataError, TrainConfig, load_examples
from ftnb.core.data import RowNote, validate
from ftnb.core.rundir import RunDir
from ftnb.core.train import prepare_data

Q, A = "Où est le café? 中文 😀", "Là-bas — it’s “near”."
CHAT = [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]
ENCODINGS = [  # (what the file starts with, codec of the rest, what the report says)
    (b"", "utf-8", "utf-8"),
    (codecs.BOM_UTF8, "utf-8", "utf-8 with BOM"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16-le with BOM"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16-be with BOM"),
    (b"", "utf-16-le", "utf-16-le (no BOM)"),
    (b"", "utf-16-be", "utf-16-be (no BOM)"),
    (codecs.BOM_UTF32_LE, "utf-32-le", "utf-32-le with BOM"),
    (b"", "utf-32-be", "utf-32-be (no BOM)"),
]


def write(path, text, bom=b"", codec="utf-8"):
    path.write_bytes(bom + text.encode(codec))
    return path


def csv_text(rows, header=("prompt", "completion")):
    buf = io.StringIO()
    w = csv.writer(buf)  # CRLF line ends, as Excel writes them
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


@pytest.mark.parametrize("bom,codec,label", ENCODINGS, ids=[e[2] for e in ENCODINGS])
def test_jsonl_json_and_csv_in_every_unicode_encoding(tmp_path, bom, codec, label):
    jsonl = json.dumps({"messages": CHAT}, ensure_ascii=False) + "\n\n" + json.dumps({"messages": CHAT[:1]}) + "\n"
    d = load_examples(write(tmp_path / "d.jsonl", jsonl, bom, codec))
    assert (d.report.encoding, d.report.format, d.report.columns) == (label, "messages", ["messages"])
    assert [e.messages for e in d.examples] == [CHAT] and [e.row for e in d.examples] == [1]
    assert [(p.row, p.reason) for p in d.report.problems] == [(3, "missing assistant turn")]  # line 3: blank line 2

    d = load_examples(write(tmp_path / "d.csv", csv_text([[Q, A], ["x", ""]]), bom, codec))
    assert (d.report.encoding, d.report.format) == (label, "prompt_completion")
    assert d.report.columns == ["prompt", "completion"]  # in the file's order
    assert [e.messages for e in d.examples] == [CHAT]
    assert [(p.row, p.field) for p in d.report.problems] == [(3, "completion")]

    array = json.dumps([{"messages": CHAT}], ensure_ascii=False, indent=1)
    d = load_examples(write(tmp_path / "d.json", array, bom, codec))
    assert d.report.encoding == label and [e.messages for e in d.examples] == [CHAT]


@settings(max_examples=1500 if os.environ.get("FTNB_FUZZ") == "slow" else 30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(st.sampled_from(["prompt", "completion", "id"]),
                                st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)),
                min_size=1, max_size=6),
       st.sampled_from(ENCODINGS), st.sampled_from(["\n", "\r\n"]))
def test_any_text_reads_the_same_in_every_encoding(tmp_path_factory, rows, encoding, newline):
    bom, codec, _ = encoding
    folder = tmp_path_factory.mktemp("f")
    text = "".join(json.dumps(r, ensure_ascii=False) + newline for r in rows)
    got = []
    for path in (write(folder / "utf8.jsonl", text), write(folder / "other.jsonl", text, bom, codec)):
        try:
            d = load_examples(path)
            problems = [(p.row, p.field, p.reason) for p in d.report.problems]
            got.append(([(e.row, e.messages) for e in d.examples], problems, d.report.mojibake))
        except DataError as e:
            got.append(e.message.replace(str(path), "FILE"))  # the message names the file: the one thing apart
    assert got[0] == got[1]


def test_undecodable_bytes_are_the_problem_of_their_line_with_the_character_column(tmp_path):
    good = '{"text": "fine"}\n'
    p = tmp_path / "d.jsonl"
    p.write_bytes((good + '{"text": "é').encode() + b"\xff" + b'"}\n' + good.encode())
    d = load_examples(p)
    assert d.report.encoding == "utf-8" and len(d) == 2
    assert [(pr.row, pr.reason) for pr in d.report.problems] == [(2, "not valid UTF-8 (byte 0xff at column 12)")]

    lone = '{"text": "x'.encode("utf-16-le") + b"\x00\xd8" + '"}\n'.encode("utf-16-le")  # a lone surrogate
    p.write_bytes(codecs.BOM_UTF16_LE + good.encode("utf-16-le") + lone + good.encode("utf-16-le"))
    d = load_examples(p)
    assert len(d) == 2 and [(pr.row, pr.reason) for pr in d.report.problems] == [
        (2, "not valid UTF-16-LE (bytes 0x00 0xd8 at column 12)")]

    c = tmp_path / "d.csv"
    c.write_bytes(codecs.BOM_UTF16_LE + "prompt,completion\r\nq,a\r\nq,".encode("utf-16-le") + b"\x00\xdc"
                  + "\r\n".encode("utf-16-le"))
    d = load_examples(c)
    assert len(d) == 1 and [(pr.row, pr.field, pr.reason) for pr in d.report.problems] == [
        (3, "completion", "not valid UTF-16-LE (byte 0x00)")]


def test_an_enormous_utf16_line_is_skipped_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 200)
    rows = [{"text": "a"}, {"text": "\u0a0a" * 150}, {"text": "b"}]  # U+0A0A holds the byte 0x0a: no line end
    p = write(tmp_path / "d.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), b"", "utf-16-le")
    d = load_examples(p)
    assert [e.text for e in d.examples] == ["a", "b"] and [e.row for e in d.examples] == [1, 3]
    assert d.report.problems[0].row == 2 and "longer than 200 bytes" in d.report.problems[0].reason


def test_mojibake_is_repaired_and_reported_by_line_and_field(tmp_path):
    rows = [{"messages": CHAT}, {"messages": [CHAT[0], {"role": "assistant", "content": "Itâ€™s fine, cafÃ© too."}]}]
    p = write(tmp_path / "d.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    d = load_examples(p)
    assert d[1].messages[1]["content"] == "It’s fine, café too."
    assert d.report.mojibake == [RowNote(2, "messages[1].content",
                                         "mojibake 'â€™' repaired to '’' (and 1 more in this text)")]
    assert d[0].messages == CHAT

    d = load_examples(p, fix_encoding=False)
    assert d[1].messages[1]["content"] == "Itâ€™s fine, cafÃ© too."
    assert d.report.mojibake == [RowNote(2, "messages[1].content", "mojibake 'â€™' (probably '’') not repaired "
                                                                  "(fix_encoding is off) (and 1 more in this text)")]
    assert validate(p, fix_encoding=False).mojibake == d.report.mojibake


def test_mojibake_in_python_objects_is_repaired_in_a_copy():
    rows = [{"prompt": "Price: Â£5?", "completion": "Yes."}, {"prompt": "Ok?", "completion": "Yes."}]
    d = load_examples(rows)
    assert d[0].messages[0]["content"] == "Price: £5?" and rows[0]["prompt"] == "Price: Â£5?"
    assert d.report.mojibake == [RowNote(1, "prompt", "mojibake 'Â£' repaired to '£'")]


@pytest.mark.parametrize("text", [
    "Où est l'hôtel ? Ça coûte 20 € — « très » cher, naïve café résumé.",
    "Grüße aus München – Straße, Äpfel, Öl und Übermut.",
    "你好，世界！这是一个测试。", "こんにちは世界", "Привет, как дела? Всё хорошо.", "Γειά σου Κόσμε", "مرحبا بالعالم",
    "Česky: příliš žluťoučký kůň; Polski: zażółć gęślą jaźń; Türkçe: ığüşöç İ; Tiếng Việt",
    "👍🏽 🎉 🇫🇷 👨‍👩‍👧 ❤️", "∀x ∈ ℝ: x² ≥ 0, ∑ᵢ αᵢ ≤ π·r², ∫₀¹ f(x)dx ≈ ½ ± 0.1°, 10 µm, × ÷ ∞ √2",
    "“Smart quotes”, ‘single’, dashes – — and … £100 ¿qué? ¡sí! año", "SÃO PAULO, AÇÃO, MÃE, Ãgua",
])
def test_legitimate_non_ascii_text_is_not_mojibake(text):
    d = load_examples([{"prompt": text, "completion": text}, {"prompt": text, "completion": text + " Ã©"}])
    assert [(n.row, n.field) for n in d.report.mojibake] == [(2, "completion")]  # only the real mojibake
    assert d[0].messages[0]["content"] == d[0].messages[1]["content"] == d[1].messages[0]["content"] == text


def test_prepare_data_follows_fix_encoding(tmp_path):
    rows = [{"prompt": f"Q{i}: itâ€™s?", "completion": "Yes."} for i in range(4)]
    for fix, expected in ((True, "it’s"), (False, "itâ€™s")):
        cfg = TrainConfig(model="tiny", fix_encoding=fix, val_fraction=0.25)
        train, val = prepare_data(cfg, rows, None, RunDir(tmp_path / str(fix)))
        assert train.report.mojibake
        assert all(expected in e.messages[0]["content"] for e in train.examples + val.examples)


def test_a_json_array_with_a_syntax_error_names_its_line_and_column(tmp_path):
    bad = '{"prompt": "café 😀" "completion": "d"},'
    text = "\r\n".join(("[", '{"prompt": "a", "completion": "b"},', bad, '{"prompt": "e", "completion": "f"}', "]"))
    p = write(tmp_path / "d.json", text, codecs.BOM_UTF8)
    with pytest.raises(DataError) as e:
        load_examples(p)
    column = bad.index('"completion"') + 1  # in characters: the emoji is one
    assert str(e.value) == f"{p}: invalid JSON at line 3, column {column}: expecting ',' delimiter"

    p.write_text('{\n  "train": [\n    {"text": "a"}\n    {"text": "b"}\n  ]\n}\n')
    with pytest.raises(DataError, match="invalid JSON at line 4, column 5: expecting ',' delimiter"):
        load_examples(p)


def test_a_json_lines_file_named_json_is_read_by_line(tmp_path):
    text = '{"text": "a"}\n{"text": "b" "x"}\n\n{"text": "c"}\n'
    p = write(tmp_path / "d.json", text, codecs.BOM_UTF16_LE, "utf-16-le")
    d = load_examples(p)
    assert [e.text for e in d.examples] == ["a", "c"] and d.report.row_unit == "line"
    assert [e.row for e in d.examples] == [1, 4] and d.report.encoding == "utf-16-le with BOM"
    assert [(pr.row, pr.reason) for pr in d.report.problems] == [
        (2, "invalid JSON at column 14: expecting ',' delimiter")]


@pytest.mark.parametrize("bom,newline", [(b"", "\n"), (codecs.BOM_UTF8, "\r\n")], ids=["plain", "BOM and CRLF"])
def test_jsonl_error_columns_are_the_characters_an_editor_shows(tmp_path, bom, newline):
    lines = ['{"prompt": "héllo" "completion": "x"}', '{"prompt": "a", "completion": "b"',
             '{"prompt": "a", "completion": "b"}']
    d = load_examples(write(tmp_path / "d.jsonl", "".join(s + newline for s in lines), bom))
    got = [(p.row, p.reason) for p in d.report.problems]
    column = lines[0].index('"completion') + 1  # 20: the é is one character, the BOM none
    assert got == [(1, f"invalid JSON at column {column}: expecting ',' delimiter"),
                   (2, f"invalid JSON at column {len(lines[1]) + 1}: expecting ',' delimiter")]  # just past the end


def test_no_message_says_at_at(tmp_path):
    lines = ['{"text": "unterminated', '{"text": "a\tb"}', '{"text": "a"} {"text": "b"}', '{"text": "\\q"}',
             '{"text" "a"}', "{text: 1}", '{"text": "a",}', '\ufeff{"text": "joined files"}']
    d = load_examples(write(tmp_path / "d.jsonl", "\n".join(lines) + "\n"))
    reasons = [p.reason for p in d.report.problems]
    assert len(reasons) == 7 and [e.text for e in d.examples] == ["joined files"]
    assert reasons[0] == "invalid JSON at column 10: a string starts here and never ends"
    assert reasons[2] == "invalid JSON at column 15: more data after a complete JSON value"
    for text in reasons + [str(d.report)]:
        assert " at at " not in text and "at column" in text


def test_csv_and_data_errors_say_line(tmp_path):
    p = write(tmp_path / "d.csv", csv_text([["a", "b", "c"], ["q", ""]]))
    d = load_examples(p)
    assert [str(pr) for pr in d.report.problems] == ["line 2, field '-': has 3 fields but the header has 2",
                                                     "line 3, field 'completion': empty content"]
    with pytest.raises(DataError, match=r"d\.csv: no usable examples \(line 2, field '-'"):
        d.require_usable()
    assert str(DataError("empty", source="f.csv", row=3, field="x", unit="line")) == "f.csv, line 3, field 'x': empty"
    assert str(load_examples([{"text": ""}]).report.problems[0]).startswith("row 1,")  # a list has rows
