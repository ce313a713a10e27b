"""One run over several processes: the same loop under `accelerate launch` (or `torchrun`), data parallel (DDP).

    accelerate launch --multi_gpu --num_processes 4 -m ftnb.cli train --data faq.jsonl --batch-size 32
    torchrun --nproc_per_node 2 -m ftnb.cli train ...          # also on CPU (gloo), as the tests do

Each optimizer step's examples are dealt out round-robin over the processes. Every process knows the whole step
(the data order is seeded), hence its target count, so each scales its loss by world / step targets and DDP's averaged
gradient equals one process's gradient on the same global batch. Gradients are exchanged once per step (the step's
other micro-batches run under `no_sync`). Process 0 owns the run directory: it writes the data snapshot, config,
metrics, checkpoints and the probe; the others train, join the collectives and write nothing.

With an FSDP config (`accelerate launch --config_file docs/accelerate-fsdp.yaml`), each decoder layer is sharded over
the processes (PyTorch's `fully_shard`): its weights, gradients and optimizer state live in pieces and each forward
gathers the layer whole for a moment. The embeddings, final norm and output layer stay whole on every process and their
gradients are averaged after the backward. Every process then runs as many forward passes as the busiest one (idle
ones repeat a pass with weight 0), since each pass gathers every layer from all processes. Checkpoints gather the
trained weights and optimizer state to process 0 and are saved in the same layout as a single process's.
"""
import contextlib
import datetime
import os

import torch

from .batching import micro_batches
from .errors import ConfigError, RunError


