"""Chat formats: which format a source's columns are in, and each record as an Example (chat messages or text).

Supported: OpenAI `messages`, ShareGPT `conversations`, prompt/completion, Alpaca and plain `text`. A record that
cannot be used raises RowProblem with the field at fault. Tools and tool calls (OpenAI's, and ShareGPT's
function_call and observation turns) are read into one representation: see function_calling.py.
"""
from dataclasses import dataclass

from .errors import RowProblem
from .function_calling import normalise_calls, normalise_tools, sharegpt_calls

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
# the columns each format reads, by their role in the format; `columns=` maps these names to the user's
FORMAT_COLUMNS = {
    "messages": ("messages", "tools"),
    "sharegpt": ("conversations", "system", "tools"),
    "prompt_completion": ("prompt", "completion", "system"),
    "alpaca": ("instruction", "input", "output", "system"),
    "text": ("text",),
}


@dataclass
class Example:
    """One training example: chat `messages`, or `text` for continued pre-training. `row` points into the source.
    `tools`: the functions the assistant may call (function_calling.py has the shapes), or None."""
    messages: list = None
    text: str = None
    row: int = 0
    tools: list = None

    def to_record(self):
        if self.messages is None:
            return {"text": self.text}
        return {"messages": self.messages, "tools": self.tools} if self.tools else {"messages": self.messages}


# column names taken for each role when the user names none, in this order, compared without case
SYNONYMS = {
    "messages": ("messages",), "conversations": ("conversations", "conversation"),
    "prompt": ("prompt", "prompts", "question", "questions", "query", "queries", "input", "inputs", "user"),
    "completion": ("completion", "completions", "answer", "answers", "response", "responses", "output", "outputs",
                   "reply", "assistant"),
    "system": ("system", "system_prompt"), "instruction": ("instruction", "instructions"),
    "input": ("input", "context"), "output": ("output", "outputs", "response"), "text": ("text",),
    "tools": ("tools", "functions"),
}
REQUIRED = {"messages": ("messages",), "sharegpt": ("conversations",), "prompt_completion": ("prompt", "completion"),
            "alpaca": ("instruction", "output"), "text": ("text",)}
FORMAT_NAMES = {"messages": "OpenAI messages", "sharegpt": "ShareGPT", "prompt_completion": "prompt/completion",
                "alpaca": "Alpaca", "text": "plain text"}


def resolve_format(keys, data_format="auto", columns=None, source="the data"):
    """(format, {role: column}, how it was told) from the column names of a source's first rows, the format asked
    for and the user's mapping {role: column}. Column names are matched without case and through the usual synonyms
    (question, answers, response, ...). Raises DataError, naming the columns there are and a command line that
    works as pasted, when the format cannot be told or the mapping does not fit the file."""
    from .errors import DataError
    keys = [str(k) for k in keys]
    by_lower = {}
    for k in keys:
        by_lower.setdefault(k.strip().lower(), k)
    columns = dict(columns or {})
    roles = sorted({r for rs in FORMAT_COLUMNS.values() for r in rs})
    for role, col in columns.items():
        if role not in roles:
            raise DataError(f"columns: {role!r} is not a role a format reads (roles: {', '.join(roles)}); map roles to "
                            f"your columns, e.g. {_example_flag(keys, source)}", source=source)
        found = col if col in keys else by_lower.get(str(col).strip().lower())
        if found is None and keys:
            raise DataError(f"columns: {role}={col} names no column of the file (its columns: {_listed(keys)})",
                            source=source)
        columns[role] = found or col
    fmt = data_format if data_format != "auto" else _format_of(columns, by_lower)
    if fmt is None:
        raise DataError(f"cannot tell the format from the columns ({_listed(keys) or 'none'}). Name the question and "
                        f"answer columns, e.g. {_example_flag(keys, source)}; or use columns named messages, "
                        "conversations, prompt+completion, instruction+output or text", source=source)
    stray = [r for r in columns if r not in FORMAT_COLUMNS[fmt]]
    if stray:
        raise DataError(f"columns: {', '.join(stray)} is not read by the {FORMAT_NAMES[fmt]} format (it reads "
                        f"{', '.join(FORMAT_COLUMNS[fmt])})", source=source)
    cols = {role: columns.get(role) or _synonym(role, by_lower) or role for role in FORMAT_COLUMNS[fmt]}
    missing = [r for r in REQUIRED[fmt] if keys and cols[r] not in keys]
    if missing:
        raise DataError(f"the {FORMAT_NAMES[fmt]} format needs a {' and a '.join(missing)} column, and none of the "
                        f"file's columns ({_listed(keys)}) is one; name it, e.g. {_example_flag(keys, source)}",
                        source=source)
    mapped = [c if c == r else f"{c} ({r})" for r, c in cols.items() if c in keys]
    how = ("as asked (data_format)" if data_format != "auto" else "from the columns") + \
        (f": {', '.join(mapped)}" if mapped else "")
    return fmt, cols, how


