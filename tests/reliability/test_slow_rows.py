"""Long rows (issue 13, item 9): a conversation of many turns is rendered in linear time and a huge row is cut before
it is tokenised, with the same ids and masks as the straightforward algorithm (kept below as the reference)."""
import random

import pytest
from transformers import AutoTokenizer

from ftnb.core.batching import TooLong, first_tokens, tokenize_example
from ftnb.core.errors import RowProblem
from ftnb.core.formats import Example
from ftnb.core.errors import ModelNotFoundError
from ftnb.core.models import resolve_model

# SmolLM2's template: a default system prompt when the conversation has none
DEFAULT_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# incremental, but each turn depends on everything before it
NUMBERED_TEMPLATE = (
    "{% for message in messages %}{{ loop.index ~ '. ' ~ message['role'] ~ ': ' ~ message['content'] | trim ~ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ (messages | length + 1) ~ '. assistant: ' }}{% endif %}")
# the generation prompt opens a thinking block the rendered answers do not have
THINKING_TEMPLATE = DEFAULT_SYSTEM_TEMPLATE.replace("'<|im_start|>assistant\n' }}{% endif %}",
                                                    "'<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{% endif %}")


def reference_tokenize(tokenizer, example, max_seq_len, train_on="assistant"):
    """The straightforward algorithm: every prefix rendered, every piece tokenised whole, then shortened as
    overlong="turns" says (issue 14: up to the end of the last whole answer that fits)."""
    def render(msgs, gen=False):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) if msgs else ""

    if example.text is not None:
        pieces, eos = [(example.text, True)], [tokenizer.eos_token_id]
    else:
        messages, eos = example.messages, []
        full = render(messages)
        pieces, pos = [], 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start, end = len(render(messages[:i], gen=True)), len(render(messages[:i + 1]))
            if not (pos <= start <= end <= len(full)):
                raise RowProblem(0, f"messages[{i}]", "does not render this conversation incrementally")
            pieces += [(full[pos:start], False), (full[start:end], True)]
            pos = end
        pieces = [(t, a) for t, a in pieces + [(full[pos:], False)] if t]
    ids, mask, answer_ends = [], [], []
    for text, trained in pieces:
        t = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += t
        mask += [trained or train_on == "all"] * len(t)
        if trained and example.text is None:
            answer_ends.append(len(ids))
    ids, mask = ids + eos, mask + [True] * len(eos)
    if len(ids) <= max_seq_len:
        if not any(mask[1:]):
            raise RowProblem(0, "messages", "nothing to train on")
        return ids, mask, False
    if example.text is not None:  # overlong="turns": a plain text is cut
        return ids[:max_seq_len], mask[:max_seq_len], True
    fits = max((end for end in answer_ends if end <= max_seq_len), default=0)  # whole answers only
    if not any(mask[1:fits]):
        raise TooLong("not even its first answer fits")
    return ids[:fits], mask[:fits], True


