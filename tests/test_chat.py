"""The streaming chat engine (ftnb.core.chat), the stop tokens it and generate() share, the ChatML fallback's end
token, and `ftnb chat` driven through a fake terminal."""
import io
import sys
import threading

import pytest
import torch

import ftnb
from ftnb.cli import main
from ftnb.core.chat import Conversation, chat_stream
from ftnb.core.generate import generate
from ftnb.core.models import load_model, load_tokenizer, stop_token_ids


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, qa_data_module):
    """A LoRA run on the tiny model, trained hard enough (lr 1e-2) that its answers differ from the base's."""
    out = tmp_path_factory.mktemp("chat-runs")
    run = ftnb.train(model="tiny", data=qa_data_module, output_dir=str(out), run_name="lora", max_steps=6,
                     batch_size=4, eval_every=3, save_every=3, probe=False, learning_rate=1e-2)
    return run


@pytest.fixture(scope="module")
def qa_data_module():
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]


@pytest.fixture(scope="module")
def tiny():
    model, tok, _ = load_model("tiny")
    return model, tok


def force_token_after(model, token_id, n):
    """A hook on the output layer: from its n-th call on (call 1 is the prompt, each next one a new token) the logits
    make `token_id` certain. Returns the list its calls are counted in."""
    calls = []

    def hook(module, args, out):
        calls.append(1)
        if len(calls) >= n:
            out = out.clone()
            out[..., token_id] += 1e4
            return out
    model.get_output_embeddings().register_forward_hook(hook)
    return calls


