"""Saving and restoring training state: written to a temporary folder, synced and renamed (durable.atomic_dir), so a
checkpoint is whole or absent."""
import json
import random
from pathlib import Path

import torch

from .durable import atomic_dir
from .errors import RunError


def save_weights(model, tokenizer, out, base_name=None, state_dict=None):
    """The trained weights as a standard folder: a peft adapter (LoRA) or a transformers model (full). `base_name`:
    the base model's Hub id (with '@revision' when pinned), recorded in the adapter's config.
    `state_dict`: the weights gathered from a sharded (FSDP) model, instead of the model's own."""
    if base_name and hasattr(model, "peft_config"):
        from .models import split_revision
        repo_id, revision = split_revision(str(base_name))  # 'org/name@v1': peft keeps the revision in its own field
        for pc in model.peft_config.values():
            pc.base_model_name_or_path = repo_id
            if revision:
                pc.revision = revision
    # save_embedding_layers=False: LoRA never trains embeddings here, and "auto" would look the base model up online
    kw = {"save_embedding_layers": False} if hasattr(model, "peft_config") else {}
    if state_dict is not None:
        kw["state_dict"] = state_dict
    model.save_pretrained(out, safe_serialization=True, **kw)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def save_checkpoint(folder, model, optimizer, scheduler, state, whole=None):
    """weights + optimizer.pt + scheduler.pt + rng.pt + trainer_state.json (written last: its presence marks a
    complete checkpoint). `whole`: (weights, optimizer state) gathered from FSDP's shards, saved in the same layout."""
    weights, optim = whole or (None, optimizer.state_dict())

    def write(tmp):
        save_weights(model, None, tmp / ("adapter" if hasattr(model, "peft_config") else "model"), state_dict=weights)
        torch.save(optim, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    return atomic_dir(folder, write)


def load_weights(folder, model):
    """Restore a checkpoint's trained weights (before the model is sharded, if it will be)."""
    from safetensors.torch import load_file
    folder = Path(folder)
    device = next(model.parameters()).device
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(folder / "adapter" / "adapter_model.safetensors", device=str(device)))
    else:
        sd = {}
        for f in sorted((folder / "model").glob("*.safetensors")):
            sd.update(load_file(f, device=str(device)))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:
            raise RunError(f"checkpoint {folder} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_state(folder, scheduler, load_optimizer):
    """Restore the optimizer (through `load_optimizer(saved)`, which moves the state to the parameters' device),
    scheduler and RNG streams; return the trainer state."""
    folder = Path(folder)
    # weights_only: a checkpoint from someone else cannot run code when loaded
    load_optimizer(_safe_load(folder / "optimizer.pt"))
    scheduler.load_state_dict(_safe_load(folder / "scheduler.pt"))
    rng = _safe_load(folder / "rng.pt")
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuple(rng["python"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((folder / "trainer_state.json").read_text())


def _safe_load(path, device="cpu"):
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError for anything but tensors and plain containers
        raise RunError(f"{path} could not be loaded safely ({type(e).__name__}: {str(e)[:200]}); it holds something "
                       "other than tensors, or is damaged") from None


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
