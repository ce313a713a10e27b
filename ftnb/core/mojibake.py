"""Mojibake: text that was decoded with the wrong encoding somewhere before it reached the file ('itâ€™s' for "it’s").
Each text value of a record is checked with ftfy and, when asked, repaired; the caller reports where.

ftfy's check costs about 0.2 ms per KB, so it runs only on text holding a clue: a character that the first byte of
a UTF-8 character becomes in one of the single-byte encodings ftfy undoes, followed by one that a continuation byte
becomes (or by a space: a lost no-break space, except in MacRoman, as in ftfy), or a C1 control character. English
and CJK text never pay for it.
"""
import difflib
import re

import ftfy
import ftfy.bad_codecs  # registers the sloppy-windows-* codecs that ftfy.chardata names
from ftfy.chardata import CHARMAP_ENCODINGS


def _clues():
    pairs = []
    for enc in CHARMAP_ENCODINGS:
        lead = bytes(range(0xC2, 0xF5)).decode(enc, "ignore")
        cont = bytes(range(0x80, 0xC0)).decode(enc, "ignore") + (" " if enc != "macroman" else "")
        pairs.append(f"[{re.escape(lead)}][{re.escape(cont)}]")
    return re.compile("[\x80-\x9f]|" + "|".join(pairs))


CLUE = _clues()
_TOKEN = re.compile(r"[\x00-\x7f]+|[^\x00-\x7f]+")


def repaired(text):
    """`text` with its mojibake undone (the same object when there is none)."""
    if text.isascii() or not CLUE.search(text):
        return text
    try:
        fixed = ftfy.fix_encoding(text)
    except UnicodeError:  # text ftfy cannot encode (a lone surrogate): leave it to the text checks
        return text
    return text if fixed == text else fixed


def check(record, fix=True):
    """(record, [(field, detail)]): every text value of `record` (a dict, nested lists and dicts included) that
    holds mojibake, named like "messages[1].content", and the record with them repaired when `fix` (a copy: the
    caller's objects are never changed)."""
    if not isinstance(record, dict) or not _has_clue(record):
        return record, []
    found, stack = [], [((k,), v) for k, v in reversed(record.items())]
    while stack:  # not recursive: a record may nest as deep as json allows
        path, value = stack.pop()
        if isinstance(value, str):
            fixed = repaired(value)
            if fixed is not value:
                found.append((path, value, fixed))
        elif isinstance(value, dict):
            stack.extend(((*path, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, (list, tuple)):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(value))))
    notes = [(_field(record, path), _detail(old, new, fix)) for path, old, new in found]
    if fix and found:
        record = _replaced(record, [(path, new) for path, _, new in found])
    return record, notes


def _has_clue(record):
    """Whether any text in `record` holds a clue: the quick walk every row takes."""
    stack = [record]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and CLUE.search(value):
                return True
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return False


def _field(record, path):
    out, node = str(path[0]), record[path[0]]
    for key in path[1:]:
        out += f"[{key}]" if isinstance(node, (list, tuple)) else f".{key}"
        node = node[key]
    return out


def _detail(old, new, fix):
    """"mojibake 'â€™' repaired to '’'": the first changed stretch of non-ASCII text, and how many more."""
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    changes = [op for op in difflib.SequenceMatcher(None, a, b).get_opcodes() if op[0] != "equal"]
    _, i1, i2, j1, j2 = changes[0]
    bad, good = _short("".join(a[i1:i2])), _short("".join(b[j1:j2]))
    more = f" (and {len(changes) - 1} more in this text)" if len(changes) > 1 else ""
    if fix:
        return f"mojibake {bad!r} repaired to {good!r}{more}"
    return f"mojibake {bad!r} (probably {good!r}) not repaired (fix_encoding is off){more}"


def _short(s, n=24):
    return s if len(s) <= n else s[:n] + "…"


def _replaced(record, changes):
    """A copy of `record` with the value at each path replaced; only the containers on those paths are copied."""
    copies = {}

    def copy(node):
        if id(node) not in copies:
            new = dict(node) if isinstance(node, dict) else list(node)
            copies[id(node)] = copies[id(new)] = new
        return copies[id(node)]

    root = copy(record)
    for path, value in changes:
        node = root
        for key in path[:-1]:
            node[key] = copy(node[key])
            node = node[key]
        node[path[-1]] = value
    return root