def plain_model_folder(path, eos=True):
    """A base model folder as many are: a tokenizer without a chat template and without ChatML's tokens (its end of
    text token <|endoftext|>, or none), and a 2-layer Llama sized to that vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["Hello there, how are you? The capital of France is Paris."] * 4,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, **({"eos_token": "<|endoftext|>"} if eos else {}))
    assert tok.chat_template is None and "<|im_end|>" not in tok.get_vocab()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                                         eos_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


# -- the stop tokens ---------------------------------------------------------------------------------------------------

def test_the_chatml_fallback_ends_turns_with_a_stop_token(tmp_path):
    """A model without a chat template gets ChatML; its <|im_end|> becomes one special token (the embeddings grow by
    a row, the same on every load), a stop token for generate() and for model.generate() itself."""
    folder = plain_model_folder(tmp_path / "plain")
    from transformers import AutoTokenizer
    n = len(AutoTokenizer.from_pretrained(folder))
    tok = load_tokenizer(folder)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok("<|im_end|>", add_special_tokens=False)["input_ids"] == [end]  # not cut into pieces
    assert tok.eos_token == "<|endoftext|>" and stop_token_ids(tok) == [tok.eos_token_id, end]
    model, tok, _ = load_model(folder)
    rows = model.get_input_embeddings().weight
    assert rows.shape[0] == len(tok) == n + 2
    assert torch.equal(rows[-1], rows[:n].mean(0)) and torch.equal(load_model(folder)[0].lm_head.weight,
                                                                       model.lm_head.weight)
    assert set(stop_token_ids(tok, model)) == {tok.eos_token_id, end}
    assert end in model.generation_config.eos_token_id

    calls = force_token_after(model, end, 4)
    generate(model, tok, "Hello there", max_new_tokens=40)
    assert len(calls) == 4  # the prompt and 3 tokens, then <|im_end|>: the answer ended there, not at 40 tokens


def test_without_any_end_token_the_fallbacks_is_the_eos(tmp_path):
    tok = load_tokenizer(plain_model_folder(tmp_path / "plain", eos=False))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]


def test_end_of_turn_tokens_of_other_templates_are_found(tiny):
    """Llama 3's <|eot_id|> and Gemma's <end_of_turn>: stop tokens when the template uses them and the vocabulary
    has them (here added to a copy of the tiny tokenizer)."""
    import copy
    _, tok = tiny
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<|eot_id|>", "<end_of_turn>"]})
    eot, eoturn = tok.convert_tokens_to_ids(["<|eot_id|>", "<end_of_turn>"])
    assert eot not in stop_token_ids(tok) and eoturn not in stop_token_ids(tok)  # the template does not use them
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}"
    assert stop_token_ids(tok) == [tok.eos_token_id, eot]
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}<end_of_turn>{% endfor %}"
    assert stop_token_ids(tok) == [tok.eos_token_id, eoturn]


def test_an_answer_ends_at_the_end_of_turn_token(tiny):
    model, tok = tiny
    model = load_model("tiny")[0]  # a copy for the hook
    end = tok.convert_tokens_to_ids("<|im_end|>")
    calls = force_token_after(model, end, 6)
    stream = chat_stream(model, tok, "Hello!", max_new_tokens=200, greedy=True)
    text = "".join(stream)
    assert stream.finish == "end of turn" and len(stream.tokens) == 6 and stream.tokens[-1] == end
    assert len(calls) == 6 and "<|im_end|>" not in text and text == stream.text


# -- the engine --------------------------------------------------------------------------------------------------------

def test_a_conversation_renders_every_turn(tiny):
    model, tok = tiny
    conv = Conversation(system="You are terse.")
    first = "".join(conv.ask(model, tok, "What is 2 plus 2?", max_new_tokens=5, greedy=True))
    stream = conv.ask(model, tok, "And 3 plus 3?", max_new_tokens=5, greedy=True)
    assert stream.prompt == tok.apply_chat_template(
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2 plus 2?"},
         {"role": "assistant", "content": first.strip()}, {"role": "user", "content": "And 3 plus 3?"}],
        tokenize=False, add_generation_prompt=True)
    assert stream.prompt.endswith("<|im_start|>assistant\n") and stream.prompt.count("<|im_start|>user") == 2
    list(stream)
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "user", "assistant"]
    assert conv.messages[-1]["content"] == stream.text.strip() and conv.last is stream
    conv.reset()
    assert conv.messages == [] and conv.system == "You are terse."


def test_pieces_arrive_while_generating(tiny):
    """The text comes piece by piece, while the generation thread still runs."""
    model, tok = tiny
    stream = chat_stream(model, tok, "Hello!", max_new_tokens=40, greedy=True)
    alive = [stream.thread.is_alive() for _ in stream]
    assert len(alive) > 10 and alive[0] and stream.finish == "length" and len(stream.tokens) == 40
    assert not stream.thread.is_alive()


def test_greedy_is_deterministic_and_matches_generate(lora_run):
    model, tok = lora_run.model, lora_run.tokenizer
    answers = ["".join(chat_stream(model, tok, "What is 3 plus 3?", max_new_tokens=12, greedy=True, seed=s))
               for s in (1, 2)]
    assert answers[0] == answers[1] and answers[0].strip()
    assert answers[0].strip() == generate(model, tok, "What is 3 plus 3?", max_new_tokens=12)
    assert "".join(chat_stream(model, tok, "What is 3 plus 3?", max_new_tokens=12, temperature=0)) == answers[0]


def test_sampling_with_a_seed_is_reproducible(tiny):
    model, tok = tiny
    state = torch.random.get_rng_state()
    one, again, other = ("".join(chat_stream(model, tok, "Hi", max_new_tokens=20, temperature=1.0, top_p=0.95,
                                             seed=s)) for s in (7, 7, 8))
    assert one == again and one != other
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone


def test_stop_event_and_close_end_an_answer(tiny):
    model, tok = tiny
    stop = threading.Event()
    stream = chat_stream(model, tok, "Hello!", max_new_tokens=2000, greedy=True, stop_event=stop)
    for i, _ in enumerate(stream):
        if i == 3:
            stop.set()
    assert stream.finish == "stopped" and 4 <= len(stream.tokens) < 20
    stream = chat_stream(model, tok, "Hello!", max_new_tokens=2000, greedy=True)
    next(stream)
    stream.close()  # a reader that leaves early stops the generation too
    assert not stream.thread.is_alive() and stream.finish == "stopped" and len(stream.tokens) < 20
    with pytest.raises(StopIteration):
        next(stream)


def test_an_error_in_generation_reaches_the_reader(tiny, monkeypatch):
    model, tok = tiny

    def out_of_memory(**kw):
        kw["streamer"].put(kw["input_ids"][0])  # the prompt, then a word: then it fails
        kw["streamer"].put(torch.tensor(tok("Paris", add_special_tokens=False)["input_ids"]))
        raise torch.OutOfMemoryError("no room")
    monkeypatch.setattr(model, "generate", out_of_memory)
    stream = chat_stream(model, tok, "Hello!", max_new_tokens=5)
    with pytest.raises(torch.OutOfMemoryError, match="no room"):
        list(stream)
    assert stream.text == "Paris" and stream.finish == "error" and not stream.thread.is_alive()


def test_base_and_tuned_from_one_copy_of_the_weights(lora_run, tiny):
    """LoRA: adapter=False answers exactly as the base model does, from the same tensors (nothing copied); a tuned and
    a base answer asked at the same time take turns and come out as when asked one after the other."""
    model, tok = lora_run.model, lora_run.tokenizer
    ptrs, training = {p.data_ptr() for p in model.parameters()}, model.training
    kw = {"max_new_tokens": 12, "greedy": True}
    tuned = "".join(chat_stream(model, tok, "What is 3 plus 3?", **kw))
    base = "".join(chat_stream(model, tok, "What is 3 plus 3?", adapter=False, **kw))
    assert tuned != base
    assert base == "".join(chat_stream(tiny[0], tiny[1], "What is 3 plus 3?", **kw))  # the real base model's answer
    assert {p.data_ptr() for p in model.parameters()} == ptrs and model.training == training  # as it was

    results = {}

    def ask(adapter):
        results[adapter] = "".join(chat_stream(model, tok, "What is 3 plus 3?", adapter=adapter, **kw))
    threads = [threading.Thread(target=ask, args=(a,)) for a in (True, False, True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {True: tuned, False: base}


# -- ftnb chat ---------------------------------------------------------------------------------------------------------

class FakeStdin(io.StringIO):
    """Lines typed at the prompt; KeyboardInterrupt where a line is the string 'CTRL-C'."""

    def readline(self, *args):
        line = super().readline(*args)
        if line == "CTRL-C\n":
            raise KeyboardInterrupt
        return line


class InterruptingStdout(io.StringIO):
    """Raises KeyboardInterrupt (as Ctrl-C would) once, at the `after`-th piece of the first answer."""

    def __init__(self, after):
        super().__init__()
        self.after, self.pieces, self.fired = after, 0, False

    def write(self, text):
        answering = self.getvalue().rsplit("you> ", 1)[-1].startswith("model> ")
        if answering and text and not self.fired:
            self.pieces += 1
            if self.pieces == self.after:
                self.fired = True
                raise KeyboardInterrupt
        return super().write(text)


def chat_cli(monkeypatch, run, lines, *flags, stdout=None):
    monkeypatch.setattr(sys, "stdin", FakeStdin("".join(line + "\n" for line in lines)))
    out = stdout or io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    main(["chat", str(run.run_dir.path), *flags])
    monkeypatch.undo()
    return out.getvalue()


def test_the_chat_command_streams_and_takes_commands(lora_run, monkeypatch):
    model, tok = lora_run.model, lora_run.tokenizer
    q, kw = "What is 3 plus 3?", {"max_new_tokens": 8, "greedy": True}
    tuned = "".join(chat_stream(model, tok, q, **kw))
    again = "".join(chat_stream(model, tok, [{"role": "user", "content": q},
                                             {"role": "assistant", "content": tuned.strip()},
                                             {"role": "user", "content": q}], **kw))
    base = "".join(chat_stream(model, tok, q, adapter=False, **kw))
    assert again != tuned  # the history changes the answer
    out = chat_cli(monkeypatch, lora_run, [q, q, "/reset", "/base", q, "/quit", "never read"],
                   "--greedy", "--max-new-tokens", "8")
    turns = out.split("you> ")
    assert "the final weights (step 6); the tuned model" in turns[0]
    assert turns[1] == f"model> {tuned}\n(cut at --max-new-tokens)\n"
    assert turns[2] == f"model> {again}\n(cut at --max-new-tokens)\n"  # the second turn saw the first
    assert turns[3] == "(a new conversation)\n"
    assert turns[4] == "(now: the base model, adapter off)\n"
    assert turns[5] == f"base> {base}\n(cut at --max-new-tokens)\n"  # after /reset: a first question again
    assert len(turns) == 7 and "never read" not in out

    out = chat_cli(monkeypatch, lora_run, [q], "--base", "--greedy", "--max-new-tokens", "8",
                   "--checkpoint", "3", "--system", "Be brief.")
    assert "checkpoint of step 3; the base model" in out and out.endswith("you> \n")  # Ctrl-D: a clean exit


def test_ctrl_c_stops_the_answer_and_a_second_one_quits(lora_run, monkeypatch):
    out = InterruptingStdout(after=3)
    chat_cli(monkeypatch, lora_run, ["What is 3 plus 3?", "CTRL-C", "never read"], "--greedy",
             "--max-new-tokens", "2000", stdout=out)
    turns = out.getvalue().split("you> ")
    answer, note = turns[1].split("\n(stopped; Ctrl-C again or Ctrl-D to quit)\n")
    assert note == "" and answer.startswith("model> ") and len(answer) < 200  # stopped long before 2000 tokens
    assert len(turns) == 3 and turns[2] == "\n"  # the second Ctrl-C, at the prompt, ended the chat
    assert not [t for t in threading.enumerate() if t.name == "ftnb-chat"]  # no generation left running
