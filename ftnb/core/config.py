"""The one config of a fine-tuning run.

Every field carries help text (shown as a tooltip in the form and as `--help` in the CLI);
`__post_init__` holds every rule, so the form, the CLI and the loop never repeat them.
The resolved config is saved as `config.json` in each run directory and loads back with `TrainConfig.load`.
"""
import dataclasses
import json
import math
from dataclasses import dataclass, field

from .errors import ConfigError


def _f(default, help, group, choices=None, **extra):
    meta = {"help": help, "group": group, **extra}
    if choices:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")  # report_to's names (trackers.py)
TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}
TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list",
              dict: "a mapping"}


@dataclass
class TrainConfig:
    # -- model --
    model: str = _f("default", "Model to fine-tune: 'default' (SmolLM2-135M-Instruct, shipped offline), a Hugging Face Hub id, "
                    "or a local folder. Bigger models learn more but train slower and need more memory. A Hub id may "
                    "pin a revision (branch, tag or commit): 'org/name@v1.0', so a rerun trains the same weights.",
                    "model")
    method: str = _f("lora", "'lora' trains small adapter matrices beside the frozen weights: fast, small files, forgets less. "
                     "'full' updates every weight: learns most, needs ~4x the memory of the weights, forgets most.", "model",
                     choices=("lora", "full"))
    trust_remote_code: bool = _f(False, "Run Python code shipped with a Hub model (its *.py files are downloaded only "
                                 "then). Only for models you trust.", "model")
    # -- LoRA --
    lora_r: int = _f(16, "LoRA rank: the size of each adapter. Higher learns more and forgets more; 8-32 is typical.", "lora")
    lora_alpha: float = _f(32.0, "LoRA scale numerator: the adapter's output is multiplied by lora_alpha / lora_r. "
                           "Usually 2 x lora_r; higher means larger effective steps.", "lora")
    lora_dropout: float = _f(0.05, "Dropout on the adapter's input. A little (0.05) regularises small datasets.", "lora")
    lora_targets: str = _f("all-linear", "Layers that get adapters: 'all-linear' (every linear layer except the output), "
                           "'attention' (q,k,v,o projections only: learns less, forgets less) or a comma list of module names.",
                           "lora")
    use_dora: bool = _f(False, "DoRA: each adapted weight is split into a magnitude and a direction, and the magnitude "
                        "trains too (peft). Often closer to full fine-tuning at LoRA's size; each step is slower (a "
                        "weight norm per adapted layer).", "lora")
    quantize: str = _f("none", "QLoRA: hold the frozen base weights in '4bit' (NF4, about a quarter of bf16's memory) or "
                       "'8bit' through bitsandbytes (pip install 'ftnb[qlora]'); the adapters train in full precision. "
                       "Saves memory, costs speed; for models that would not fit otherwise.", "lora",
                       choices=("none", "4bit", "8bit"))
    # -- data --
    data: str = _f("", "Training data: a .jsonl/.json/.csv/.parquet file or a Hub dataset: 'name', 'name:split' or "
                   "'name:config:split', with a revision pinned as 'name@revision:...'. Leave empty when passing "
                   "examples from Python.", "data")
    data_format: str = _f("auto", "How rows are read: detected from the columns by default.", "data",
                          choices=("auto", "messages", "sharegpt", "prompt_completion", "alpaca", "text"))
    columns: dict = _f({}, "Which column plays which role, when detection cannot tell: {\"prompt\": \"Questions\", "
                       "\"completion\": \"Answers\"} (on the command line prompt=Questions,completion=Answers). "
                       "Names are matched without case; question/answer, input/output, query/response and the like "
                       "are found without it.", "data")
    val_data: str = _f("", "Optional separate validation file. When empty, val_fraction of the data is held out.", "data")
    val_fraction: float = _f(0.1, "Share of examples held out for validation loss (0 to turn validation off).", "data")
    max_seq_len: int = _f(1024, "Longest example in tokens. Memory and time grow with it; what happens to longer "
                          "examples is overlong's choice, and each is named by its line in the data report.", "data")
    overlong: str = _f("turns", "Examples longer than max_seq_len: 'turns' keeps the whole turns that fit (a "
                       "conversation loses its last exchanges; one that cannot keep a whole answer is dropped; a plain "
                       "text is cut), 'drop' leaves them out. An answer is never cut and trained on as if complete.",
                       "data", choices=("turns", "drop"))
    fix_encoding: bool = _f(True, "Repair text that was decoded with the wrong encoding somewhere (mojibake such as "
                            "'â€™' for an apostrophe) with ftfy; either way the data report names each such row.", "data")
    train_on: str = _f("assistant", "'assistant': learn only the answers (the usual choice); "
                       "'all': learn the prompts too (continued pre-training).", "data", choices=("assistant", "all"))
    # -- optimisation --
    epochs: float = _f(3.0, "Passes over the training data. More epochs learn the examples better and forget more.", "training")
    max_steps: int = _f(0, "Stop after this many optimizer steps (0: derived from epochs).", "training")
    batch_size: int = _f(8, "Examples per optimizer step. Larger gives smoother updates and fewer steps per epoch.", "training")
    micro_batch_tokens: int = _f(0, "Most tokens in one forward pass; a step's examples are packed into passes of at most this "
                                 "many tokens and their gradients added up. Only memory changes, not the result. "
                                 "0: chosen from the device.", "training")
    learning_rate: float = _f(2e-4, "Peak learning rate. LoRA tolerates 1e-4 to 1e-3; full fine-tuning wants 1e-5 to 5e-5. "
                              "Too high forgets fast or diverges.", "training")
    weight_decay: float = _f(0.0, "AdamW weight decay (pulls weights toward zero).", "training")
    lr_scheduler: str = _f("cosine", "Learning-rate shape after warm-up.", "training",
                           choices=("cosine", "linear", "constant"))
    warmup_steps: int = _f(0, "Steps of linear warm-up from 0 to the peak learning rate; steadies the first updates.", "training")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this (0: no clipping). Guards against loss spikes.", "training")
    attn_implementation: str = _f("auto", "Attention kernel: 'auto' ('segments' on a CPU, the model's default SDPA "
                                  "elsewhere), 'segments' (each packed example attends to itself alone: SDPA skips the "
                                  "blocks between examples; 1.1x to 1.6x faster CPU steps), 'sdpa' (one pass over the "
                                  "packed row with a block-diagonal mask), 'flex_attention' (CUDA; skips those blocks too, "
                                  "compiles on first use) or 'eager'.",
                                  "training", choices=("auto", "segments", "sdpa", "flex_attention", "eager"))
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: about 30% slower, much less memory.",
                                      "training")
    compile: bool = _f(False, "torch.compile the model's layers with dynamic shapes, so packed rows of any length reuse one "
                       "graph. Meant for GPUs, where per-step overhead holds small models back; the first step pays "
                       "for the compile (minutes on a CPU).", "training")
    # -- forgetting --
    probe: bool = _f(True, "Measure forgetting while training: general-knowledge multiple choice, drift (KL) from the base "
                     "model, general-text perplexity and answers to general questions. One pass took 24-31 s on 2 "
                     "CPU cores for the 135M default model (measured; each run reports its own pass time); the "
                     "baseline is cached per model.",
                     "forgetting")
    probe_every: int = _f(0, "Probe every N steps (0: at each evaluation; -1: only at step 0 and the end). Always at "
                          "step 0 (the baseline) and at the end.", "forgetting")
    probe_quick: int = _f(300, "Multiple-choice questions asked at the probes between step 0 and the end: the first ones "
                          "of each category (the full set, which resolves a smaller loss, runs at step 0, cached per "
                          "model, and at the end). 0: the full set every time.", "forgetting")
    probe_time_share: float = _f(0.0, "Most of the training time the probes after step 0 may add (0.25: a quarter): each "
                                 "asks as many multiple-choice questions (the first ones of each category, at least "
                                 "60) as fit, at the baseline's time per question. 0: no limit. ftnb demo sets 0.25.",
                                 "forgetting")
    probe_precision: str = _f("auto", "Precision of the probe's passes: auto (bf16 where the hardware computes it "
                              "natively: CUDA compute capability 8.0+, CPUs with AVX512-BF16 or AMX; fp16 on older "
                              "GPUs; else fp32), fp32, bf16 or fp16. The baseline and every probe of a run use one.",
                              "forgetting", choices=("auto", "fp32", "bf16", "fp16"))
    probe_items: str = _f("", "Your own \"don't forget this\" items, a JSONL file: multiple choice {question, choices, "
                          "answer}, questions with expected answers {question, expect: [...]} or texts {text}.",
                          "forgetting")
    min_retention: float = _f(0.95, "Forgetting budget: the lowest acceptable retention (probe accuracy / baseline "
                              "accuracy). A checkpoint is out of budget when even the upper end of its paired 95% "
                              "interval is below this (it surely forgot more); the best checkpoint is the lowest "
                              "validation loss among those within.", "forgetting")
    budget_action: str = _f("mark", "When a probe falls below min_retention: 'mark' keeps training but only checkpoints "
                            "within budget can be best; 'stop' stops the run.", "forgetting", choices=("mark", "stop"))
    replay_fraction: float = _f(0.0, "Replay: share of each epoch made of general examples (a bundled general instruction "
                                "set or replay_data). 0.1-0.3 keeps general skills at the cost of that much more compute.",
                                "forgetting")
    replay_data: str = _f("", "Replay examples: a data file (any supported format). Empty: the bundled general set.",
                          "forgetting")
    kl_beta: float = _f(0.0, "KL-to-base: adds kl_beta x KL(base || current) on general prompts to the loss each step, "
                        "pulling the model's general behaviour back to the base model's. 0.05-0.5; costs one extra small "
                        "forward and backward per step.", "forgetting")
    l2sp_alpha: float = _f(0.0, "L2-SP (full fine-tuning): adds l2sp_alpha/2 x ||weights - starting weights||^2 to the loss. "
                           "Anchors every weight; keeps a copy of the starting weights in memory. Try 0.01-1.", "forgetting")
    # -- runtime --
    device: str = _f("auto", "'auto' picks CUDA, then Apple MPS, then CPU.", "runtime")
    precision: str = _f("auto", "Arithmetic of the forward and backward passes. 'bf16': autocast in bfloat16, fast and "
                        "safe where the GPU computes it natively (compute capability 8.0+: A100, RTX 30xx and newer). "
                        "'fp16': autocast in float16 with loss scaling, for older GPUs (T4, V100); steps whose "
                        "gradients overflow are skipped and counted (skipped_steps). 'fp32': exact, slowest, twice "
                        "the activation memory. 'auto': bf16 where native, fp16 on other CUDA GPUs, fp32 on CPU and "
                        "Apple MPS.", "runtime", choices=("auto", "fp32", "bf16", "fp16"))
    seed: int = _f(42, "Seeds the data order, adapter initialisation and dropout: same seed, same run.", "runtime")
    log_every: int = _f(1, "Write train metrics every N steps (the loss is read back from the device only then).", "runtime")
    eval_every: int = _f(0, "Validation loss every N steps (0: at the end of each epoch). Always at the end.", "runtime")
    early_stopping_patience: int = _f(0, "Stop when the validation loss has not improved for this many evaluations "
                                      "(0: never). The best step's checkpoint is kept; the run ends finished, with "
                                      "the reason in status.json. Too small stops on noise.", "training")
    early_stopping_min_delta: float = _f(0.0, "How much lower the validation loss must be to count as improving "
                                         "(early stopping).", "training")
    save_every: int = _f(0, "Checkpoint every N steps (0: at the end of each epoch). Resume starts from the last one.", "runtime")
    keep_checkpoints: int = _f(2, "How many recent checkpoints to keep on disk (the best one is always kept).", "runtime")
    sample_prompts: list = _f([], "Prompts answered (greedily) at each evaluation, to watch the model change.", "runtime")
    output_dir: str = _f("runs", "Folder that holds one sub-folder per run.", "runtime")
    run_name: str = _f("", "Name of this run's folder (empty: date, time and method).", "runtime")
    report_to: list = _f([], "Experiment trackers that also receive the run's curves (the metrics.jsonl scalars at their "
                         "steps) and its settings: any of 'tensorboard' (runs/X/tensorboard), 'mlflow' (runs/X/"
                         "mlflow.db unless MLFLOW_TRACKING_URI is set; creating that database takes a few seconds), "
                         "'wandb' (offline files in runs/X/wandb unless WANDB_MODE=online or WANDB_API_KEY is set) "
                         "and 'trackio' (trackio's local dashboard). Each needs its package: pip install "
                         "'ftnb[tensorboard]' and so on. A tracker that fails is detached with a warning; training "
                         "goes on.", "runtime", item_choices=TRACKERS)

    def __post_init__(self):
        def need(ok, name, message):
            if not ok:
                raise ConfigError(name, message)

        for f in dataclasses.fields(self):  # types first: a config.json from a run folder can hold anything
            value, kind = getattr(self, f.name), TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, value := float(value))
            need(isinstance(value, kind) and (kind is bool or not isinstance(value, bool)), f.name,
                 f"must be {TYPE_NAMES[kind]}, not {type(value).__name__} {value!r:.60}")
            if kind in (list, dict):
                items = value if kind is list else [*value, *value.values()]
                need(all(isinstance(x, str) for x in items), f.name, f"must hold strings only, not {value!r:.60}")
            items = f.metadata.get("item_choices")
            if items:
                bad = [x for x in value if x not in items]
                need(not bad and len(set(value)) == len(value), f.name,
                     f"must name each of {', '.join(map(repr, items))} at most once, not {value!r:.80}")
            choices = f.metadata.get("choices")
            if choices:
                need(getattr(self, f.name) in choices, f.name,
                     f"must be one of {', '.join(map(repr, choices))}, not {getattr(self, f.name)!r}")
        need(isinstance(self.model, str) and self.model.strip(), "model", "give 'default', a Hub id or a local folder")
        need(self.lora_r >= 1, "lora_r", f"must be at least 1, not {self.lora_r}")
        need(self.lora_alpha > 0, "lora_alpha", f"must be positive, not {self.lora_alpha}")
        need(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), not {self.lora_dropout}")
        need(self.lora_targets.strip(), "lora_targets", "name 'all-linear', 'attention' or module names")
        need(0 <= self.val_fraction < 1, "val_fraction", f"must be in [0, 1), not {self.val_fraction}")
        need(16 <= self.max_seq_len <= 1_000_000, "max_seq_len", f"must be between 16 and 1,000,000, not {self.max_seq_len}")
        need(math.isfinite(self.epochs) and self.epochs > 0, "epochs", f"must be positive, not {self.epochs}")
        need(self.max_steps >= 0, "max_steps", f"must be 0 or more, not {self.max_steps}")
        need(self.batch_size >= 1, "batch_size", f"must be at least 1, not {self.batch_size}")
        need(self.micro_batch_tokens == 0 or self.micro_batch_tokens >= self.max_seq_len, "micro_batch_tokens",
             f"must be 0 (automatic) or at least max_seq_len ({self.max_seq_len}), not {self.micro_batch_tokens}")
        need(math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1, "learning_rate",
             f"must be in (0, 1], not {self.learning_rate}")
        need(self.learning_rate <= 0.1, "learning_rate", f"{self.learning_rate} would diverge; use at most 0.1 (typ. 2e-4)")
        need(self.weight_decay >= 0, "weight_decay", f"must be 0 or more, not {self.weight_decay}")
        need(self.warmup_steps >= 0, "warmup_steps", f"must be 0 or more, not {self.warmup_steps}")
        need(self.max_grad_norm >= 0, "max_grad_norm", f"must be 0 (off) or more, not {self.max_grad_norm}")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
             f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', not {self.device!r}")
        for name in ("log_every",):
            need(getattr(self, name) >= 1, name, f"must be at least 1, not {getattr(self, name)}")
        for name in ("eval_every", "save_every"):
            need(getattr(self, name) >= 0, name, f"must be 0 or more, not {getattr(self, name)}")
        need(self.early_stopping_patience >= 0, "early_stopping_patience",
             f"must be 0 (off) or more, not {self.early_stopping_patience}")
        need(self.early_stopping_min_delta >= 0, "early_stopping_min_delta",
             f"must be 0 or more, not {self.early_stopping_min_delta}")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be at least 1, not {self.keep_checkpoints}")
        need(self.output_dir.strip(), "output_dir", "must name a folder")
        need(self.probe_quick >= 0, "probe_quick", f"must be 0 (all) or more, not {self.probe_quick}")
        need(0 <= self.probe_time_share <= 1, "probe_time_share", f"must be in [0, 1], not {self.probe_time_share}")
        need(self.probe_every >= -1, "probe_every", f"must be -1, 0 or more, not {self.probe_every}")
        need(0 < self.min_retention <= 1.5, "min_retention", f"must be in (0, 1.5], not {self.min_retention}")
        need(0 <= self.replay_fraction < 1, "replay_fraction", f"must be in [0, 1), not {self.replay_fraction}")
        need(self.kl_beta >= 0, "kl_beta", f"must be 0 or more, not {self.kl_beta}")
        need(self.l2sp_alpha >= 0, "l2sp_alpha", f"must be 0 or more, not {self.l2sp_alpha}")
        need(self.quantize == "none" or self.method == "lora", "quantize",
             "quantised base weights cannot train: use method='lora' (QLoRA) or quantize='none'")
        need(self.l2sp_alpha == 0 or self.method == "full", "l2sp_alpha",
             "anchors full fine-tuning; LoRA leaves the base weights untouched already (set method='full' or 0)")
        need("/" not in self.run_name and "\\" not in self.run_name and self.run_name not in (".", ".."), "run_name",
             f"must be a plain folder name, not {self.run_name!r}")

    # -- round trip --
    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting (known: {', '.join(sorted(known))})")
        return cls(**d)

    def replace(self, **changes):
        return self.from_dict({**self.to_dict(), **changes})

    def save(self, path):
        from .durable import write_json
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as fh:
            try:
                d = json.load(fh)
            except json.JSONDecodeError as e:
                raise ConfigError("config", f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(d, dict):
            raise ConfigError("config", f"{path} must hold a JSON object")
        return cls.from_dict(d)

    @classmethod
    def from_preset(cls, name, **changes):
        if name not in PRESETS:
            raise ConfigError("preset", f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name]["settings"], **changes})

    @classmethod
    def field_help(cls):
        """{name: metadata} for every field, in declaration order (the form and the CLI are built from it)."""
        return {f.name: dict(f.metadata, default=getattr(cls(), f.name)) for f in dataclasses.fields(cls)}