def launched():
    """True in a process started by `accelerate launch` / `torchrun` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _fsdp_settings():
    """(shard?, reshard after forward?) from the environment `accelerate launch` sets for an FSDP config (also
    settable by hand under torchrun: ACCELERATE_USE_FSDP=true)."""
    env = lambda name, default="": os.environ.get(name, default).strip().lower()  # noqa: E731
    if env("ACCELERATE_USE_FSDP", "false") not in ("true", "1"):
        return False, True
    for name, fix in (("FSDP_OFFLOAD_PARAMS", "more GPUs, or for LoRA quantize='4bit' with the DDP config"),
                      ("FSDP_ACTIVATION_CHECKPOINTING", "ftnb's gradient_checkpointing=True")):
        if env(name, "false") in ("true", "1"):
            raise ConfigError("device", f"the FSDP setting {name.lower()[5:]} is not supported by ftnb: use {fix}")
    strategy = env("FSDP_RESHARD_AFTER_FORWARD") or env("FSDP_SHARDING_STRATEGY", "full_shard")
    if strategy in ("true", "1", "full_shard"):
        return True, True
    if strategy in ("false", "0", "shard_grad_op"):
        return True, False
    raise ConfigError("device", f"FSDP sharding strategy {strategy!r} is not supported: use FULL_SHARD or "
                      "SHARD_GRAD_OP, or the DDP config (docs/accelerate-ddp.yaml) for no sharding")


class Processes:
    """The processes of this run: rank, world size, device and the few collectives the loop needs.
    With one process every method is a no-op, so the loop reads the same either way."""

    def __init__(self, cfg=None):
        self.accelerator = None
        self.rank, self.world = 0, 1
        self.sharded, self.reshard = False, True  # FSDP; gather layers anew for the backward (FULL_SHARD)
        self.units, self.whole = [], []  # FSDP: the sharded layers; trained parameters kept whole on every process
        if not launched():
            return
        from accelerate import Accelerator, DistributedType
        from accelerate.utils import InitProcessGroupKwargs
        # a probe pass or a checkpoint on process 0 keeps the others waiting at the next collective
        wait = InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=60))
        self.accelerator = acc = Accelerator(cpu=cfg is not None and cfg.device == "cpu", kwargs_handlers=[wait])
        if acc.distributed_type not in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.NO,
                                        DistributedType.FSDP):
            raise ConfigError("device", f"ftnb runs data parallel (DDP) or sharded (FSDP) over processes; "
                              f"{acc.distributed_type.value} from the accelerate config is not supported")
        self.rank, self.world = acc.process_index, acc.num_processes
        self.sharded, self.reshard = _fsdp_settings()
        if self.sharded and cfg is not None and cfg.quantize != "none":
            raise ConfigError("quantize", "a quantised base (QLoRA) is not sharded: launch with the DDP config "
                              "(docs/accelerate-ddp.yaml); each GPU then holds the 4-bit base")

    @property
    def main(self):
        return self.rank == 0

    @property
    def device(self):
        return self.accelerator.device if self.accelerator else None

    def wrap(self, module, layers, bf16):
        """The module whose forward computes the loss, ready for several processes: wrapped for gradient exchange
        (DDP), or left as it is with its decoder `layers` sharded (FSDP; their parameters become shards, so the
        optimizer is made after this). `bf16`: FSDP gathers the layers in bf16 and averages gradients in fp32."""
        if not self.sharded:
            return self.accelerator.prepare_model(module) if self.accelerator else module
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from torch.distributed.tensor import DTensor
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for layer in layers:
            fully_shard(layer, reshard_after_forward=self.reshard, mp_policy=policy)
        self.units = list(layers)
        self.whole = [p for p in module.parameters() if p.requires_grad and not isinstance(p, DTensor)]
        return module

    @contextlib.contextmanager
    def sync(self, module, now):
        """Context for one micro-batch's forward and backward: gradients are exchanged only when `now`."""
        if self.sharded:
            for unit in self.units:
                unit.set_requires_gradient_sync(now)
            yield
        elif self.accelerator is None or now:
            yield
        else:
            with module.no_sync():
                yield

    def average_whole_grads(self):
        """FSDP, after a step's last backward: average the gradients of the parameters every process keeps whole
        (DDP and a single process have nothing to do here)."""
        for p in self.whole:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(self.world)

    def clip_grad_norm(self, params, max_norm):
        """torch's clip_grad_norm_, also over FSDP's shards (the norm of the whole gradient, on every process)."""
        if not self.sharded:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        from torch.distributed.tensor import DTensor
        grads = [p.grad for p in params if p.grad is not None]
        shards = [g.to_local() for g in grads if isinstance(g, DTensor)]
        whole = [g for g in grads if not isinstance(g, DTensor)]
        squares = torch.zeros(2, device=self.device)
        for i, part in enumerate((shards, whole)):
            if part:
                squares[i] = torch.nn.utils.get_total_norm(part) ** 2
        torch.distributed.all_reduce(squares[:1])  # the shards' squares add up over processes
        total = squares.sum().sqrt()
        torch._foreach_mul_(shards + whole, (max_norm / (total + 1e-6)).clamp(max=1.0))
        return total

    def share(self, items):
        """This process's part of a step's examples (round-robin)."""
        return items[self.rank::self.world]

    def passes(self, items, max_tokens, join=True):
        """This process's share of `items` packed into forward passes of at most `max_tokens`, as (examples,
        weight) pairs. A pass of weight 0 only joins the others' collectives: with FSDP every process runs as many
        passes as the busiest one (each pass gathers every layer); with DDP (`join`: training) a process with
        nothing to do runs one, to join the gradient exchange."""
        mine = micro_batches(self.share(items), max_tokens)
        if self.sharded:
            n = max(len(micro_batches(items[r::self.world], max_tokens)) for r in range(self.world))
        else:
            n = max(len(mine), int(join and self.accelerator is not None))
        filler = micro_batches(items[:1], max_tokens)[:1] * (n - len(mine))
        return [(g, 1.0) for g in mine] + [(g, 0.0) for g in filler]

    @contextlib.contextmanager
    def gathered(self, when=True):
        """FSDP: process 0's own passes (probe, sample answers) run on whole layers, gathered there for the
        duration (every process must enter; the others drop their copy at once). A no-op otherwise."""
        if not (self.sharded and when):
            yield
            return
        for unit in self.units:
            unit.set_reshard_after_forward(False)
            unit.unshard()
            if not self.main:
                unit.reshard()
        try:
            yield
        finally:
            for unit in self.units:
                unit.reshard()
                unit.set_reshard_after_forward(self.reshard)

    def whole_state(self, model, optimizer):
        """FSDP: the trained weights (by name) and the optimizer state (in torch's own layout, as a single process
        saves it), gathered whole on process 0; every process must call this. None without FSDP."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        weights = get_model_state_dict(model, options=opts)
        by_name = get_optimizer_state_dict(model, optimizer, options=opts)
        return weights, _relabel(by_name, {name: i for i, name in enumerate(_param_names(model, optimizer))})

    def load_optimizer(self, model, optimizer, saved):
        """Restore an optimizer state saved in torch's own layout, into shards with FSDP."""
        if not self.sharded:
            return optimizer.load_state_dict(saved)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        by_name = _relabel(saved, _param_names(model, optimizer))
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

    def sum(self, tensor):
        """The sum of `tensor` over processes (a new tensor; with one process, `tensor` itself)."""
        if self.accelerator:
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor)
        return tensor

    def total(self, *numbers):
        """Python numbers summed over processes."""
        if self.accelerator is None:
            return numbers
        return tuple(self.sum(torch.tensor(numbers, dtype=torch.float64, device=self.device)).tolist())

    def any(self, flag):
        """True on every process when `flag` is true on any (used to agree on stopping)."""
        return self.total(float(flag))[0] > 0

    def broadcast(self, obj):
        """Process 0's `obj` on every process."""
        if self.accelerator is None:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def main_first(self, fn):
        """Run fn() on process 0 only while the others wait, and return its (small) result on every process; an
        error there is raised everywhere."""
        result = error = None
        if self.main:
            try:
                result = fn()
            except BaseException as e:
                error = e
        result, message = self.broadcast((result, None if error is None else f"{type(error).__name__}: {error}"))
        if error is not None:
            raise error
        if message is not None:
            raise RunError(f"process 0 failed: {message}")
        return result

    def barrier(self):
        if self.accelerator:
            self.accelerator.wait_for_everyone()


def _param_names(model, optimizer):
    """The names of the optimizer's parameters, in the order torch numbers them in its state dict."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _relabel(optim_state, label):
    """An optimizer state dict with each parameter's key k (number or name) replaced by label[k]."""
    return {"state": {label[k]: v for k, v in optim_state.get("state", {}).items()},
            "param_groups": [{**g, "params": [label[k] for k in g["params"]]}
                             for g in optim_state.get("param_groups", [])]}