class Counting:
    """A tokenizer that counts the messages it renders and the characters it tokenises."""

    def __init__(self, tokenizer):
        self.tokenizer, self.messages_rendered, self.chars_tokenised = tokenizer, 0, 0

    def apply_chat_template(self, messages, **kw):
        self.messages_rendered += len(messages)
        return self.tokenizer.apply_chat_template(messages, **kw)

    def __call__(self, text, **kw):
        self.chars_tokenised += len(text)
        return self.tokenizer(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.fixture(scope="module")
def tiny_tok(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture(scope="module", params=["chatml", "default-system", "default-model"])
def tok(request, tiny_path):
    if request.param == "default-model":
        try:
            return AutoTokenizer.from_pretrained(resolve_model("default", allow_download=False))
        except ModelNotFoundError as e:
            pytest.skip(str(e))
    t = AutoTokenizer.from_pretrained(tiny_path)
    if request.param == "default-system":
        t.chat_template = DEFAULT_SYSTEM_TEMPLATE
    return t


def conversation(pairs, system=None, words=6, seed=0):
    rng = random.Random(seed)
    say = lambda: " ".join(rng.choice(["pizza", "Sunday", "9pm", "ok", "¿qué?", "42", "tomato", "\n"])  # noqa: E731
                           for _ in range(rng.randint(1, words)))
    msgs = [{"role": "system", "content": system}] if system else []
    for _ in range(pairs):
        msgs += [{"role": "user", "content": say() + "?"}, {"role": "assistant", "content": say() + "."}]
    return msgs


CONVERSATIONS = [conversation(1), conversation(1, system="Be brief."), conversation(3, seed=1),
                 conversation(5, system="You answer about pizza.", words=30, seed=2), conversation(40, seed=3)]


def assert_as_before(tokenizer, example, max_seq_len, train_on="assistant"):
    try:
        expected = reference_tokenize(tokenizer, example, max_seq_len, train_on)
    except (RowProblem, TooLong) as p:
        with pytest.raises(type(p)):
            tokenize_example(tokenizer, example, max_seq_len, train_on)
        return
    got = tokenize_example(tokenizer, example, max_seq_len, train_on)
    assert (got.ids, got.mask, got.truncated) == expected


@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_conversations_tokenize_as_before(tok, train_on):
    for msgs in CONVERSATIONS:
        for max_seq_len in (10 ** 6, 200, 37):
            assert_as_before(tok, Example(messages=msgs), max_seq_len, train_on)
    assert_as_before(tok, Example(text="Some plain text for continued pre-training. " * 50), 64)


def test_templates_that_look_back_take_the_exact_path(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    tok.chat_template = NUMBERED_TEMPLATE
    for msgs in CONVERSATIONS:
        assert_as_before(tok, Example(messages=msgs), 10 ** 6)
    tok.chat_template = THINKING_TEMPLATE  # not incremental: the answers' start is misplaced, as before
    for msgs in CONVERSATIONS:
        assert_as_before(tok, Example(messages=msgs), 10 ** 6)
    short = [{"role": "user", "content": "Open?"}, {"role": "assistant", "content": "Yes."}]
    with pytest.raises(RowProblem, match="does not render this conversation incrementally"):
        tokenize_example(tok, Example(messages=short * 3), 10 ** 6)


def test_a_long_conversation_renders_in_linear_time(tok):
    msgs = conversation(800, system="Be brief.")
    counting = Counting(tok)
    t = tokenize_example(counting, Example(messages=msgs), 10 ** 6)
    assert counting.messages_rendered <= 10 * len(msgs)  # every prefix rendered: 800 per message
    assert tok.decode(t.ids) == tok.apply_chat_template(msgs, tokenize=False)
    assert sum(t.mask) == sum(len(tok(m["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"])
                              for m in msgs if m["role"] == "assistant")


@pytest.mark.parametrize("kind", ["answer", "text"])
def test_a_huge_row_is_cut_before_it_is_tokenised(tiny_tok, kind):
    def example(size):
        text = "lorem ipsum dolor sit amet " * (size // 27)
        return Example(text=text) if kind == "text" else Example(messages=[
            {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Write a lot."}, {"role": "assistant", "content": text}])

    counting = Counting(tiny_tok)
    t = tokenize_example(counting, example(4 * 2 ** 20), 1024)
    if kind == "text":  # a plain text is cut
        assert t.truncated and len(t) == 1024
    else:  # a conversation keeps its first exchange, whole
        assert t.truncated and len(t) < 40 and t.cut.startswith("kept the first 1 of 2 answers")
    assert counting.chars_tokenised <= 20 * 1024 * 8  # the whole 4 MB before
    assert (t.ids, t.mask, t.truncated) == reference_tokenize(tiny_tok, example(100_000), 1024)


def texts():
    rng = random.Random(0)
    words = ["pizza", "the", "Öffnungszeiten", "naïve", "don't", "x", "(a+b)", "über", "12", "3.14159", "—", "\t"]
    yield " ".join(rng.choice(words) for _ in range(8000))
    yield "def f(x):\n    return [i ** 2 for i in range(x)]  # squares\n\n" * 300
    yield "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(20000))  # CJK, several tokens per character
    yield "🍕🍅 " * 5000 + "e\u0301" * 3000  # emoji, combining accents
    yield "1234567890" * 3000
    yield "a" * 30000  # one word, no spaces
    yield "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEF0123456789+/") for _ in range(30000))  # base64-like
    yield "word " + " " * 20000 + "\n\n\n" * 3000 + "end"


def test_the_first_tokens_of_a_cut_text_are_those_of_the_whole_text(tok):
    for text in texts():
        whole = tok(text, add_special_tokens=False)["input_ids"]
        for n in (1, 7, 100, 999, len(whole), len(whole) + 1):
            assert first_tokens(tok, text, n) == whole[:n], (text[:40], n)
