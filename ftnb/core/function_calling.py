"""Function calling: the tools a conversation offers, the assistant's calls and the tools' results, read from OpenAI and
ShareGPT rows into one representation, and rendered for chat templates with or without tool support.

The representation (OpenAI's chat format, with the arguments parsed):
  Example.tools: [{"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}, ...]
  an assistant turn that calls tools: {"role": "assistant", "content": "" or text,
                                       "tool_calls": [{"id": ... (when given), "type": "function",
                                                       "function": {"name": ..., "arguments": {...}}}, ...]}
  a tool's result: {"role": "tool", "content": text, "tool_call_id": ... and "name": ... (when given)}

A chat template that mentions `tools` or `tool_calls` renders all of this itself (`tools=` is passed to it). For the
others ftnb rewrites the conversation into FALLBACK_FORMAT first.
"""
import functools
import json
import re
import textwrap

from .errors import RowProblem

TOOLS_SYSTEM = """\
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""

FALLBACK_FORMAT = """\
ftnb's fallback tool format, for chat templates without tool support (the Hermes and Qwen2.5 convention):
- The tools go in the system message: the block below, one JSON object per tool ({"type": "function", "function":
  {...}}) between <tools> and </tools>. It is appended to the conversation's system message after a blank line, or
  is the system message when the conversation has none.
- An assistant turn that calls tools is its text (if any), then each call as
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
  with a newline between the text and the first call, and between calls.
- Each tool result is a turn of its own, with the role "tool" and the result as its content.
Trained on: the assistant's turns, text and calls (except turns of weight 0); never the tools, the results, the
system or the user turns.

The system block:
""" + textwrap.indent(TOOLS_SYSTEM.format(tools='{"type": "function", "function": {"name": "get_weather", ...}}'), "    ")

NATIVE_NOTE = "with tools or tool calls, rendered in the chat template's own tool format (tools passed as tools=)"
FALLBACK_NOTE = ("with tools or tool calls, rendered in ftnb's fallback tool format (the chat template has no tool "
                 "support): the tools as JSON in the system message, each call as <tool_call> JSON in the assistant's "
                 "turn, each result as a 'tool' turn")


# -- reading --------------------------------------------------------------------------------------------------------

def normalise_tools(value, where):
    """The tool list of a row (a list, or a JSON string of one, as LLaMA-Factory writes it), or None when it has none.
    A bare function ({"name", "description", "parameters"}) is wrapped as OpenAI's {"type": "function", ...}."""
    if value is None or (isinstance(value, float) and value != value):  # NaN: an empty cell of a table
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        value = _parse_json(value, where)
    if not isinstance(value, list):
        raise RowProblem(0, where, f"must be a list of tools, not {_json_type(value)}")
    return [_tool(t, f"{where}[{k}]") for k, t in enumerate(value)] or None


def _tool(tool, where):
    if not isinstance(tool, dict):
        raise RowProblem(0, where, f"must be an object, not {_json_type(tool)}")
    if "function" in tool:
        if tool.get("type", "function") != "function":
            raise RowProblem(0, f"{where}.type", f"only function tools are supported, not {tool['type']!r}")
        fn, where = tool["function"], f"{where}.function"
        if not isinstance(fn, dict):
            raise RowProblem(0, where, f"must be an object, not {_json_type(fn)}")
    else:
        fn = tool
    fn = {k: v for k, v in fn.items() if v is not None}  # a table's missing fields
    _name(fn.get("name"), f"{where}.name")
    if not isinstance(fn.get("description", ""), str):
        raise RowProblem(0, f"{where}.description", f"must be text, not {_json_type(fn['description'])}")
    if "parameters" in fn:
        _json_object(fn["parameters"], f"{where}.parameters")
    return {"type": "function", "function": fn}


