"""Chat formats: which format a source's columns are in, and each record as an Example (chat messages or text).

Supported: OpenAI `messages`, ShareGPT `conversations`, prompt/completion, Alpaca and plain `text`. A record that
cannot be used raises RowProblem with the field at fault.
"""
from dataclasses import dataclass

from .errors import RowProblem

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant"}
# the columns each format reads, by their role in the format; `columns=` maps these names to the user's
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion", "system"),
    "alpaca": ("instruction", "input", "output", "system"),
    "text": ("text",),
}
PAIR_ALIASES = (("prompt", "completion"), ("prompt", "response"), ("question", "answer"), ("input", "output"))


@dataclass
class Example:
    """One training example: chat `messages`, or `text` for continued pre-training. `row` points into the source."""
    messages: list = None
    text: str = None
    row: int = 0

    def to_record(self):
        return {"messages": self.messages} if self.messages is not None else {"text": self.text}


def detect_format(keys, columns=None):
    """(format, column map) from a set of record keys and the user's explicit mapping."""
    columns = dict(columns or {})
    for fmt, cols in FORMAT_COLUMNS.items():
        if columns and set(columns) <= set(cols) and cols[0] in columns:
            return fmt, columns
    keys = set(keys) | set(columns.values())
    if "messages" in keys:
        return "messages", {"messages": "messages", **columns}
    if "conversations" in keys:
        return "sharegpt", {"conversations": "conversations", **columns}
    if {"instruction", "output"} <= keys:
        return "alpaca", {**{c: c for c in FORMAT_COLUMNS["alpaca"]}, **columns}
    for p, c in PAIR_ALIASES:
        if {p, c} <= keys:
            return "prompt_completion", {"prompt": p, "completion": c, "system": "system", **columns}
    if "text" in keys:
        return "text", {"text": "text", **columns}
    return None, columns


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
    """Raise RowProblem unless: optional system, then user/assistant alternating, ending with the assistant."""
    expected = "user"
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system":
            if i != 0:
                raise RowProblem(0, f"{name}[{i}].role", "a system message may only come first")
            continue
        if role != expected:
            raise RowProblem(0, f"{name}[{i}].role", f"roles not alternating: expected {expected!r}, found {role!r}")
        expected = "assistant" if role == "user" else "user"
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem(0, name, "missing assistant turn")
    if messages[-1]["role"] != "assistant":
        raise RowProblem(0, f"{name}[{len(messages) - 1}].role", "the last turn must be the assistant's")


def _turns(value, name, role_key, content_key, role_map):
    if not isinstance(value, list) or not value:
        raise RowProblem(0, name, "missing" if value is None else f"must be a non-empty list of turns, "
                                                                  f"not {type(value).__name__}")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowProblem(0, f"{name}[{i}]", f"must be an object with {role_key!r} and {content_key!r}")
        role = turn.get(role_key)
        if not isinstance(role, str) or role.lower() not in role_map:
            raise RowProblem(0, f"{name}[{i}].{role_key}", f"unknown role {role!r} (expected one of "
                                                          f"{', '.join(sorted(set(role_map)))})")
        out.append({"role": role_map[role.lower()], "content": _content(turn.get(content_key), f"{name}[{i}].{content_key}")})
    check_turns(out, name)
    return out


def normalise(rec, fmt, cols):
    """An Example from one record, or raise RowProblem."""
    if not isinstance(rec, dict):
        raise RowProblem(0, "-", f"expected an object with fields, got {type(rec).__name__}")
    if fmt == "messages":
        c = cols["messages"]
        return Example(messages=_turns(rec.get(c), c, "role", "content", {r: r for r in ROLES}))
    if fmt == "sharegpt":
        c = cols["conversations"]
        turns = rec.get(c)
        first = turns[0] if isinstance(turns, list) and turns else None
        keys = ("role", "content") if isinstance(first, dict) and "role" in first else ("from", "value")
        return Example(messages=_turns(turns, c, *keys, SHAREGPT_ROLES))
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
