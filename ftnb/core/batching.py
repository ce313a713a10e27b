"""From chat examples to packed token batches.

Each example is rendered with the tokenizer's chat template, piece by piece, so we know which tokens are the
assistant's (the only ones trained on, by default). A step's examples are concatenated into one row with
`position_ids` restarting at 0 for each example and no attention mask: transformers then builds a block-diagonal
causal mask, so examples never see each other and no token is padding.
"""
import random
from dataclasses import dataclass

import torch

from .errors import RowProblem
from .function_calling import fallback_messages, note_tool_format, supports_tools, uses_tools

IGNORE = -100


@dataclass
class Tokenized:
    ids: list
    mask: list  # mask[t]: token t is a training target
    row: int = 0
    truncated: bool = False
    cut: str = ""  # what was left out of an example longer than max_seq_len

    def __len__(self):
        return len(self.ids)


def chat_segments(tokenizer, messages, tools=None):
    """[(text, trained)] whose concatenation is the rendered conversation. Trained: the assistant's turns (answers
    and tool calls) but those of weight 0. With tools or tool calls, a chat template that supports them gets `tools=`;
    the others render the conversation rewritten in function_calling.FALLBACK_FORMAT."""
    tool_use, kw = uses_tools(messages, tools), {}
    if tool_use and supports_tools(tokenizer, tools):
        kw = {"tools": tools} if tools else {}
    elif tool_use:
        messages = fallback_messages(messages, tools)

    def render(msgs, gen=False):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw) if msgs else ""

    try:
        full = render(messages)
    except Exception as e:  # templates refuse some tool use ("only one tool call at once"): that row alone fails
        if not tool_use:
            raise
        raise RowProblem(0, "messages", f"the chat template cannot render this conversation: {e}") from None
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    bounds = _window_bounds(render, messages, answers, full)
    if bounds is None:
        bounds = _prefix_bounds(render, messages, answers, full)
    segments, pos = [], 0
    for i, (start, end) in zip(answers, bounds):
        segments += [(full[pos:start], False), (full[start:end], messages[i].get("weight", 1) != 0)]
        pos = end
    segments.append((full[pos:], False))
    return [(t, a) for t, a in segments if t]


def _prefix_bounds(render, messages, answers, full):
    """(start, end) of each answer in `full`: the lengths of the conversation rendered up to it (quadratic)."""
    bounds, pos = [], 0
    for i in answers:
        start, end = len(render(messages[:i], gen=True)), len(render(messages[:i + 1]))
        if not (pos <= start <= end <= len(full)):
            raise RowProblem(0, f"messages[{i}]", "the chat template does not render this conversation incrementally")
        bounds.append((start, end))
        pos = end
    return bounds