def normalise_calls(value, where):
    """An assistant turn's OpenAI `tool_calls`, the arguments parsed into a dict."""
    if not isinstance(value, list):
        raise RowProblem(0, where, f"must be a list of calls, not {_json_type(value)}")
    calls = []
    for k, call in enumerate(value):
        at = f"{where}[{k}]"
        if not isinstance(call, dict):
            raise RowProblem(0, at, f"must be an object, not {_json_type(call)}")
        if call.get("type") not in (None, "function"):
            raise RowProblem(0, f"{at}.type", f"only function calls are supported, not {call['type']!r}")
        if not isinstance(call.get("function"), dict):
            raise RowProblem(0, f"{at}.function", "missing" if call.get("function") is None else
                             f"must be an object with name and arguments, not {_json_type(call['function'])}")
        out = {"type": "function", "function": _function(call["function"], f"{at}.function")}
        if call.get("id") is not None:
            if not isinstance(call["id"], str):
                raise RowProblem(0, f"{at}.id", f"must be text, not {_json_type(call['id'])}")
            out = {"id": call["id"], **out}
        calls.append(out)
    return calls


def sharegpt_calls(value, where):
    """The calls of a ShareGPT `function_call` turn: its value is {"name", "arguments"} (or a list of them), as JSON."""
    if isinstance(value, str):
        value = _parse_json(value, where)
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise RowProblem(0, where, 'must be a call {"name": ..., "arguments": {...}} or a list of them')
    calls = []
    for k, item in enumerate(items):
        at = where if isinstance(value, dict) else f"{where}[{k}]"
        if not isinstance(item, dict):
            raise RowProblem(0, at, f"must be an object with name and arguments, not {_json_type(item)}")
        calls.append({"type": "function", "function": _function(item, at)})
    return calls


def _function(fn, where):
    args = fn.get("arguments")
    if isinstance(args, str):
        args = _parse_json(args, f"{where}.arguments")
    return {"name": _name(fn.get("name"), f"{where}.name"),
            "arguments": {} if args is None else _json_object(args, f"{where}.arguments")}


def _name(value, where):
    if not isinstance(value, str) or not value.strip():
        raise RowProblem(0, where, "missing" if value is None else "must be a non-empty name")
    return value


def _parse_json(text, where):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise RowProblem(0, where, "not valid JSON") from None


def _json_object(value, where):
    if not isinstance(value, dict):
        raise RowProblem(0, where, f"must be a JSON object, not {_json_type(value)}")
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):  # a Python object from a list of dicts
        raise RowProblem(0, where, "holds values that cannot be written as JSON") from None
    return value


def _json_type(value):
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


# -- rendering ------------------------------------------------------------------------------------------------------

def uses_tools(messages, tools=None):
    return bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def supports_tools(tokenizer, tools=None):
    """Whether the chat template (the one apply_chat_template picks for `tools`) renders tools and tool calls."""
    try:
        source = tokenizer.get_chat_template(tools=tools)
    except Exception:  # no template at all: apply_chat_template will say so
        return False
    return _mentions_tools(source)


@functools.lru_cache(maxsize=8)
def _mentions_tools(template):
    return bool(re.search(r"\btools\b|\btool_calls\b", template))


def fallback_messages(messages, tools=None):
    """The conversation in FALLBACK_FORMAT: plain system/user/assistant/tool turns of text."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = "\n".join(call_text(c) for c in m["tool_calls"])
            m = {**{k: v for k, v in m.items() if k != "tool_calls"},
                 "content": f"{m['content']}\n{calls}" if m["content"] else calls}
        elif m["role"] == "tool":
            m = {"role": "tool", "content": m["content"]}
        out.append(m)
    if tools:
        block = TOOLS_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def call_text(call):
    fn = call["function"]
    return ('<tool_call>\n' + json.dumps({"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False)
            + '\n</tool_call>')


def note_tool_format(report, n, native):
    """Say in `report.notes` how n rows with tool use were rendered; a second call (the validation part of the same
    source shares its report) adds to the count."""
    how = NATIVE_NOTE if native else FALLBACK_NOTE
    for k, line in enumerate(report.notes):
        seen = re.fullmatch(rf"(\d+) rows? {re.escape(how)}", line)
        if seen:
            total = n + int(seen.group(1))
            report.notes[k] = f"{total} rows {how}"
            return
    report.notes.append(f"{n} {'row' if n == 1 else 'rows'} {how}")
