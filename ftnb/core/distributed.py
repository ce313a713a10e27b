"""One run over several processes: the same loop under `accelerate launch` (or `torchrun`), data parallel (DDP).

    accelerate launch --multi_gpu --num_processes 4 -m ftnb.cli train --data faq.jsonl --batch-size 32
    torchrun --nproc_per_node 2 -m ftnb.cli train ...          # also on CPU (gloo), as the tests do

Each optimizer step's examples are dealt out round-robin over the processes. Every process knows the whole step
(the data order is seeded), hence its target count, so each scales its loss by world / step targets and DDP's averaged
gradient equals one process's gradient on the same global batch. Gradients are exchanged once per step (the step's
other micro-batches run under `no_sync`). Process 0 owns the run directory: it writes the data snapshot, config,
metrics, checkpoints and the probe; the others train, join the collectives and write nothing.
"""
import contextlib
import datetime
import os

import torch

from .errors import ConfigError, RunError


def launched():
    """True in a process started by `accelerate launch` / `torchrun` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Processes:
    """The processes of this run: rank, world size, device and the few collectives the loop needs.
    With one process every method is a no-op, so the loop reads the same either way."""

    def __init__(self, cfg=None):
        self.accelerator = None
        self.rank, self.world = 0, 1
        if not launched():
            return
        from accelerate import Accelerator, DistributedType
        from accelerate.utils import InitProcessGroupKwargs
        # a probe pass or a checkpoint on process 0 keeps the others waiting at the next collective
        wait = InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=60))
        self.accelerator = acc = Accelerator(cpu=cfg is not None and cfg.device == "cpu", kwargs_handlers=[wait])
        if acc.distributed_type not in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.NO):
            raise ConfigError("device", f"ftnb runs data parallel (DDP) over processes; {acc.distributed_type.value} "
                              "from the accelerate config is not supported: use a DDP (multi-GPU) config")
        self.rank, self.world = acc.process_index, acc.num_processes

    @property
    def main(self):
        return self.rank == 0

    @property
    def device(self):
        return self.accelerator.device if self.accelerator else None

    def wrap(self, module):
        """The module whose forward computes the loss, wrapped for gradient exchange (DDP) when several processes."""
        return self.accelerator.prepare_model(module) if self.accelerator else module

    def sync(self, module, now):
        """Context for one micro-batch's forward and backward: gradients are exchanged only when `now`."""
        if self.accelerator is None or now:
            return contextlib.nullcontext()
        return module.no_sync()

    def share(self, items):
        """This process's part of a step's examples (round-robin)."""
        return items[self.rank::self.world]

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
