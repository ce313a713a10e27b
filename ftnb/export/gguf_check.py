"""Whether a GGUF file behaves like the model it was written from: read back as transformers reads GGUF (and as
llama.cpp does, when llama-cpp-python is installed), it must split the prompts into the same tokens, carry the same
chat template, and give the same logits (within a tolerance for its type) and greedy answers.

The greedy answers are compared in one pass: each prompt followed by the tuned model's greedy answer is read by the
file's model, which would answer the same greedily exactly when its top logit at every answer position is the next
token of that answer. The logits are compared at the same positions, answer included.
"""
import contextlib
import functools
from pathlib import Path

import numpy as np
import torch

from .merge import CHECK_PROMPTS, max_logit_gap


@contextlib.contextmanager
def _no_reading_bar():
    """transformers draws a progress bar for each GGUF file it reads: reading back our own file is the check, not a
    download, and the bar would interleave with the command's report."""
    import transformers.modeling_gguf_pytorch_utils as reader
    real = reader.tqdm
    reader.tqdm = functools.partial(real, disable=True)
    try:
        yield
    finally:
        reader.tqdm = real

# digits and a sum, as in most fine-tuning data: byte-level tokenizers differ most in how they split numbers
PROMPTS = CHECK_PROMPTS + ("What is 12 plus 34?",)
ANSWER_TOKENS = 20
# the largest logit difference accepted, relative to the largest logit (at least 1). Measured 2026-11-30 on a LoRA run
# of SmolLM2-135M (CPU), read by transformers / llama.cpp: f32 3e-6 / 1.2e-3 (llama.cpp's cache is f16), f16 1.1e-3 /
# 1.9e-3, bf16 2.1e-2 / 2.2e-2, q8_0 2.9e-2 / 5.6e-2; the tiny model's were smaller
TOLERANCE = {"f32": 1e-4, "f16": 5e-3, "bf16": 6e-2, "q8_0": 1e-1}
EXACT_ANSWERS = ("f32", "f16")  # types whose greedy answers must equal the tuned model's


def reference(model, tok):
    """The tuned model's greedy answers to PROMPTS and its logits of PROMPTS followed by them (merge.py too compares
    with the model before merging), and how far the base model's logits are (None without an adapter): a gap the
    file's must stay far below, or the comparison would not tell a tuned model from its base."""
    texts = _chat_texts(tok, PROMPTS)
    answers = _greedy(model, tok, texts)
    expected = {"answers": answers, "logits": _read(model, tok, texts, answers)}
    if not hasattr(model, "disable_adapter"):
        return expected, None
    with model.disable_adapter():
        return expected, max_logit_gap(expected["logits"], _read(model, tok, texts, answers))


def verify(path, tok, expected, type):
    """Read the file as transformers (and llama.cpp, when installed) would and compare it with the tuned model's
    `expected`: its greedy answers to PROMPTS and the logits of PROMPTS followed by them. Returns the measures and a
    list of problems (empty: all good)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = Path(path)
    problems = []
    with _no_reading_bar():
        gguf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    texts = _chat_texts(tok, PROMPTS)
    ids_equal = all(tok(t)["input_ids"] == gguf_tok(t)["input_ids"] for t in texts)
    if not ids_equal:
        problems.append("its tokenizer splits the prompts into other tokens")
    template_equal = gguf_tok.chat_template == tok.chat_template
    if not template_equal:
        problems.append("its chat template differs")
    logits = _read(model, tok, texts, expected["answers"])
    scale = max(1.0, max(float(r.abs().max()) for r in expected["logits"]))
    limit = TOLERANCE[type] * scale
    checks = {**_compare(logits, expected, limit, type, exact=type in EXACT_ANSWERS), "tolerance": limit,
              "tokens_equal": ids_equal, "chat_template_equal": template_equal, "llama_cpp": None,
              "answers": [tok.decode(a, skip_special_tokens=True) for a in expected["answers"]]}
    problems += checks.pop("problems")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {**checks, "problems": problems}
    # llama.cpp keeps its attention cache in f16, whatever the weights: an f32 file is checked as an f16 one there
    checks["llama_cpp"] = _llama_cpp_check(path, tok, texts, expected, max(limit, TOLERANCE["f16"] * scale), type)
    return {**checks, "problems": problems + checks["llama_cpp"].pop("problems")}


def _compare(logits, expected, limit, type, exact, who="its"):
    """The largest logit gap, how many greedy answers are the same, and what is wrong (different answers only when
    `exact`)."""
    gap = max_logit_gap(expected["logits"], logits)
    same = sum(_answers_with(x, a) for x, a in zip(logits, expected["answers"]))
    problems = [] if gap <= limit else [f"{who} logits differ by {gap:.3g} (more than the {limit:.3g} {type} allows)"]
    if exact and same < len(logits):
        problems.append(f"{who} greedy answers differ for {len(logits) - same} of {len(logits)} prompts")
    return {"max_logit_gap": gap, "answers_equal": same, "problems": problems}


def _answers_with(logits, answer):
    """Whether greedy decoding gives `answer` after the prompt these logits (of prompt and answer) were read with."""
    return not answer or logits[-len(answer) - 1:-1].argmax(-1).tolist() == answer


@torch.no_grad()
def _greedy(model, tok, texts):
    """The token ids of each text's greedy continuation (ANSWER_TOKENS at most, to the end-of-turn token)."""
    out = []
    for text in texts:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=ANSWER_TOKENS,
                             do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        out.append(new[0, ids.shape[1]:].tolist())
    return out


@torch.no_grad()
def _read(model, tok, texts, answers):
    """The logits of each text followed by its answer, in one pass."""
    return [model(torch.tensor([tok(t, add_special_tokens=False)["input_ids"] + a])).logits[0].float()
            for t, a in zip(texts, answers)]


def _chat_texts(tok, prompts):
    return [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def _llama_cpp_check(path, tok, texts, expected, limit, type):
    """The same comparison through llama.cpp (llama-cpp-python): token ids, then logits and greedy answers (counted,
    not required: llama.cpp computes in its own precision)."""
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False)
    try:
        if any(llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) != tok(t)["input_ids"] for t in texts):
            return {"problems": ["llama.cpp splits the prompts into other tokens"]}
        logits = []
        for text, answer in zip(texts, expected["answers"]):
            llm.reset()
            llm.eval(tok(text, add_special_tokens=False)["input_ids"] + answer)
            logits.append(torch.from_numpy(np.array(llm.scores[:llm.n_tokens])))
    finally:
        llm.close()
    return _compare(logits, expected, limit, type, exact=False, who="llama.cpp's")