def ignored_columns(keys, fmt, cols):
    """The columns of a source that the format does not read."""
    return [str(k) for k in keys if k not in set(cols.values())]


ORDER = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")  # the first whose columns are there wins


def _format_of(columns, by_lower):
    """The format a mapping or, failing that, the column names point to (None when they point nowhere)."""
    named = set(columns) - {"system"}
    for fmt in ORDER:
        if named and named <= set(FORMAT_COLUMNS[fmt]):
            return fmt
    return next((fmt for fmt in ORDER if all(_synonym(r, by_lower) for r in REQUIRED[fmt])), None)


def _synonym(role, by_lower):
    return next((by_lower[name] for name in SYNONYMS[role] if name in by_lower), None)


def _listed(keys, n=20):
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _example_flag(keys, source):
    """A command line that works as pasted: the file's first two columns as question and answer."""
    import shlex
    q, a = (keys + ["QUESTION_COLUMN", "ANSWER_COLUMN"])[:2] if len(keys) != 1 else (keys[0], "ANSWER_COLUMN")
    data = shlex.quote(str(source)) if source not in ("list", "DataFrame", "datasets.Dataset") else "FILE"
    return (f"ftnb train --data {data} --columns {shlex.quote(f'prompt={q},completion={a}')} "
            f"(in Python: columns={{'prompt': {q!r}, 'completion': {a!r}}})")


