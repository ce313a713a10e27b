"""Talking to a model: answers streamed piece by piece as they are generated, over a whole conversation.

    conv = Conversation(system="You are Luigi's assistant.")
    for piece in conv.ask(run.model, run.tokenizer, "When do you close on Sundays?"):  # the answer joins conv
        print(piece, end="", flush=True)

`model.generate` runs in a thread and hands its tokens to transformers' TextIteratorStreamer; the stream only reads
them. Answers end at the chat template's own end of turn (stop_token_ids), at max_new_tokens, or when `stop_event`
is set. For a LoRA model, `adapter=False` answers as the base model, with the adapter switched off in the same
weights; generations on one model take turns (a lock), so a base answer never runs while a tuned one does.
"""
import contextlib
import functools
import threading
import weakref

import torch

from .generate import _as_messages, base_model_context
from .models import mask_attention, stop_token_ids

_LOCKS = weakref.WeakKeyDictionary()  # model -> the lock its generations take turns on
_LOCKS_GUARD = threading.Lock()


def model_lock(model):
    """The lock held while `model` generates (the adapter switch is a property of the model, not of a call)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.Lock())


class Conversation:
    """A chat's messages and its system prompt. `ask` streams the next answer and keeps it in `messages`."""

    def __init__(self, system=None, messages=None):
        self.system = system
        self.messages = list(messages or [])
        self.last = None  # the last answer's ChatStream (its text, tokens and why it ended)

    def ask(self, model, tokenizer, text, **kw):
        """The answer to `text` as a ChatStream (the keywords as for chat_stream). `text` joins the conversation now,
        the answer when its stream ends (stopped or not: what was generated)."""
        self.messages.append({"role": "user", "content": text})
        self.last = chat_stream(model, tokenizer, self, **kw)
        self.last.on_end = lambda stream: self.messages.append({"role": "assistant", "content": stream.text.strip()})
        return self.last

    def reset(self):
        self.messages.clear()

    def for_model(self):
        """The messages as the chat template receives them (with the system prompt first)."""
        return _as_messages(list(self.messages), self.system)


def chat_stream(model, tokenizer, messages, system=None, max_new_tokens=256, temperature=0.7, top_p=0.9,
                greedy=False, stop_event=None, adapter=True, seed=None):
    """The model's answer to `messages` (a Conversation, a list of {"role", "content"} or one user message), as an
    iterator of text pieces while it is generated. The conversation is rendered whole with the chat template and
    add_generation_prompt=True. `greedy` (or temperature 0): the most likely token each time, the same answer
    every time; otherwise sampling with `temperature` (lower: safer, blander) and `top_p` (only the most likely
    tokens that together hold this probability), reproducible with `seed`. `stop_event` (a threading.Event) ends
    the answer at the next token. `adapter=False`: a LoRA model answers as its base model.
    The returned ChatStream tells afterwards `text`, `tokens` and `finish` ("end of turn", "length", "stopped")."""
    return ChatStream(model, tokenizer, messages, system, max_new_tokens, temperature, top_p, greedy, stop_event,
                      adapter, seed)


class ChatStream:
    """An answer being generated: iterate it for its text pieces; close() stops it (and waits for the thread)."""

    def __init__(self, model, tokenizer, messages, system=None, max_new_tokens=256, temperature=0.7, top_p=0.9,
                 greedy=False, stop_event=None, adapter=True, seed=None):
        msgs = (messages.for_model() if isinstance(messages, Conversation) else
                _as_messages(messages if isinstance(messages, str) else list(messages), system))
        self.model, self.tokenizer = model, tokenizer
        self.prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        self.stops = stop_token_ids(tokenizer, model)
        self.max_new_tokens, self.adapter, self.seed = max_new_tokens, adapter, seed
        greedy = greedy or not temperature
        self.sampling = ({"do_sample": False, "temperature": None, "top_p": None, "top_k": None} if greedy else
                         {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0})
        self.stop_event, self.halt = stop_event, threading.Event()
        self.text, self.tokens, self.finish, self.error = "", [], None, None
        self.thread, self.on_end = None, None  # on_end(stream): called once, when the answer is over
        self._pieces = self._run()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._pieces)

    def close(self):
        """Stop generating (if it still runs) and wait for the thread to end."""
        self.halt.set()
        self._pieces.close()
        if self.thread is not None:
            self.thread.join()
        if self.finish is None:  # never started
            self._end("stopped")

    def _end(self, finish):
        self.finish = finish
        if self.on_end is not None:
            self.on_end(self)

    def _run(self):
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        enc = tok(self.prompt, return_tensors="pt", add_special_tokens=False).to(device)
        Streamer, EventStop = _hf()
        streamer = Streamer(tok, self.stops)
        kwargs = dict(**enc, max_new_tokens=self.max_new_tokens, streamer=streamer, eos_token_id=self.stops,
                      pad_token_id=tok.pad_token_id, stopping_criteria=[EventStop(self.stop_event, self.halt)],
                      use_cache=True, **self.sampling)
        n_prompt = enc["input_ids"].shape[1]

        def work():
            try:
                with contextlib.ExitStack() as ctx:
                    for c in (model_lock(model), _evaluating(model), torch.no_grad(), mask_attention(model),
                              contextlib.nullcontext() if self.adapter else base_model_context(model),
                              _seeded(self.seed, device)):
                        ctx.enter_context(c)
                    out = model.generate(**kwargs)
                self.tokens = out[0, n_prompt:].tolist()
            except BaseException as e:  # re-raised by the stream, in the caller's thread
                self.error = e
                streamer.end()
        self.thread = threading.Thread(target=work, daemon=True, name="ftnb-chat")
        self.thread.start()
        try:
            for piece in streamer:
                if piece:
                    self.text += piece
                    yield piece
        finally:
            self.halt.set()  # the reader left early (close(), break, an exception): generation stops too
            self.thread.join()
            self._end("error" if self.error is not None else
                      "end of turn" if self.tokens and self.tokens[-1] in self.stops else
                      "stopped" if len(self.tokens) < self.max_new_tokens else "length")
        if self.error is not None:
            raise self.error


@functools.cache
def _hf():
    """transformers' streamer and stopping criterion, made ftnb's (imported here: transformers takes seconds)."""
    from transformers import StoppingCriteria, TextIteratorStreamer

    class Streamer(TextIteratorStreamer):
        """TextIteratorStreamer without the prompt and without the stop tokens (also those that decode to text)."""

        def __init__(self, tokenizer, stops):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.stops = set(stops)

        def put(self, value):
            if self.next_tokens_are_prompt:
                return super().put(value)
            ids = [t for t in value.reshape(-1).tolist() if t not in self.stops]
            if ids:
                super().put(torch.tensor(ids))

    class EventStop(StoppingCriteria):
        """Ends every row once one of the events is set."""

        def __init__(self, *events):
            self.events = [e for e in events if e is not None]

        def __call__(self, input_ids, scores, **kwargs):
            stop = any(e.is_set() for e in self.events)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
    return Streamer, EventStop


@contextlib.contextmanager
def _evaluating(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def _seeded(seed, device):
    """Sampling from `seed`, leaving the caller's random state as it was."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
