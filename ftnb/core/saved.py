"""A saved run opened again: its config (trust_remote_code never taken from the folder), which weights (the final
ones, the best checkpoint or a step), and its model and tokenizer, ready to generate, probe or export."""
import collections
from pathlib import Path

import torch

from .errors import RunError
from .forgetting import read_budget_best
from .models import LOAD_LOCK, check_safe_folder, load_model, load_tokenizer, pick_device, resolve_model
from .rundir import RunDir
from .run import Run


def folder_config(rd, trust_remote_code):
    """A run folder's config, with trust_remote_code from the caller: a folder cannot make code run."""
    cfg = rd.config()
    if cfg.trust_remote_code and not trust_remote_code:
        raise RunError(f"{rd.config_path} says trust_remote_code, which runs Python code shipped with the model; a "
                       "run folder cannot turn that on. If you trust this run and its model, pass "
                       "trust_remote_code=True (on the command line: --trust-remote-code)")
    return cfg.replace(trust_remote_code=bool(trust_remote_code))


def weights_in(folder):
    """The adapter/ or model/ folder inside a checkpoint or run folder (None when it has neither)."""
    return next((p for p in (Path(folder) / "adapter", Path(folder) / "model") if p.is_dir()), None)


def load_run(run_dir, device="auto", checkpoint=None, trust_remote_code=False):
    """A run's model and tokenizer, ready to generate or probe: `checkpoint` "last" (or None: the final weights, or
    the newest checkpoint of an unfinished run), "best" (the best step within the forgetting budget, or of the
    validation loss without the probe) or a step number. `run.weights` says which was loaded.
    `trust_remote_code`: allow the model's own Python code (never taken from the run folder, which may come from
    anyone)."""
    rd = RunDir(run_dir)
    cfg = folder_config(rd, trust_remote_code)
    chosen = choose_weights(rd, checkpoint)
    weights = chosen.path
    check_safe_folder(weights)
    dev = pick_device(device)
    if weights.name == "adapter":
        from peft import PeftModel
        base, tok, _ = load_model(cfg.model, dev, torch.float32, cfg.trust_remote_code)
        with LOAD_LOCK:
            model = PeftModel.from_pretrained(base, str(weights))
    else:
        from transformers import AutoModelForCausalLM
        with LOAD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32, use_safetensors=True,
                                                         trust_remote_code=cfg.trust_remote_code)
        has_tok = (weights / "tokenizer_config.json").exists()
        tok = load_tokenizer(weights if has_tok else resolve_model(cfg.model, trust_remote_code=cfg.trust_remote_code),
                             cfg.trust_remote_code)
    model.to(dev).eval()
    run = Run(cfg, rd.path, model, tok)
    st = rd.status()
    run.step, run.total_steps = st["step"], st.get("total_steps") or 0
    run.best_checkpoint, run.weights = best_step(rd), chosen.what
    return run


def best_step(rd):
    """The step of a run's best checkpoint (status.json's, or the forgetting budget's while it runs), or None."""
    best = rd.status().get("best_checkpoint")
    if best is None:
        best = read_budget_best(rd.path / "probe")
    return best


Weights = collections.namedtuple("Weights", "path step from_checkpoint what")  # what: in words, for people


def choose_weights(rd, checkpoint=None):
    """The adapter/ or model/ folder of `checkpoint` (None or "last", "best", or a step) as Weights."""
    if checkpoint in (None, "last"):
        if rd.weights_path is not None:
            step = rd.status()["step"]
            return Weights(rd.weights_path, step, False, f"the final weights (step {step})")
        checkpoint = rd.checkpoints()[-1][0] if rd.checkpoints() else None
        if checkpoint is None:
            raise RunError(f"{rd.path} has no weights yet (no adapter/, model/ or checkpoint)")
    what = "checkpoint"
    if checkpoint == "best":
        checkpoint, what = best_step(rd), "the best checkpoint"
        if checkpoint is None:
            raise RunError(f"{rd.path} has no best checkpoint: no evaluation was within the forgetting budget (or "
                           "the run has no validation); use checkpoint='last' or a step")
    if isinstance(checkpoint, str) and checkpoint.isdigit():
        checkpoint = int(checkpoint)
    if not isinstance(checkpoint, int) or isinstance(checkpoint, bool):
        raise RunError(f"checkpoint must be 'best', 'last' or a step number, not {checkpoint!r}")
    steps = dict(rd.checkpoints())
    if checkpoint not in steps:
        raise RunError(f"{rd.path} has no checkpoint at step {checkpoint} (it has {', '.join(map(str, steps)) or 'none'})")
    weights = weights_in(steps[checkpoint])
    if weights is None:
        raise RunError(f"{steps[checkpoint]} holds neither adapter/ nor model/")
    return Weights(weights, checkpoint, True, f"{what} of step {checkpoint}")
