"""Greedy answers to chat prompts, batched, with the model's own chat template; they end at the template's end of
turn (stop_token_ids). ftnb.core.chat streams answers one token at a time."""
import contextlib

import torch

from .models import mask_attention, stop_token_ids


def _as_messages(prompt, system=None):
    msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return ([{"role": "system", "content": system}] if system else []) + msgs


@torch.no_grad()
def generate(model, tokenizer, prompts, max_new_tokens=64, system=None, batch_size=16):
    """Answers (str) to one prompt or a list; a prompt is a user message or a list of chat messages."""
    single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict))
    prompts = [prompts] if single else list(prompts)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, model)
    answers = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(_as_messages(p, system), tokenize=False, add_generation_prompt=True)
                     for p in prompts[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with mask_attention(model):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                     top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
            answers += [a.strip() for a in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                                 skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers[0] if single else answers


def base_model_context(model):
    """A context in which a peft model answers like its base model (adapters off); a no-op for other models."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def compare(model, tokenizer, prompts, max_new_tokens=64, system=None):
    """[{prompt, base, tuned}] for a LoRA model: base answers with the adapter disabled, in the same weights."""
    tuned = generate(model, tokenizer, prompts, max_new_tokens, system)
    with base_model_context(model):
        base = generate(model, tokenizer, prompts, max_new_tokens, system)
    return [{"prompt": p, "base": b, "tuned": t} for p, b, t in zip(prompts, base, tuned)]
