"""The fine-tuning loop: setup, loop, cleanup, top to bottom.

    run = train(TrainConfig(data="faq.jsonl"))      # or train(cfg, data=[{"messages": [...]}, ...])
    run.generate("What time do you close on Sundays?")

LoRA and full fine-tuning differ only in how the model is prepared (`prepare_model`); the loop is the same.
Each optimizer step trains on `batch_size` examples, packed without padding into forward passes of at most
`micro_batch_tokens` tokens whose gradients are added up; the loss is the mean over the step's target tokens, so
how a step is split into passes changes memory, not results. The loss leaves the device only every `log_every`
steps. The loop publishes events (see events.py); the run directory is written by one of the subscribers.
"""
import math
import os
import random
import shutil
import time
import warnings
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .attention import use_segments
from .batching import StepPlan, pack, tokenize_data
from .config import TrainConfig
from .data import ChatData, DataReport, load_examples
from .distributed import Processes
from .durable import atomic_dir, write_json, write_text
from .errors import ConfigError, DataError, RunError
from .events import EventBus, RunDirWriter
from .forgetting import L2SP, ForgettingProbe, KLToBase, replay_examples
from .judgement import collapse
from .generate import generate
from .loss import StepLoss, loss_sum, split_head
from .models import (DEFAULT_HUB_ID, apply_lora, check_safe_folder, decoder_layers, load_model, pick_device,
                     provenance, resolve_model)
from .run import Run
from .rundir import RunDir
from .saved import folder_config, weights_in

COMPILE_BACKEND = "inductor"  # for `compile=True`; tests use "aot_eager" (same graph capture, no code generation)


# -- setup ------------------------------------------------------------------------------------------------------------

def new_run_dir(cfg):
    root = Path(cfg.output_dir).expanduser()
    if cfg.run_name:
        path = root / cfg.run_name
        if path.exists() and any(path.iterdir()):
            raise RunError(f"{path} already holds a run; resume it (ftnb.resume) or choose another run_name")
        return RunDir(path)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}"
    path, n = root / stem, 1
    while path.exists():
        n += 1
        path = root / f"{stem}-{n}"
    return RunDir(path)


def prepare_data(cfg, data, val_data, run_dir):
    """Load, normalise and split the examples; save them in the run directory so resume needs nothing else."""
    source = data if data is not None else (cfg.data or None)
    if source is None:
        raise ConfigError("data", "no training data: set data= to a file or pass examples to train()")
    train_set = source if isinstance(source, ChatData) else load_examples(source, cfg.data_format, cfg.columns,
                                                                          cfg.fix_encoding)
    train_set.require_usable()
    val_source = val_data if val_data is not None else (cfg.val_data or None)
    if val_source is not None:
        val_set = val_source if isinstance(val_source, ChatData) else load_examples(val_source, cfg.data_format,
                                                                                   cfg.columns, cfg.fix_encoding)
    else:
        train_set, val_set = train_set.split(cfg.val_fraction, cfg.seed)
    if cfg.replay_fraction:
        replay = replay_examples(cfg, len(train_set))
        train_set = ChatData(train_set.examples + replay, train_set.report)
        train_set.replay = len(replay)
    (run_dir.path / "data").mkdir(parents=True, exist_ok=True)
    write_text(run_dir.path / "data" / "train.jsonl", train_set.to_jsonl())
    write_text(run_dir.path / "data" / "val.jsonl", val_set.to_jsonl())
    return train_set, val_set


def write_data_summary(run_dir, train_set, val_set):
    write_json(run_dir.data_path, {
        "source": train_set.report.source, "format": train_set.report.format,
        "train_examples": len(train_set), "val_examples": len(val_set),
        "train_hash": train_set.content_hash(), "val_hash": val_set.content_hash(),
        "train_tokens": sum(len(t) for t in train_set.tokenized), "replay_examples": getattr(train_set, "replay", 0),
        "report": train_set.report.summary(),
        "val_report": val_set.report.summary() if val_set.report is not train_set.report else None,
        "summary": data_summary(train_set, val_set, run_dir.data_path)})


