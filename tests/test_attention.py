"""Per-example attention over packed rows (ftnb/core/attention.py) gives SDPA's losses, gradients and generations."""
import copy

import pytest
import torch

import ftnb
from ftnb.core import attention
from ftnb.core.batching import Tokenized, pack
from ftnb.core.loss import loss_sum
from ftnb.core.models import load_model


def random_model(kind, attn="sdpa"):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(kind, vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                               attn_implementation=attn)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


def packed_examples(n=5, vocab=300):
    g = torch.Generator().manual_seed(1)
    lengths = [7, 31, 2, 19, 44][:n]
    return [Tokenized(torch.randint(0, vocab, (L,), generator=g).tolist(), [i % 3 == 0 for i in range(L - 1)] + [True])
            for L in lengths]


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = loss_sum(model, batch)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_segments_give_the_sdpa_loss_and_gradients(kind):
    sdpa = random_model(kind)
    segments = copy.deepcopy(sdpa)
    assert attention.use_segments(segments) and attention.uses_segments(segments)
    assert not attention.uses_segments(sdpa)
    batch = pack(packed_examples())
    assert batch.starts == (0, 7, 38, 40, 59, 103)
    loss_a, grads_a = loss_and_grads(sdpa, batch)
    loss_b, grads_b = loss_and_grads(segments, batch)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads_b, grads_a, atol=1e-6, rtol=1e-4)


def test_a_model_that_runs_eager_attention_keeps_it():
    model = random_model("llama", attn="eager")  # e.g. Gemma 2 defaults to eager for its soft-capping
    assert not attention.use_segments(model) and model.config._attn_implementation == "eager"


def test_segments_are_called_with_the_spans_and_sdpa_where_a_mask_is_needed(tiny_path, monkeypatch):
    model, tok, _ = load_model(tiny_path)
    reference = copy.deepcopy(model)
    assert attention.use_segments(model)
    spans, masked = [], []
    real = attention.segments_attention

    def spy(module, query, key, value, attention_mask, **kw):
        (spans if kw.get("cu_seq_lens_q") is not None else masked).append(query.shape[2])
        return real(module, query, key, value, attention_mask, **kw)
    monkeypatch.setattr(attention, "segments_attention", spy)
    attention.register()
    try:
        with torch.no_grad():
            loss_sum(model, pack(packed_examples(vocab=400)))
        assert spans and not masked  # every layer took the per-example path
        # generation of a padded batch: the cache and the padding mask go to SDPA, and the answers are SDPA's
        prompts = ["What is 2 plus 2?", "Say something much longer than the first prompt, please."]
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            ours = model.generate(**enc, max_new_tokens=8, do_sample=False)
            theirs = reference.generate(**enc, max_new_tokens=8, do_sample=False)
        assert masked and torch.equal(ours, theirs)
    finally:
        monkeypatch.undo()
        attention.register()


def test_training_on_a_cpu_attends_per_example_with_the_sdpa_losses(tiny_cfg, qa_data):
    cfg = tiny_cfg.replace(probe=False, max_steps=6, log_every=1, val_fraction=0.0)
    ours = ftnb.train(cfg, qa_data, run_name="auto")
    sdpa = ftnb.train(cfg, qa_data, run_name="sdpa", attn_implementation="sdpa")
    assert attention.uses_segments(ours.model) and not attention.uses_segments(sdpa.model)
    losses = lambda run: [m["loss"] for m in run.metrics() if "loss" in m]  # noqa: E731
    assert losses(ours) == pytest.approx(losses(sdpa), rel=1e-5)
    saved = (ours.run_dir.path / "adapter" / "adapter_config.json").read_text()
    assert attention.NAME not in saved  # the run folder loads anywhere, with any attention
    assert ours.generate("What is 3 plus 3?", max_new_tokens=6) == sdpa.generate("What is 3 plus 3?", max_new_tokens=6)