def _window_bounds(render, messages, answers, full):
    """The same bounds in linear time: each answer is rendered after only the exchange before it (and the system
    message). None when those renders do not piece together into `full`: the template looks further back (turn
    numbers, the last user message...), and only the quadratic renders are right."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    bounds, pos, context, after_prev = [], 0, [], 0
    for j, i in enumerate(answers):
        if j:  # the exchange before: from the answer before the previous one (or the system message) to it
            after_prev = answers[j - 1] + 1
            since = answers[j - 2] + 1 if j > 1 else len(head)
            context = head + messages[since:after_prev]
        try:
            base = render(context)
            prompt = render(context + messages[after_prev:i], gen=True)
            turn = render(context + messages[after_prev:i + 1])
        except Exception:  # a template may refuse a conversation cut this way; the quadratic renders decide
            return None
        start, end = pos + len(prompt) - len(base), pos + len(turn) - len(base)
        if not (prompt.startswith(base) and turn.startswith(base) and pos <= start <= end
                and full[pos:start] == prompt[len(base):] and full[pos:end] == turn[len(base):]):
            return None
        bounds.append((start, end))
        pos = end
    return bounds


class TooLong(Exception):
    """An example longer than max_seq_len that is left out (overlong='drop', or not even one answer fits)."""


def tokenize_example(tokenizer, example, max_seq_len, train_on="assistant", overlong="turns"):
    """Token ids and the mask of trained tokens. An example longer than max_seq_len: with overlong='turns' a
    conversation keeps its turns up to the end of the last answer that fits whole (an answer is never cut and
    trained on as if complete) and a plain text is cut; with 'drop', or when no answer fits, TooLong is raised."""
    if example.text is not None:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = first_tokens(tokenizer, example.text, max_seq_len + 1 - len(eos)) + eos
        if len(ids) <= max_seq_len:
            return Tokenized(ids, [True] * len(ids), example.row)
        if overlong == "drop":
            raise TooLong(f"dropped: a text longer than max_seq_len ({max_seq_len:,} tokens)")
        return Tokenized(ids[:max_seq_len], [True] * max_seq_len, example.row, True,
                         f"cut to its first {max_seq_len:,} tokens (a plain text)")
    pieces = chat_segments(tokenizer, example.messages, example.tools)
    ids, mask, fits, answers, kept = [], [], 0, sum(a for _, a in pieces), 0
    for text, answer in pieces:
        if len(ids) > max_seq_len:  # one token past the limit is enough to know the example is too long
            break
        t = first_tokens(tokenizer, text, max_seq_len + 1 - len(ids))
        ids += t
        mask += [answer or train_on == "all"] * len(t)
        if answer and len(ids) <= max_seq_len:
            fits, kept = len(ids), kept + 1  # the end of the last answer that fits whole
    too_long = len(ids) > max_seq_len
    if too_long and (overlong == "drop" or not any(mask[1:fits])):
        why = "" if overlong == "drop" else ", and not even its first answer fits"
        raise TooLong(f"dropped: longer than max_seq_len ({max_seq_len:,} tokens){why}")
    if not any(mask[1:]):
        raise RowProblem(example.row, "messages", "nothing to train on")
    if not too_long:
        return Tokenized(ids, mask, example.row)
    return Tokenized(ids[:fits], mask[:fits], example.row, True,
                     f"kept the first {kept} of {answers} answers ({fits:,} tokens; max_seq_len {max_seq_len:,})")


CUT_SLACK = 16  # tokens dropped before a cut in the text: the last ones can merge differently than in the whole text


def first_tokens(tokenizer, text, n):
    """The first n tokens of `text` (all of them if it has fewer), tokenising only a prefix of a long text."""
    chars = 8 * (n + CUT_SLACK)
    while chars < len(text):
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= n + CUT_SLACK:
            return ids[:n]
        chars *= 2
    return tokenizer(text, add_special_tokens=False)["input_ids"][:n]


def tokenize_data(data, tokenizer, max_seq_len, train_on="assistant", overlong="turns"):
    """Tokenized examples of a ChatData; rows that fail or are left out for their length move from `usable` to its
    report (problems, or over-long notes), and so does every row that was shortened."""
    out, report = [], data.report
    for ex in data.examples:
        try:
            t = tokenize_example(tokenizer, ex, max_seq_len, train_on, overlong)
        except TooLong as e:
            report.note("overlong", ex.row, "-", str(e))
            report.usable -= 1
            continue
        except RowProblem as p:
            report.add_problem(RowProblem(ex.row, p.field, p.reason))
            report.usable -= 1
            continue
        if t.truncated:
            report.note("overlong", ex.row, "-", t.cut)
            report.truncated += 1
        out.append(t)
    native = [supports_tools(tokenizer, ex.tools) for ex in data.examples
              if ex.messages is not None and uses_tools(ex.messages, ex.tools)]
    for how in (True, False):
        if how in native:
            note_tool_format(report, native.count(how), how)
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor     # (1, T)
    position_ids: torch.Tensor  # (1, T), restarts at 0 for each example
    labels: torch.Tensor        # (1, T), already shifted: labels[t] is the token predicted at t, or IGNORE
    n_tokens: int
    n_targets: int
    target_index: torch.Tensor  # positions t with labels[t] != IGNORE (found on the host: no GPU sync)
    targets: torch.Tensor       # labels at those positions
    starts: tuple = ()          # where each example begins, then T (attention.segments_attention's spans)

    def to(self, device):
        if device.type == "cpu":
            return self
        cuda = device.type == "cuda"  # pinned host memory lets the copy overlap with the GPU's work
        return Batch(*((x.pin_memory() if cuda else x).to(device, non_blocking=cuda) if torch.is_tensor(x) else x
                       for x in vars(self).values()))


def pack(examples):
    """One row of concatenated examples, no padding."""
    ids, pos, labels, starts = [], [], [], []
    for ex in examples:
        n = len(ex.ids)
        starts.append(len(ids))
        ids += ex.ids
        pos += range(n)
        labels += [ex.ids[t + 1] if ex.mask[t + 1] else IGNORE for t in range(n - 1)] + [IGNORE]
    index = [t for t, x in enumerate(labels) if x != IGNORE]
    t = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
    return Batch(t(ids), t(pos), t(labels), len(ids), len(index), torch.tensor(index, dtype=torch.long),
                 torch.tensor([labels[i] for i in index], dtype=torch.long), tuple(starts + [len(ids)]))


def micro_batches(examples, max_tokens):
    """Split a step's examples, in order, into groups of at most max_tokens tokens (an oversize example goes alone)."""
    groups, cur, size = [], [], 0
    for ex in examples:
        if cur and size + len(ex) > max_tokens:
            groups.append(cur)
            cur, size = [], 0
        cur.append(ex)
        size += len(ex)
    if cur:
        groups.append(cur)
    return groups


class StepPlan:
    """Which examples each optimizer step trains on: a seeded shuffle per epoch, so any step's batch can be
    recomputed (resume needs no saved sampler state)."""

    def __init__(self, n_examples, batch_size, epochs, max_steps, seed):
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self.steps_per_epoch = -(-n_examples // batch_size)
        self.total_steps = max_steps or max(1, round(epochs * self.steps_per_epoch))
        self._order = {}

    def epoch_of(self, step):
        return step / self.steps_per_epoch

    def indices(self, step):
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch not in self._order:
            order = list(range(self.n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._order = {epoch: order}
        return self._order[epoch][within * self.batch_size:(within + 1) * self.batch_size]