def data_summary(train_set, val_set, where):
    """The data report as the terminal shows it before training: what was read and what happened to each row."""
    text = train_set.report.render(full_list=where)
    if val_set.report is not train_set.report:
        text += "\nvalidation " + val_set.report.render(full_list=where)
    count = lambda part: len(part.tokenized if part.tokenized is not None else part)  # noqa: E731
    split = f"{count(train_set)} examples to train on, {count(val_set)} to validate"
    return f"{text}\n  {split}" + (f" (+{train_set.replay} replayed)" if getattr(train_set, "replay", 0) else "")


def prepare_model(cfg, device, base_model=None):
    """Load the base model (or take `base_model`, a (model, tokenizer) pair) and make it trainable: LoRA adapters
    (base frozen; stored in bf16 or fp16 when training under that autocast) or every weight (fp32 master weights)."""
    if cfg.attn_implementation == "flex_attention" and device.type != "cuda":
        raise ConfigError("attn_implementation", f"flex_attention trains on CUDA only (PyTorch has no backward pass for "
                          f"it on {device.type}); use 'auto' here, where packed examples are kept apart by a mask")
    dtype = (amp_dtype(cfg, device) or torch.float32) if cfg.method == "lora" else torch.float32
    if base_model is not None:
        if cfg.quantize != "none":
            raise ConfigError("quantize", "a model passed in memory is trained as it is: load it quantised yourself "
                              "or let ftnb load config.model")
        (model, tok), path = base_model, "<in memory>"
        model.to(device=device, dtype=dtype)
    else:
        model, tok, path = load_model(cfg.model, device, dtype, cfg.trust_remote_code, attn=cfg.attn_implementation,
                                      quantize=cfg.quantize)
    if cfg.attn_implementation == "segments" or (cfg.attn_implementation == "auto" and device.type == "cpu"
                                                  and not cfg.compile):
        use_segments(model)  # attention.py; a model whose architecture does not take it keeps SDPA
    if cfg.quantize != "none":  # QLoRA: norms and embeddings in fp32, inputs that carry gradients to the adapters
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.method == "lora":
        model = apply_lora(model, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method == "lora":
            model.enable_input_require_grads()
    model.config.use_cache = False
    if cfg.quantize == "none":
        model.to(device)
    model.train()
    if cfg.compile:  # the transformer layers: the loss's own head and chunking stay eager
        for layer in decoder_layers(model):
            layer.compile(dynamic=True, backend=COMPILE_BACKEND)
    return model, tok, path


def make_optimizer(model, cfg, device, fused=True):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), fused=fused and device.type == "cuda")


SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}  # transformers' names


def make_scheduler(optimizer, cfg, total_steps):
    """transformers' own schedule (what a Trainer run with the same warm-up and steps uses): linear warm-up from 0
    over warmup_steps, then cosine or linear decay to 0 at total_steps, or constant."""
    from transformers import get_scheduler
    return get_scheduler(SCHEDULES[cfg.lr_scheduler], optimizer, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=total_steps)


def auto_micro_batch_tokens(cfg, device, model, free_bytes=None):
    """Tokens per forward pass when micro_batch_tokens is 0. On CUDA: what 60% of the free device memory holds,
    after the gradients and AdamW state still to come, at a generous activation size per token (1,024 to 65,536)."""
    if cfg.micro_batch_tokens:
        return cfg.micro_batch_tokens
    if os.environ.get("FTNB_LOW_MEMORY") == "1":  # Binder and other 1-2 GB machines
        return cfg.max_seq_len
    if device.type != "cuda":
        return max(cfg.max_seq_len, 2048)
    from .estimate import activation_bytes_per_token
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_token = activation_bytes_per_token(model.config, cfg, amp_dtype(cfg, device) is not None)
    tokens = int(0.6 * (free_bytes - 12 * trainable) / per_token) // 1024 * 1024
    return max(cfg.max_seq_len, min(tokens, 65536))


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(precision, device, capability=None):
    """'bf16', 'fp16' or 'fp32': `precision` itself, or for 'auto': bf16 where the GPU computes it natively (CUDA
    compute capability 8.0 or more), fp16 on older CUDA GPUs, fp32 on CPU and Apple MPS. `capability`: (major, minor),
    read from the device when None."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    return "bf16" if tuple(capability) >= (8, 0) else "fp16"


def amp_dtype(cfg, device):
    """The autocast dtype of the passes (torch.bfloat16 or torch.float16), or None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[resolve_precision(cfg.precision, device)]