def _text(value, where):
    if value is None:
        raise RowProblem(0, where, "missing")
    if not isinstance(value, str):
        if isinstance(value, float) and value != value:
            raise RowProblem(0, where, "empty (missing cell)")
        raise RowProblem(0, where, f"must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowProblem(0, where, "undecodable text (invalid UTF-8 or a lone surrogate)") from None
    if not value.strip():
        raise RowProblem(0, where, "empty content")
    return value


def _content(value, where):
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for j, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise RowProblem(0, f"{where}[{j}]", "only text content parts are supported")
            parts.append(_text(part.get("text"), f"{where}[{j}].text"))
        value = "".join(parts)
    return _text(value, where)


def check_turns(messages, name="messages"):
    """Raise RowProblem unless: optional system, then user/assistant alternating, ending with the assistant. An
    assistant turn with tool calls is followed by their results (`tool` turns), then the assistant goes on; it may
    also end the conversation (a dataset of calls without results)."""
    before, calls = None, None  # the role of the turn before ("call": an assistant turn with tool calls), its calls
    for i, m in enumerate(messages):
        role, where = m["role"], f"{name}[{i}]"
        if role == "system":
            if i != 0:
                raise RowProblem(0, f"{where}.role", "a system message may only come first")
            continue
        if role == "tool":
            if before not in ("call", "tool"):
                raise RowProblem(0, f"{where}.role", "a tool result must follow an assistant turn with tool_calls")
            ids = [c["id"] for c in calls[1] if "id" in c]
            if "tool_call_id" in m and ids and m["tool_call_id"] not in ids:
                raise RowProblem(0, f"{where}.tool_call_id", f"no call with this id in {name}[{calls[0]}].tool_calls")
        elif before == "call":
            raise RowProblem(0, f"{where}.role", f"expected the results of the tool calls in {name}[{calls[0]}] "
                                                 f"(role 'tool'), found {role!r}")
        else:
            expected = {None: "user", "user": "assistant", "assistant": "user", "tool": "assistant"}[before]
            if role != expected:
                also = " or 'tool'" if before == "tool" else ""
                raise RowProblem(0, f"{where}.role", f"roles not alternating: expected {expected!r}{also}, found {role!r}")
        if m.get("tool_calls"):
            role, calls = "call", (i, m["tool_calls"])
        before = role
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem(0, name, "missing assistant turn")
    if messages[-1]["role"] != "assistant":
        raise RowProblem(0, f"{name}[{len(messages) - 1}].role", "the last turn must be the assistant's")


def _turns(value, name, role_key, content_key, role_map):
    if not isinstance(value, list) or not value:
        raise RowProblem(0, name, "missing" if value is None else f"must be a non-empty list of turns, "
                                                                  f"not {type(value).__name__}")
    out = [_turn(turn, f"{name}[{i}]", role_key, content_key, role_map) for i, turn in enumerate(value)]
    check_turns(out, name)
    return out


def _turn(turn, where, role_key, content_key, role_map):
    if not isinstance(turn, dict):
        raise RowProblem(0, where, f"must be an object with {role_key!r} and {content_key!r}")
    role = turn.get(role_key)
    if not isinstance(role, str) or role.lower() not in role_map:
        raise RowProblem(0, f"{where}.{role_key}", f"unknown role {role!r} (expected one of "
                                                   f"{', '.join(sorted(set(role_map)))})")
    content = turn.get(content_key)
    if role.lower() == "function_call":  # ShareGPT: the turn's value is the call
        return {"role": "assistant", "content": "", "tool_calls": sharegpt_calls(content, f"{where}.{content_key}")}
    msg = {"role": role_map[role.lower()]}
    calls = turn.get("tool_calls") if msg["role"] == "assistant" else None
    if calls:  # None or []: a turn without calls (a table has the column in every turn)
        no_text = content is None or isinstance(content, str) and not content.strip()
        msg["content"] = "" if no_text else _content(content, f"{where}.{content_key}")
        msg["tool_calls"] = normalise_calls(calls, f"{where}.tool_calls")
    else:
        msg["content"] = _content(content, f"{where}.{content_key}")
    if msg["role"] == "tool":
        msg.update({k: _text(turn[k], f"{where}.{k}") for k in ("tool_call_id", "name") if turn.get(k) is not None})
    weight = turn.get("weight")
    if weight is not None and weight == weight:  # NaN: a table's empty cell
        if _weight(weight, f"{where}.weight", msg["role"]) == 0:
            msg["weight"] = 0
    return msg


def _weight(value, where, role):
    """OpenAI's per-turn weight: 0 keeps an assistant turn in the context but does not train on it."""
    if role != "assistant":
        raise RowProblem(0, where, "only assistant turns have a weight")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise RowProblem(0, where, f"must be 0 (not trained on) or 1, not {value!r}")
    return value


def normalise(rec, fmt, cols):
    """An Example from one record, or raise RowProblem."""
    if not isinstance(rec, dict):
        raise RowProblem(0, "-", f"expected an object with fields, got {type(rec).__name__}")
    if fmt == "messages":
        c = cols["messages"]
        return Example(messages=_turns(rec.get(c), c, "role", "content", {r: r for r in ROLES}), tools=_tools(rec, cols))
    if fmt == "sharegpt":
        c = cols["conversations"]
        turns = rec.get(c)
        first = turns[0] if isinstance(turns, list) and turns else None
        keys = ("role", "content") if isinstance(first, dict) and "role" in first else ("from", "value")
        messages = _turns(turns, c, *keys, SHAREGPT_ROLES)
        s = cols.get("system", "system")
        system = rec.get(s)
        if isinstance(system, str) and system.strip():
            if messages[0]["role"] == "system":
                raise RowProblem(0, s, f"the conversation has a system turn too ({c}[0])")
            messages.insert(0, {"role": "system", "content": _text(system, s)})
        return Example(messages=messages, tools=_tools(rec, cols))
    if fmt == "text":
        return Example(text=_text(rec.get(cols["text"]), cols["text"]))
    if fmt == "prompt_completion":
        user, answer = _text(rec.get(cols["prompt"]), cols["prompt"]), _text(rec.get(cols["completion"]), cols["completion"])
    elif fmt == "alpaca":
        user = _text(rec.get(cols["instruction"]), cols["instruction"])
        extra = rec.get(cols["input"])
        if isinstance(extra, str) and extra.strip():
            user = f"{user}\n\n{_text(extra, cols['input'])}"
        answer = _text(rec.get(cols["output"]), cols["output"])
    else:
        raise ValueError(fmt)
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    system = rec.get(cols.get("system", "system"))
    if isinstance(system, str) and system.strip():
        msgs.insert(0, {"role": "system", "content": _text(system, cols.get("system", "system"))})
    return Example(messages=msgs)


def _tools(rec, cols):
    c = cols.get("tools", "tools")
    return normalise_tools(rec.get(c), c)
