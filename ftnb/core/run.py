"""A run in memory: its config, folder, model and tokenizer; what `train`, `resume` and `load_run` return."""
import threading

from .generate import compare, generate
from .models import load_model
from .rundir import RunDir


class Run:
    """A run in memory: its config, folder, model and tokenizer. Returned by `train`, `resume` and `load_run`."""

    def __init__(self, config, run_dir, model=None, tokenizer=None):
        self.config, self.run_dir, self.model, self.tokenizer = config, RunDir(run_dir), model, tokenizer
        self.stop_event = threading.Event()
        self.step = 0
        self.total_steps = 0
        self.train_data = self.val_data = None
        self.model_path = None
        self.extra_loss = []  # callables (model, step) -> tensor added to each step's loss (mitigations)
        self.best_checkpoint = None  # step of the best checkpoint within the forgetting budget
        self.weights = None  # which weights load_run loaded, in words
        self.stop_reason = None
        self.warning = None  # a collapse seen while training (status.json's "warning")
        self.steps_per_epoch = 0
        self.emit = lambda kind, step, **data: None  # set by the loop: subscribers publish events through it
        self.main = True  # False in the processes other than process 0 of a multi-process run: they write nothing

    def schedule(self, step, what):
        """Whether `what` ('eval', 'save' or 'probe') happens after optimizer step `step` (steps count from 1)."""
        cfg, end = self.config, step == self.total_steps
        epoch_end = self.steps_per_epoch and step % self.steps_per_epoch == 0
        if what == "eval":
            return end or (step % cfg.eval_every == 0 if cfg.eval_every else epoch_end)
        if what == "save":
            return not end and (step % cfg.save_every == 0 if cfg.save_every else epoch_end)
        if what == "probe":
            if not cfg.probe or end:
                return cfg.probe
            if cfg.probe_every == -1:  # step 0 and the end only
                return False
            return step % cfg.probe_every == 0 if cfg.probe_every else self.schedule(step, "eval")
        raise ValueError(what)

    def __repr__(self):
        return f"<Run {self.run_dir.path} {self.state} step {self.step}/{self.total_steps}>"

    @property
    def state(self):
        return self.run_dir.status().get("state", "new")

    def metrics(self):
        return self.run_dir.metrics()

    def warn(self, warning, step):
        """Record a collapse warning; with a forgetting budget that stops (budget_action="stop") or early stopping
        set, the run stops with it as the reason. The first warning is kept: it says when the collapse began."""
        if self.warning is not None:
            return
        self.warning = f"{warning} (step {step})"
        if self.config.budget_action == "stop" or self.config.early_stopping_patience:
            self.stop_reason = self.warning
            self.request_stop()

    def request_stop(self):
        """Stop at the next step boundary; a checkpoint is saved so the run can be resumed."""
        self.stop_event.set()

    def generate(self, prompts, max_new_tokens=64, system=None):
        return generate(self.model, self.tokenizer, prompts, max_new_tokens, system)

    def compare(self, prompts, max_new_tokens=64, system=None):
        """Base and tuned answers side by side (LoRA: same weights, adapter off and on)."""
        if not hasattr(self.model, "disable_adapter"):
            base, tok, _ = load_model(self.config.model, next(self.model.parameters()).device)
            tuned = self.generate(prompts, max_new_tokens, system)
            based = generate(base, tok, prompts, max_new_tokens, system)
            return [{"prompt": p, "base": b, "tuned": t} for p, b, t in zip(prompts, based, tuned)]
        return compare(self.model, self.tokenizer, prompts, max_new_tokens, system)
