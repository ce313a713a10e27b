"""The training loss: cross-entropy summed over target tokens, computing the output layer only where it is needed.

A chat example's prompt (system text, question, template tokens) is a good part of its tokens but none of its targets,
and the output layer (hidden x vocabulary) is the single largest matrix of a small model. So we run the backbone, pick
the hidden states at target positions, and project only those, in chunks. When training, each chunk's gradients are
computed right away in the forward pass (`HeadLoss`): its fp32 logits never outlive the chunk and the output layer runs
once, where keeping them for the backward pass would cost memory and recomputing them a second pass of the largest
matrix. An output layer that is not a plain linear map (LoRA on it, quantised) keeps the autograd path, whose large
chunks are recomputed in the backward pass instead of kept.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import uses_segments

CHUNK = 4096                 # target positions per output-layer chunk
RECOMPUTE_ELEMENTS = 2 ** 26  # keep chunk logits smaller than this (256 MB in fp32) for backward, else recompute


def split_head(model):
    """(backbone, output layer) of a causal LM (peft-wrapped or not), or None when the loss must use full logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or backbone is base or head is None:
        return None
    return backbone, head


def _chunk_ce(head, hidden, targets):
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


class HeadLoss(torch.autograd.Function):
    """sum_t cross_entropy(hidden[t] @ weight.T, targets[t]), with the gradients for `hidden` (and `weight` when it
    trains) computed in the forward pass, CHUNK rows at a time; the backward pass only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i in range(0, targets.numel(), CHUNK):
            h, t = hidden[i:i + CHUNK], targets[i:i + CHUNK]
            logits = (h @ weight.t()).float()  # under autocast: the dtype the output layer runs in
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None])[:, 0]).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            probs[torch.arange(t.numel(), device=t.device), t] -= 1  # d loss / d logits
            g = probs.to(h.dtype)
            grad_hidden[i:i + CHUNK] = g @ weight
            if grad_weight is not None:
                grad_weight += (g.t() @ h).float()
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_total.float()
        return ((grad_hidden.float() * scale).to(grad_hidden.dtype),
                None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype), None)


def _plain(head):
    return type(head) is torch.nn.Linear and head.bias is None


def loss_sum(model, batch, parts=None):
    """Sum of next-token cross-entropy over the batch's targets (divide by the step's target count outside)."""
    parts = parts if parts is not None else split_head(model)
    kw = {"cu_seq_lens_q": batch.starts} if batch.starts and uses_segments(model) else {}
    if parts is None:
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **kw).logits
        return F.cross_entropy(logits[0].float(), batch.labels[0], ignore_index=-100, reduction="sum")
    backbone, head = parts
    hidden = backbone(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                      **kw).last_hidden_state[0]
    hidden, targets = hidden.index_select(0, batch.target_index), batch.targets
    if torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad) and _plain(head):
        return HeadLoss.apply(hidden, head.weight, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    vocab = head.weight.shape[0]
    for i in range(0, targets.numel(), CHUNK):
        h, t = hidden[i:i + CHUNK], targets[i:i + CHUNK]
        if torch.is_grad_enabled() and h.shape[0] * vocab > RECOMPUTE_ELEMENTS:
            total = total + checkpoint(_chunk_ce, head, h, t, use_reentrant=False)
        else:
            total = total + _chunk_ce(head, h, t)
    return total


class StepLoss(torch.nn.Module):
    """`loss_sum` as a module's forward, so that DDP (which exchanges gradients through the forward of the module
    it wraps) can wrap the loss rather than the model's logits path."""

    def __init__(self, model, parts):
        super().__init__()
        self.model, self.parts = model, parts  # parts: split_head(model)

    def forward(self, batch):
        return loss_sum(self.model, batch, self.parts)
