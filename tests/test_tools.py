"""Tool calling (issue 14, item 3) and turn weights (item 7): OpenAI and ShareGPT rows read into one representation,
rendered by templates with and without tool support, trained on the assistant's calls and answers only."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import ftnb
from ftnb import load_examples
from ftnb.core.batching import chat_segments, tokenize_data, tokenize_example
from ftnb.core.data import ChatData
from ftnb.core.function_calling import fallback_messages

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# what both formats below read into
MESSAGES = [{"role": "system", "content": "You help with the weather."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "21 degrees in Paris."}]
TOOLS = [{"type": "function", "function": WEATHER}]

OPENAI_ROW = {"tools": TOOLS, "messages": [
    MESSAGES[0], MESSAGES[1],
    {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    MESSAGES[3], MESSAGES[4]]}
SHAREGPT_ROW = {"system": "You help with the weather.", "tools": json.dumps([WEATHER]), "conversations": [
    {"from": "human", "value": "Weather in Paris?"},
    {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
    {"from": "observation", "value": '{"temp": 21}'},
    {"from": "gpt", "value": "21 degrees in Paris."}]}

# a template with its own tool format, as Qwen2.5's and Llama 3.1's have
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>tools\n{% for t in tools %}{{ t.function | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.tool_calls %}<|im_start|>assistant\n{{ m.content }}{% for c in m.tool_calls %}"
    "<call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>result\n{{ m.content }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)  # ChatML, no tool support


@pytest.fixture(scope="module")
def tools_tok(tiny_path):
    t = AutoTokenizer.from_pretrained(tiny_path)
    t.chat_template = TOOLS_TEMPLATE
    return t


def trained_text(tokenizer, example):
    t = tokenize_example(tokenizer, example, 4096)
    assert tokenizer.decode(t.ids) == "".join(text for text, _ in chat_segments(tokenizer, example.messages,
                                                                                 example.tools))
    return tokenizer.decode([i for i, m in zip(t.ids, t.mask) if m])


def test_openai_and_sharegpt_tool_files_read_into_one_representation(tmp_path):
    openai = load_examples(write_jsonl(tmp_path / "openai.jsonl", [OPENAI_ROW]))
    sharegpt = load_examples(write_jsonl(tmp_path / "sharegpt.jsonl", [SHAREGPT_ROW]))
    assert openai.report.bad == sharegpt.report.bad == 0
    assert openai[0].messages == sharegpt[0].messages == MESSAGES
    assert openai[0].tools == sharegpt[0].tools == TOOLS


def test_the_fallback_format_trains_on_calls_and_answers_only(tok):
    ex = load_examples([OPENAI_ROW])[0]
    rendered = "".join(text for text, _ in chat_segments(tok, ex.messages, ex.tools))
    assert rendered.startswith("<|im_start|>system\nYou help with the weather.\n\n# Tools\n")
    assert json.dumps(TOOLS[0]) in rendered and "<|im_start|>tool\n{\"temp\": 21}<|im_end|>" in rendered
    assert trained_text(tok, ex) == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                     '</tool_call><|im_end|>\n21 degrees in Paris.<|im_end|>\n')


def test_a_template_with_tool_support_renders_them_itself(tools_tok):
    ex = load_examples([SHAREGPT_ROW])[0]
    rendered = "".join(text for text, _ in chat_segments(tools_tok, ex.messages, ex.tools))
    assert rendered.startswith('<|im_start|>tools\n{"name": "get_weather", "description"')
    assert "<|im_start|>result\n{\"temp\": 21}<|im_end|>" in rendered and "<tool_call>" not in rendered
    assert trained_text(tools_tok, ex) == ('<call>get_weather {"city": "Paris"}</call><|im_end|>\n'
                                           '21 degrees in Paris.<|im_end|>\n')


class Counting:
    """A tokenizer that counts the messages it renders."""

    def __init__(self, tokenizer):
        self.tokenizer, self.rendered = tokenizer, 0

    def apply_chat_template(self, messages, **kw):
        self.rendered += len(messages)
        return self.tokenizer.apply_chat_template(messages, **kw)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("which,call", [
    ("tok", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'),
    ("tools_tok", '<call>get_weather {"city": "Paris"}</call><|im_end|>\n')])
def test_a_long_tool_conversation_renders_in_linear_time(request, which, call):
    counting = Counting(request.getfixturevalue(which))
    msgs = MESSAGES[:1] + MESSAGES[1:] * 300
    segments = chat_segments(counting, msgs, TOOLS)
    assert counting.rendered <= 10 * len(msgs)  # every prefix rendered: 600 per message
    assert [t for t, trained in segments if trained] == [call, "21 degrees in Paris.<|im_end|>\n"] * 300


def test_weight_zero_turns_are_in_the_context_but_not_trained(tok):
    msgs = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Bad answer.", "weight": 0},
            {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Good answer.", "weight": 1}]
    ex = load_examples([{"messages": msgs}])[0]
    assert ex.messages[1]["weight"] == 0 and "weight" not in ex.messages[3]
    t = tokenize_example(tok, ex, 4096)
    assert "Bad answer." in tok.decode(t.ids) and trained_text(tok, ex) == "Good answer.<|im_end|>\n"
    data = load_examples([{"messages": msgs[:2]}])  # nothing left to train on
    assert tokenize_data(data, tok, 4096) == [] and data.report.problems[0].reason == "nothing to train on"


def test_everything_survives_the_run_folder_round_trip(tmp_path):
    rows = [OPENAI_ROW, SHAREGPT_ROW,
            {"messages": [{"role": "user", "content": "Two cities?"},
                          {"role": "assistant", "content": "Checking both.", "tool_calls": [
                              {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                              {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
                          {"role": "tool", "tool_call_id": "a", "name": "get_weather", "content": "5"},
                          {"role": "tool", "tool_call_id": "b", "content": "25"},
                          {"role": "assistant", "content": "Oslo 5, Rome 25.", "weight": 0},
                          {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "Welcome."}]}]
    data = ChatData(load_examples([rows[0], rows[2]]).examples + load_examples([rows[1]]).examples, None)
    back = load_examples(write_jsonl(tmp_path / "train.jsonl", [json.loads(line) for line in
                                                                 data.to_jsonl().split("\n")[:-1]]))
    assert back.report.bad == 0
    assert [(e.messages, e.tools) for e in back] == [(e.messages, e.tools) for e in data]
    assert back[1].messages[1]["tool_calls"][1] == {"id": "b", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Rome"}}}
    assert back[1].messages[2] == {"role": "tool", "content": "5", "tool_call_id": "a", "name": "get_weather"}


@pytest.mark.parametrize("row,field,reason", [
    ({"messages": [MESSAGES[1], {"role": "assistant", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": "{city: Paris}"}}]}]},
     "messages[1].tool_calls[0].function.arguments", "not valid JSON"),
    ({"messages": [MESSAGES[1], {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[1].tool_calls[0].function.arguments", "must be a JSON object, not a list"),
    ({"messages": [MESSAGES[1], {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
     "messages[1].tool_calls[0].function.name", "missing"),
    ({"messages": [MESSAGES[1], {"role": "assistant", "tool_calls": [{"name": "f"}]}]},
     "messages[1].tool_calls[0].function", "missing"),
    ({"messages": [MESSAGES[1], {"role": "assistant", "tool_calls": {"name": "f"}}]},
     "messages[1].tool_calls", "must be a list of calls, not an object"),
    ({"messages": [MESSAGES[1], MESSAGES[3], MESSAGES[4]]},
     "messages[1].role", "a tool result must follow an assistant turn with tool_calls"),
    ({"messages": MESSAGES[1:3] + [MESSAGES[4]]},
     "messages[2].role", "expected the results of the tool calls in messages[1] (role 'tool'), found 'assistant'"),
    ({"messages": MESSAGES[1:4]}, "messages[2].role", "the last turn must be the assistant's"),
    ({"messages": [MESSAGES[1], {**MESSAGES[2], "tool_calls": [{"id": "x", **MESSAGES[2]["tool_calls"][0]}]},
                   {**MESSAGES[3], "tool_call_id": "y"}, MESSAGES[4]]},
     "messages[2].tool_call_id", "no call with this id in messages[1].tool_calls"),
    ({"messages": MESSAGES, "tools": "[{\"description\": \"no name\"}]"}, "tools[0].name", "missing"),
    ({"messages": MESSAGES, "tools": "{not json"}, "tools", "not valid JSON"),
    ({"messages": [MESSAGES[1], {**MESSAGES[4], "weight": 0.5}]}, "messages[1].weight",
     "must be 0 (not trained on) or 1, not 0.5"),
    ({"messages": [{**MESSAGES[1], "weight": 0}, MESSAGES[4]]}, "messages[0].weight",
     "only assistant turns have a weight"),
    ({**SHAREGPT_ROW, "conversations": [SHAREGPT_ROW["conversations"][0],
                                        {"from": "function_call", "value": '{"name": "get_weather"'}]},
     "conversations[1].value", "not valid JSON"),
    ({"system": "Be brief.", "conversations": [{"from": "system", "value": "Be long."}, *SHAREGPT_ROW["conversations"]]},
     "system", "the conversation has a system turn too (conversations[0])"),
])
def test_malformed_tool_use_is_a_row_problem_naming_the_field(row, field, reason):
    data = load_examples([row])
    assert len(data) == 0 and (data.report.problems[0].field, data.report.problems[0].reason) == (field, reason)


def test_the_report_says_which_tool_format_was_used(tok, tools_tok, qa_data):
    data = load_examples([OPENAI_ROW, OPENAI_ROW] + qa_data[:3])
    train, val = data.split(0.4, seed=0)
    tokenize_data(train, tok, 4096)
    tokenize_data(val, tok, 4096)  # the same report: one line, both parts counted
    assert data.report.notes == ["2 rows with tools or tool calls, rendered in ftnb's fallback tool format (the chat "
                                 "template has no tool support): the tools as JSON in the system message, each call "
                                 "as <tool_call> JSON in the assistant's turn, each result as a 'tool' turn"]
    native = load_examples([OPENAI_ROW] + qa_data[:3])
    tokenize_data(native, tools_tok, 4096)
    assert native.report.notes == ["1 row with tools or tool calls, rendered in the chat template's own tool format "
                                   "(tools passed as tools=)"]
    plain = load_examples(qa_data)
    tokenize_data(plain, tok, 4096)
    assert plain.report.notes == []


def test_train_and_resume_a_tool_calling_file(tmp_path, qa_data):
    path = write_jsonl(tmp_path / "tools.jsonl", [OPENAI_ROW] * 8 + qa_data[:4])
    run = ftnb.train(model="tiny", data=path, max_steps=2, probe=False, batch_size=4, val_fraction=0.25,
                     output_dir=str(tmp_path / "runs"))
    assert run.run_dir.status()["state"] == "finished"
    assert "8 rows with tools or tool calls" in run.train_data.report.notes[0]
    saved = [json.loads(line) for line in (run.run_dir.path / "data" / "train.jsonl").read_text().splitlines()]
    assert sum("tools" in r for r in saved) == sum(e.tools is not None for e in run.train_data) > 0
    resumed = ftnb.resume(run.run_dir.path, max_steps=4)
    assert resumed.run_dir.status()["state"] == "finished"
    assert [(e.messages, e.tools) for e in resumed.train_data] == [(e.messages, e.tools) for e in run.train_data]
    assert [t.mask for t in resumed.train_data.tokenized] == [t.mask for t in run.train_data.tokenized]


def test_the_token_view_shows_calls_and_results_and_highlights_the_assistant(tmp_path, tok):
    from ftnb.panels import DatasetBuilder
    evil = "<script>alert(1)</script>"
    row = json.loads(json.dumps(OPENAI_ROW).replace("Paris", evil))
    b = DatasetBuilder(autosave=str(tmp_path / "auto.jsonl"), tokenizer=tok)
    b.load([row, {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}])
    html = b.render_html(0)
    assert "<script>" not in html and "fallback format" in html
    marks = [part.split("</mark>")[0] for part in html.split('<mark style="background:rgba(76,175,80,0.35);color:inherit">')[1:]]
    assert marks == ['&lt;tool_call&gt;\n{&quot;name&quot;: &quot;get_weather&quot;, &quot;arguments&quot;: '
                     '{&quot;city&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;}}\n&lt;/tool_call&gt;'
                     '&lt;|im_end|&gt;\n', '21 degrees in &lt;script&gt;alert(1)&lt;/script&gt;.&lt;|im_end|&gt;\n']
    assert "&lt;|im_start|&gt;tool\n{&quot;temp&quot;: 21}" in html
    # the editor shows the tool example read-only, and edits plain ones as before
    b.pick.value = 1
    assert b.read_only and b.save_button.disabled and "read-only" in b.editor_msg.value
    assert [row.children[0].value for row in b.turns.children] == ["system", "user", "assistant", "tool", "assistant"]
    assert "<tool_call>" in b.turns.children[2].children[1].value
    b.save_button.click()
    assert b.examples[0].tools == TOOLS and "read-only" in b.editor_msg.value
    b.pick.value = 2
    assert not b.read_only and not b.save_button.disabled
    b.turns.children[1].children[1].value = "Hello there."
    b.save_button.click()
    assert b.examples[1].messages[1]["content"] == "Hello there."
    b.update_example(0, b.examples[0].messages[:2] + [{"role": "assistant", "content": "Sunny."}])
    assert b.examples[0].tools == TOOLS  # kept



json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                           max_leaves=6)
words = st.text(min_size=1, max_size=12) | st.sampled_from(["Paris", "<|im_end|>", "{{ x }}", "</tool_call>"])


@st.composite
def tool_rows(draw):
    """A valid tool-calling row, then (half the time) one field replaced by anything."""
    msgs = [{"role": "system", "content": draw(words)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(words)})
        while draw(st.booleans()):
            ids = draw(st.sampled_from([["a"], ["a", "b"], [None]]))
            args = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2))
            msgs.append({"role": "assistant", "content": draw(st.sampled_from([None, "", "Let me look."])),
                         "tool_calls": [{"id": i, "type": "function", "function": {
                             "name": draw(words), "arguments": draw(st.sampled_from([args, json.dumps(args)]))}}
                             for i in ids]})
            msgs += [{"role": "tool", "tool_call_id": i, "content": draw(words)} for i in ids]
        msgs.append({"role": "assistant", "content": draw(words), "weight": draw(st.sampled_from([0, 1, None]))})
    row = {"messages": msgs, "tools": draw(st.sampled_from([None, TOOLS, json.dumps([WEATHER])]))}
    if draw(st.booleans()):
        turn = draw(st.sampled_from(msgs))
        turn[draw(st.sampled_from(["role", "content", "tool_calls", "tool_call_id", "weight"]))] = draw(json_values)
    return row


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(tool_rows(), min_size=1, max_size=3))
def test_random_tool_rows_load_render_and_round_trip_or_are_row_problems(tok, rows):
    data = load_examples(rows, fix_encoding=False)  # a lone U+0080 would be repaired as mojibake for '€'
    assert data.report.rows == data.report.usable + data.report.bad == len(rows)
    if not len(data):
        return
    back = load_examples([json.loads(line) for line in data.to_jsonl().split("\n")[:-1]], fix_encoding=False)
    # compared as JSON text: a NaN among the arguments is never equal to itself, but it round-trips
    same = lambda d: [json.dumps([e.messages, e.tools], sort_keys=True) for e in d]  # noqa: E731
    assert same(back) == same(data)
    for ex in data:
        segments = chat_segments(tok, ex.messages, ex.tools)
        assert "".join(t for t, _ in segments) == tok.apply_chat_template(fallback_messages(ex.messages, ex.tools),
                                                                          tokenize=False)
        assert [t for t, trained in segments if trained] == [
            t for t in (tok.apply_chat_template([m], tokenize=False)[len("<|im_start|>assistant\n"):]
                        for m in fallback_messages(ex.messages) if m["role"] == "assistant" and m.get("weight") != 0) if t]