def autocast(cfg, device):
    dtype = amp_dtype(cfg, device)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


# the first step of an fp16 run is often skipped by the loss scaler (its scale is still too high); the schedule
# follows the plan's steps anyway, so torch's warning about it is noise
warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")


@torch.no_grad()
def evaluate(model, examples, max_tokens, cfg, device, parts, procs):
    """Mean loss per target token over `examples` (dropout off); several processes each take a share."""
    was = model.training
    model.eval()
    total, targets = 0.0, 0
    try:
        for group, weight in procs.passes(examples, max_tokens, join=False):
            batch = pack(group).to(device)
            with autocast(cfg, device):
                loss = loss_sum(model, batch, parts)
            if weight:
                total += loss.item()
                targets += batch.n_targets
    finally:
        model.train(was)
    total, targets = procs.total(total, targets)
    return total / max(targets, 1)


# -- the loop ---------------------------------------------------------------------------------------------------------

def train(config=None, data=None, *, val_data=None, subscribers=(), stop_event=None, progress=False, base_model=None,
          **overrides):
    """Fine-tune as `config` says (fields may also be given as keyword arguments) and return the Run.

    `data`: a file path, Hub dataset name, list of dicts, DataFrame, datasets.Dataset or ChatData (default: config.data).
    `subscribers`: callables receiving every Event. `stop_event`: a threading.Event that stops the run when set.
    `base_model`: an already loaded (model, tokenizer) to train instead of loading `config.model` (resume reloads
    `config.model`, so name it there too).
    """
    cfg = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    procs = Processes(cfg)
    run_dir = RunDir(procs.main_first(lambda: str(new_run_dir(cfg).path)))
    return _run(cfg, run_dir, data, val_data, subscribers, stop_event, progress, resume_from=None, procs=procs,
                base_model=base_model)


def resume(run_dir, *, subscribers=(), stop_event=None, progress=False, checkpoint=None, trust_remote_code=False,
           force=False, **overrides):
    """Continue a stopped, failed or interrupted run from its last checkpoint (or `checkpoint`, a step number).
    Overrides may extend it (epochs, max_steps); the loss curve continues exactly as if never stopped.
    `trust_remote_code`: allow the model's own Python code, as when it was trained (never taken from the run folder).
    `force`: take the run over even though its lock says another process writes it (one that is gone for good, e.g.
    on a machine that was shut down)."""
    rd = RunDir(run_dir)
    if not rd.config_path.exists():
        raise RunError(f"{rd.path} is not a run directory (no config.json)")
    cfg = folder_config(rd, trust_remote_code)
    cfg = cfg.replace(**overrides) if overrides else cfg
    cks = rd.checkpoints()
    if checkpoint is not None:
        cks = [c for c in cks if c[0] == checkpoint]
    if not cks:
        raise RunError(f"{rd.path} has no checkpoint{'' if checkpoint is None else f' at step {checkpoint}'} to resume from")
    if weights_in(cks[-1][1]) is None:
        raise RunError(f"{cks[-1][1]} holds neither adapter/ nor model/")
    check_safe_folder(weights_in(cks[-1][1]))
    data, val = _saved_data(rd)
    return _run(cfg, rd, data, val, subscribers, stop_event, progress, resume_from=cks[-1][1], procs=Processes(cfg),
                force=force)


def _saved_data(rd):
    """The training and validation examples saved in a run directory."""
    return tuple(_saved_examples(rd.path / "data" / f) for f in ("train.jsonl", "val.jsonl"))


def _saved_examples(path):
    if not path.exists() or path.stat().st_size == 0:
        return ChatData([], DataReport(str(path)))
    return load_examples(path, "auto", fix_encoding=False)  # ftnb's own copy: exactly what was trained on


