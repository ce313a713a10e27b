"""Attention over a packed row, one example at a time.

A training pass packs a step's examples end to end in one row. transformers keeps them apart with a dense
block-diagonal mask, so SDPA scores every query against every key of the whole row and masks most of it away: for 8
chat examples of about 450 tokens on SmolLM2-135M that is about twice the arithmetic of all the linear layers. Here each
example attends to itself alone (causal SDPA over its own span): only the blocks on the diagonal are computed, and
no mask is read. Passes without span boundaries (generation with its cache and padding, the probe's tree rows)
go to transformers' own SDPA with the mask it built, so results there are exactly SDPA's.
"""
import torch
import torch.nn.functional as F

NAME = "ftnb_segments"


def segments_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query (1, heads, T, d), key/value (1, kv heads, T, d); returns
    (1, T, heads, d) and no weights. `cu_seq_lens_q`: the examples' start offsets and T (a list or CPU tensor)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    bounds = kwargs.get("cu_seq_lens_q")
    if (bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or kwargs.get("sliding_window")
            or kwargs.get("s_aux") is not None or kwargs.get("softcap") or not getattr(module, "is_causal", True)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    bounds = bounds.tolist() if torch.is_tensor(bounds) else list(bounds)
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    out = torch.cat([F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=p,
                                                    is_causal=True, scale=scaling, enable_gqa=gqa)
                     for s, e in zip(bounds[:-1], bounds[1:])], dim=2)
    return out.transpose(1, 2).contiguous(), None


def register():
    """Make NAME a transformers attention implementation (its masks, for the passes that need one, are SDPA's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(NAME, segments_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper


def use_segments(model):
    """Switch a model that runs SDPA attention to NAME; False when it runs another (a model that defaults to eager
    does so for a reason, e.g. Gemma 2's logit soft-capping, which SDPA lacks) or its architecture does not take it."""
    base = _base(model)
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    try:
        base.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError, AttributeError):
        return False
    return base.config._attn_implementation == NAME


def uses_segments(model):
    return getattr(getattr(_base(model), "config", None), "_attn_implementation", None) == NAME