PRESETS = {
    "quick-cpu-demo": {
        "help": "A few minutes on a laptop CPU: LoRA on the default model, high learning rate, few epochs.",
        "settings": dict(method="lora", lora_r=16, lora_alpha=32, learning_rate=1e-3, epochs=4, batch_size=8,
                         warmup_steps=3, max_seq_len=256, val_fraction=0.1),
    },
    "balanced-lora": {
        "help": "The usual LoRA recipe: rank 16 on all linear layers, 2e-4, 3 epochs.",
        "settings": dict(method="lora", lora_r=16, lora_alpha=32, learning_rate=2e-4, epochs=3, batch_size=8,
                         warmup_steps=10),
    },
    "low-forgetting": {
        "help": "Small adapters on attention only and a gentle learning rate: learns less, keeps more.",
        "settings": dict(method="lora", lora_r=8, lora_alpha=16, lora_targets="attention", learning_rate=1e-4,
                         epochs=2, batch_size=8, warmup_steps=10),
    },
    "full-finetune": {
        "help": "Every weight trained at 2e-5: the most capacity and the most forgetting; needs about 4x the weights' memory.",
        "settings": dict(method="full", learning_rate=2e-5, epochs=3, batch_size=8, warmup_steps=10, weight_decay=0.0),
    },
}