def _run(cfg, run_dir, data, val_data, subscribers, stop_event, progress, resume_from, procs, base_model=None,
         force=False):
    created = not run_dir.path.exists()
    run = None
    writer = RunDirWriter(run_dir)
    bus = EventBus([writer] if procs.main else [])  # process 0 alone writes the run directory
    # before the try: a refused lock leaves the other run's files alone
    procs.main_first(lambda: run_dir.acquire_lock(force=force))
    try:
        sets = [data, val_data]

        def first():  # on process 0 while the others wait: data snapshot, and the model converted or downloaded once
            if cfg.report_to:  # a missing tracker package is said before anything loads
                from .trackers import require
                require(cfg.report_to)
            run_dir.stop_path.unlink(missing_ok=True)
            run_dir.clean_partial()
            if resume_from is None:
                sets[:] = prepare_data(cfg, data, val_data, run_dir)
            if base_model is None and procs.world > 1:  # one process alone: prepare_model resolves it just below
                resolve_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
        procs.main_first(first)
        train_set, val_set = sets if procs.main or resume_from is not None else _saved_data(run_dir)
        device = procs.device or pick_device(cfg.device)
        seed_everything(cfg.seed)
        model, tok, model_path = prepare_model(cfg, device, base_model)
        run = Run(cfg, run_dir.path, model, tok)
        if stop_event is not None:
            run.stop_event = stop_event
        run.train_data, run.val_data = train_set, val_set
        for part in (train_set, val_set):  # already tokenized data (benchmarks) is taken as it is
            if part.tokenized is None:
                part.tokenized = tokenize_data(part, tok, cfg.max_seq_len, cfg.train_on, cfg.overlong) \
                    if len(part) else []
        if not train_set.tokenized:
            raise DataError("no usable examples after tokenisation; the data report:\n"
                            + train_set.report.render(), source=train_set.report.source)
        if resume_from is None and procs.main:
            cfg.save(run_dir.config_path)
            write_data_summary(run_dir, train_set, val_set)
        return _fit(run, cfg, run_dir, bus, subscribers, progress, device, model_path, resume_from, procs)
    except BaseException as e:
        error = _explain(e, cfg)
        if procs.main and run_dir.config_path.exists():
            try:
                bus.emit("failed", run.step if run else 0, run, error=error)
            except Exception as status_error:  # the original error is raised; this one is said beside it
                _note(e, f"ftnb could not record the failure in {run_dir.status_path} either ({status_error}); "
                         "with its heartbeat stopped, readers show the run as not responding")
        elif procs.main and created:  # nothing worth keeping yet: leave no half-made folder behind
            run_dir.release_lock()
            shutil.rmtree(run_dir.path, ignore_errors=True)
        if isinstance(e, torch.OutOfMemoryError):
            raise RunError(error) from e
        raise
    finally:
        writer.close()
        if procs.main:
            run_dir.release_lock()


def _note(e, text):
    """Add a note to an exception (shown under its traceback, and by the monitor) and warn with it."""
    e.__notes__ = [*getattr(e, "__notes__", []), text]
    warnings.warn(text, stacklevel=3)


def _explain(e, cfg):
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C); resume from the last checkpoint"
    if isinstance(e, torch.OutOfMemoryError):
        return (f"out of device memory. Lower micro_batch_tokens (now {cfg.micro_batch_tokens or 'auto'}) or "
                f"max_seq_len ({cfg.max_seq_len}), set gradient_checkpointing=True"
                + (", or use method='lora'" if cfg.method == "full" else ""))
    return f"{type(e).__name__}: {e}"


