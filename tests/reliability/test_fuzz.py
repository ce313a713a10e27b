"""Bad input, fuzzed: every input is loaded or rejected with a row-level message; never another exception, never a
hang. `FTNB_FUZZ=slow` runs many more examples per property (the CI profile runs a few dozen)."""
import json
import os
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ftnb.core.data as D
import ftnb.core.sources as sources
from ftnb import DataError, load_examples
from ftnb.core.data import validate

settings.register_profile("ci", max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                        HealthCheck.too_slow])
settings.register_profile("slow", max_examples=1500, deadline=5000,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile("slow" if os.environ.get("FTNB_FUZZ") == "slow" else "ci")

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30) | st.sampled_from(
    ["user", "assistant", "system", "gpt", "human", "", " ", "<script>", "{{ x }}", "\x00", "\ufeff"])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | text,
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4),
                           max_leaves=12)
keys = st.sampled_from(["messages", "conversations", "prompt", "completion", "instruction", "output", "input", "text",
                        "role", "content", "from", "value", "question", "answer"])
records = st.dictionaries(keys, json_values | st.lists(st.dictionaries(keys, json_values, max_size=3), max_size=4),
                          max_size=4)


def load_or_reject(path):
    """The only acceptable outcomes: a ChatData whose every bad row is named, or a DataError."""
    try:
        data = load_examples(path)
    except DataError as e:
        assert str(e)
        return None
    assert data.report.rows == data.report.usable + data.report.bad
    for p in data.report.problems:
        assert isinstance(p.row, int) and p.row >= 1 and p.reason
    return data


@given(st.lists(records | json_values, min_size=1, max_size=8))
def test_random_json_structures(tmp_path_factory, rows):
    p = tmp_path_factory.mktemp("f") / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    load_or_reject(p)


@given(st.lists(st.binary(max_size=60), min_size=1, max_size=8),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_random_bytes_bom_crlf_nul(tmp_path_factory, lines, newline, bom):
    p = tmp_path_factory.mktemp("f") / "d.jsonl"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(lines) + newline)
    load_or_reject(p)


@given(st.lists(st.lists(st.text(max_size=12) | st.sampled_from(['"', '","', "\n", '""', "\r\n", "\x00"]),
                         min_size=0, max_size=4), min_size=1, max_size=6))
def test_csv_ragged_rows_and_quoted_newlines(tmp_path_factory, rows):
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["prompt", "completion"])
    for r in rows:
        w.writerow(r)
    p = tmp_path_factory.mktemp("f") / "d.csv"
    p.write_text(buf.getvalue(), encoding="utf-8")
    load_or_reject(p)
    p.write_bytes(b'prompt,completion\n"unterminated,quote\nx,\xff\xfe\n')
    load_or_reject(p)


def test_deep_nesting_enormous_lines_and_wrong_types(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 500_000)
    good = json.dumps({"prompt": "q", "completion": "a"})
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join([good, "[" * 100_000 + "]" * 100_000, json.dumps({"prompt": "x" * 600_000, "completion": "y"}),
                            json.dumps({"prompt": ["a"], "completion": {"b": 1}}), json.dumps({"prompt": 1e309}),
                            good]) + "\n")
    data = load_or_reject(p)
    reasons = {pr.row: pr.reason for pr in data.report.problems}
    assert len(data) == 2 and "nested too deeply" in reasons[2] and "longer than" in reasons[3]
    assert "must be text" in reasons[4]


def test_validation_streams_a_big_file_in_constant_memory(tmp_path):
    p = tmp_path / "big.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q" * 100}, {"role": "assistant", "content": "a" * 100}]})
    bad = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    with open(p, "w") as fh:
        for i in range(60_000):
            fh.write((bad if i % 10 == 0 else good) + "\n")
    size = p.stat().st_size
    tracemalloc.start()
    report = validate(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.rows == 60_000 and report.usable == 54_000 and report.bad == 6_000
    assert len(report.problems) == D.MAX_PROBLEMS  # counted all, kept the first thousand
    assert peak < size / 5, (peak, size)
