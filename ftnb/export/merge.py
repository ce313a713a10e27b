"""Export a run as a standard transformers folder, merging a LoRA adapter into the base weights.

Other tools often hand back a "merged" model that behaves like the base model (the adapter was lost on the way).
Before we report success the folder is loaded back from disk and its logits are compared with the adapter model's.
"""
from pathlib import Path

import torch

from ..core.durable import atomic_dir
from ..core.errors import RunError
from ..core.saved import load_run

CHECK_PROMPTS = ("What time do you close on Sundays?", "What is the capital of France?", "Write one sentence about cats.")


def _logits(model, tokenizer, prompts):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    with torch.no_grad():
        return [model(**tokenizer(t, return_tensors="pt", add_special_tokens=False).to(model.device)).logits[0].float()
                for t in texts]


def merged_model(model):
    """`model` with its LoRA adapter merged into the base weights (in place, by peft); any other model as it is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def max_logit_gap(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def export(run_dir, out, merge=True, prompts=CHECK_PROMPTS, tolerance=1e-3, overwrite=False, trust_remote_code=False,
           checkpoint=None):
    """Write the run's model to `out` (merged when it is a LoRA run) and verify it. Returns a dict of what was done.
    `checkpoint`: "last" (default), "best" or a step; `trust_remote_code`: allow the model's own Python code (never
    taken from the run folder)."""
    from transformers import AutoModelForCausalLM
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunError(f"{out} exists and is not empty; choose a new folder (nothing was written)")
    run = load_run(run_dir, device="cpu", checkpoint=checkpoint, trust_remote_code=trust_remote_code)
    model, tok = run.model, run.tokenizer
    reference = _logits(model, tok, prompts)
    is_lora = hasattr(model, "merge_and_unload")
    base_gap = None
    if is_lora:  # how far the tuned model is from its base: shows the check below is not vacuous
        with model.disable_adapter():
            base_gap = max_logit_gap(reference, _logits(model, tok, prompts))
    if is_lora and not merge:
        raise RunError("a LoRA run without --merge is its adapter/ folder already; pass merge=True for a full model")
    merged = merged_model(model)
    merged.config.use_cache = True

    def write(tmp):
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    # the new folder is written whole before it takes the old one's place: a failed write leaves the old export
    atomic_dir(out, write, intact=f"{out} is as it was" if out.exists() else "nothing was written")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, use_safetensors=True,
                                                    trust_remote_code=trust_remote_code)
    gap = max_logit_gap(reference, _logits(reloaded, tok, prompts))
    if not gap <= tolerance * max(1.0, max(float(r.abs().max()) for r in reference)):
        raise RunError(f"the exported model's logits differ from the tuned model's by {gap:.3g}; {out} is not "
                       "trustworthy (kept for inspection)")
    return {"out": str(out), "merged": is_lora, "weights": run.weights, "max_logit_gap": gap,
            "base_vs_tuned_gap": base_gap, "prompts": list(prompts)}