def _fit(run, cfg, run_dir, bus, subscribers, progress, device, model_path, resume_from, procs):
    model, tok = run.model, run.tokenizer
    examples, val_examples = run.train_data.tokenized, run.val_data.tokenized
    plan = StepPlan(len(examples), cfg.batch_size, cfg.epochs, cfg.max_steps, cfg.seed)
    run.total_steps, run.steps_per_epoch, run.model_path = plan.total_steps, plan.steps_per_epoch, model_path
    run.emit = lambda kind, step, **data: bus.emit(kind, step, run, **data)
    max_tokens = auto_micro_batch_tokens(cfg, device, model)
    parts = split_head(model)
    run.main = procs.main
    if cfg.l2sp_alpha:  # anchored to the starting weights, so taken before a checkpoint is loaded
        run.extra_loss.append(L2SP(cfg, model))
    if cfg.kl_beta:
        run.extra_loss.append(KLToBase(cfg, run))
    if resume_from is not None:
        ckpt.load_weights(resume_from, model)
    # several processes: DDP, or FSDP, which turns the layers' parameters into shards (so the optimizer comes after)
    half = resolve_precision(cfg.precision, device) == "fp16"
    if half and procs.sharded:
        raise ConfigError("precision", "fp16 loss scaling is not supported with the layers sharded over processes "
                          "(FSDP); use bf16 (GPUs of compute capability 8.0 and newer) or the DDP config "
                          "(docs/accelerate-ddp.yaml)")
    step_loss = procs.wrap(StepLoss(model, parts), decoder_layers(model), amp_dtype(cfg, device) == torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, cfg, device, fused=not procs.sharded)
    scheduler = make_scheduler(optimizer, cfg, plan.total_steps)
    # fp16: the loss is scaled up before each backward so small gradients do not flush to zero; a step whose
    # gradients overflowed is skipped by the scaler, which then lowers the scale (a no-op in bf16 and fp32)
    scaler = torch.amp.GradScaler(device.type, enabled=half)
    state = {"step": 0, "tokens": 0, "targets": 0, "train_s": 0.0, "elapsed_s": 0.0, "skipped_steps": 0}
    if resume_from is not None:
        state.update(ckpt.load_state(resume_from, scheduler, lambda saved: procs.load_optimizer(model, optimizer, saved)))
        if half and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if procs.main:
            run_dir.truncate_metrics(state["step"])
    run.step = step = state["step"]
    if procs.main:  # the others train and join the collectives; views, probe and files belong to process 0
        write_json(run_dir.path / "meta.json", _meta(model, model_path, device, max_tokens, procs))
        if cfg.probe:
            bus.subscribe(ForgettingProbe(cfg))
        if cfg.report_to:
            from .trackers import make_trackers
            for tracker in make_trackers(cfg.report_to):
                bus.subscribe(tracker)
        for sub in subscribers:
            bus.subscribe(sub)
        if progress:
            from .events import ProgressBar
            bus.subscribe(ProgressBar())
    if resume_from is None:  # what was read and what happened to each row, before anything trains
        bus.emit("data", 0, run, summary=data_summary(run.train_data, run.val_data, run_dir.data_path))
    t_start = time.perf_counter() - state["elapsed_s"]
    with procs.gathered(cfg.probe):  # the probe's baseline
        bus.emit("start", step, run, total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch,
                 resumed=resume_from is not None, device=str(device), micro_batch_tokens=max_tokens)

    intact = state["step"] if resume_from is not None else None  # the newest checkpoint known to be finite

    def diverged(what):
        kept = "no checkpoint was saved before it" if intact is None else f"the checkpoint of step {intact} is intact"
        overflow = "; in fp16 the activations may overflow: try precision='fp32' (or bf16 where the GPU has it)" \
            if half else ""
        return RunError(f"{what}: training diverged. Lower learning_rate (now {cfg.learning_rate}), keep max_grad_norm "
                        f"> 0, or add warmup_steps{overflow}; {kept}")

    def save(step, end=False):  # on every process (FSDP gathers the state to process 0); returns FSDP's weights
        nonlocal intact
        # a checkpoint of diverged weights would push the last good one out: every process checks the loss since the
        # last log line and its weights (FSDP: its shards), and all take the same decision
        local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
        bad_loss, bad_weights = procs.total(float(not torch.isfinite(run_loss)),
                                            float(not all(torch.isfinite(p).all() for p in local)))
        if bad_loss or bad_weights:
            raise diverged(f"the {'loss' if bad_loss else 'weights'} became non-finite by step {step}")
        whole = procs.whole_state(model, optimizer)
        if procs.main:
            state.update(step=step, elapsed_s=time.perf_counter() - t_start, skipped_steps=int(skipped))
            if half:
                state["scaler"] = scaler.state_dict()
            folder = ckpt.save_checkpoint(run_dir.checkpoints_path / f"step-{step}", model, optimizer, scheduler,
                                          {**state, "finite": True}, whole)
            run_dir.prune_checkpoints(cfg.keep_checkpoints, protect={run.best_checkpoint})
            bus.emit("checkpoint", step, run, path=str(folder), end=end)
        intact = step
        return whole and whole[0]

    def validate(step):
        """Validation loss (and sample answers) at `step`; the best step is kept on disk; returns the loss."""
        val = evaluate(model, val_examples, max_tokens, cfg, device, parts, procs)
        with procs.gathered(bool(cfg.sample_prompts)):
            samples = [{"prompt": p, "answer": a} for p, a in zip(cfg.sample_prompts, generate(
                model, tok, cfg.sample_prompts, 48))] if cfg.sample_prompts and procs.main else []
        bus.emit("eval", step, run, epoch=round(plan.epoch_of(step), 4), val_loss=val,
                 elapsed_s=round(time.perf_counter() - t_start, 3), samples=samples)
        warning = collapse([x["answer"] for x in samples], previous_samples or None, val, watch.best
                           if watch.best_step is not None else None)
        previous_samples[:] = [x["answer"] for x in samples]
        if warning:
            run.warn(warning, step)
        watch.add(step, val)
        if not cfg.probe:  # with the probe on, the best step is the forgetting budget's choice (ForgettingProbe)
            run.best_checkpoint = watch.best_step
        # the best step is always saved (and spared by pruning), whatever save_every says; all processes agree
        if step < plan.total_steps and not run.schedule(step, "save") and procs.any(
                procs.main and run.best_checkpoint == step):
            save(step)
        return val

    watch = ValidationWatch(cfg, [(m["step"], m["val_loss"]) for m in run_dir.metrics() if m["kind"] == "eval"]
                            if resume_from is not None and procs.main else ())
    watch = procs.main_first(lambda: watch)  # on resume, process 0 read the history: every process agrees
    if watch.best_step is not None and not cfg.probe:
        run.best_checkpoint = watch.best_step
    early = False
    previous_samples = []  # the sample answers of the last evaluation: collapse is answers turning degenerate
    run_loss = torch.zeros((), device=device)
    run_reg = torch.zeros((), device=device)
    run_targets, run_steps, log_tokens, log_train_s = 0, 0, 0, 0.0
    grad_norm = torch.zeros((), device=device)
    skipped = torch.tensor(state["skipped_steps"], device=device)  # optimizer steps the fp16 scaler skipped
    model.train()
    while step < plan.total_steps:
        t0 = time.perf_counter()
        # one optimizer step: every micro-batch's loss is divided by the step's target count, so the summed
        # gradients equal one big batch's
        step_examples = [examples[i] for i in plan.indices(step)]
        n_targets = sum(sum(ex.mask[1:]) for ex in step_examples)
        step_tokens = sum(len(ex) for ex in step_examples)
        for extra in run.extra_loss:  # regularisers (mitigations): once per step, their own backward, before the
            with procs.sync(step_loss, False):  # last micro-batch's, which exchanges the gradients summed so far
                with autocast(cfg, device):
                    reg = extra(model, step)
                scaler.scale(reg).backward()
            run_reg += reg.detach()
        # this process's share of the step; DDP and FSDP average the processes' gradients, hence the factor world.
        # A pass of weight 0 joins the others' collectives with a zero gradient (fewer examples than processes)
        scale = procs.world / n_targets
        passes = procs.passes(step_examples, max_tokens)
        for i, (group, weight) in enumerate(passes):
            batch = pack(group).to(device)
            with procs.sync(step_loss, i == len(passes) - 1):
                with autocast(cfg, device):
                    total = step_loss(batch)
                scaler.scale(total * (scale * weight)).backward()
            if weight:
                run_loss += total.detach()
        procs.average_whole_grads()
        state["tokens"] += step_tokens
        log_tokens += step_tokens
        run_targets += n_targets
        run_steps += 1
        state["targets"] += n_targets
        scaler.unscale_(optimizer)  # fp16: clipping and the overflow check see the true gradients
        if cfg.max_grad_norm > 0:
            grad_norm = procs.clip_grad_norm(params, cfg.max_grad_norm)
        elif half:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if half:  # the scaler's own test: any inf or NaN gradient skips the step (counted on the device, no sync)
            skipped += ~torch.isfinite(grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        run.step = step
        end = step == plan.total_steps
        logged = step % cfg.log_every == 0 or end or run.schedule(step, "eval") or run.schedule(step, "probe")
        if logged:
            loss_value = (procs.sum(run_loss) / run_targets).item()  # the one host sync per logging interval
            log_train_s += time.perf_counter() - t0
            state["train_s"] += log_train_s
            if not math.isfinite(loss_value):
                raise diverged(f"the loss became {loss_value} at step {step}")
            row = {"epoch": round(plan.epoch_of(step), 4), "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "tokens": state["tokens"], "targets": state["targets"],
                   "tokens_per_s": round(log_tokens / max(log_train_s, 1e-9), 1),
                   "elapsed_s": round(time.perf_counter() - t_start, 3), "train_s": round(state["train_s"], 3)}
            if run.extra_loss:
                row["reg_loss"] = float(run_reg) / run_steps
            if half:
                row["skipped_steps"] = int(skipped)
            if device.type == "cuda":
                row["mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
            with procs.gathered(run.schedule(step, "probe")):
                bus.emit("log", step, run, **row)
            run_loss.zero_()
            run_reg.zero_()
            run_targets, run_steps, log_tokens, log_train_s = 0, 0, 0, 0.0
        else:
            log_train_s += time.perf_counter() - t0
        if val_examples and run.schedule(step, "eval"):
            validate(step)  # also when stopping now: the step's point on the validation curve is kept
            if not end and watch.exhausted():
                run.stop_reason, early = watch.reason(), True
                break
        # several processes agree on stopping where they synchronise anyway: at logged steps
        if not end and (logged or procs.world == 1) and procs.any(
                procs.main and (run.stop_event.is_set() or run_dir.stop_requested())):
            break
        if run.schedule(step, "save"):
            save(step)
    # cleanup: a stopped run keeps a checkpoint to resume from; a finished one (early stopping too) writes its weights
    stopped = step < plan.total_steps and not early
    weights = save(step, end=not stopped)
    if procs.main and stopped:
        run_dir.stop_path.unlink(missing_ok=True)
        bus.emit("stopped", step, run, output=None, reason=run.stop_reason or "stop requested",
                 best_checkpoint=run.best_checkpoint)
    elif procs.main:
        out = run_dir.path / ("adapter" if cfg.method == "lora" else "model")
        base_name = DEFAULT_HUB_ID if cfg.model == "default" else model_path if cfg.model == "tiny" else cfg.model
        atomic_dir(out, lambda tmp: ckpt.save_weights(model, tok, tmp, base_name, weights))
        bus.emit("finished", step, run, output=str(out), best_checkpoint=run.best_checkpoint,
                 **({"reason": run.stop_reason} if early else {}))
    procs.barrier()  # when train() returns on any process, the run's files are written
    return run


class ValidationWatch:
    """The best validation loss so far, its step, and how many evaluations since it improved by more than
    early_stopping_min_delta (early stopping after early_stopping_patience of them). Built again from the
    metrics of a resumed run, so a resume decides as the run would have."""

    def __init__(self, cfg, history=()):
        self.patience, self.min_delta = cfg.early_stopping_patience, cfg.early_stopping_min_delta
        self.best, self.best_step, self.since = math.inf, None, 0
        for step, val in history:
            self.add(step, val)

    def add(self, step, val):
        if val < self.best - self.min_delta:
            self.best, self.best_step, self.since = val, step, 0
        else:
            self.since += 1

    def exhausted(self):
        return bool(self.patience) and self.since >= self.patience

    def reason(self):
        return (f"early stopping: the validation loss did not improve by more than {self.min_delta:g} in "
                f"{self.since} evaluations (best {self.best:.4f} at step {self.best_step})")


def _meta(model, model_path, device, max_tokens, procs):
    import peft
    import transformers

    from .. import __version__
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_here = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())  # FSDP: shards
    return {"ftnb": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "model_path": str(model_path), "device": str(device), "params": n_all,
            "trainable_params": n_train, "micro_batch_tokens": max_tokens, "processes": procs.world,
            "sharded": procs.sharded, "params_per_process": n_here, "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **provenance(model_path)}  # the base, for the model card


