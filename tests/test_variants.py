"""Training variants on the tiny model, on CPU: DoRA, QLoRA (bitsandbytes), torch.compile, flex attention."""
import importlib
import importlib.util
import json

import pytest
import torch

import ftnb
from ftnb import ConfigError, RunDir

train_module = importlib.import_module("ftnb.core.train")  # the module (ftnb.core.train is the function)


def losses(run):
    return [m["loss"] for m in RunDir(run.run_dir.path).metrics() if "loss" in m]


def same_logits_after_reload(run):
    """The saved adapter, loaded back on the full-precision base, gives the trained model's logits."""
    reloaded = ftnb.load_run(run.run_dir.path, device="cpu")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        return reloaded.model(ids).logits, run.model.eval()(ids).logits


def test_dora_trains_and_saves_a_dora_adapter(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg.replace(use_dora=True, probe=False), qa_data)
    assert json.loads((run.run_dir.path / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    assert any("lora_magnitude_vector" in n for n, p in run.model.named_parameters() if p.requires_grad)
    curve = losses(run)
    assert curve[-1] < curve[0]
    torch.testing.assert_close(*same_logits_after_reload(run), atol=1e-5, rtol=1e-5)


bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                         reason="bitsandbytes not installed (pip install 'ftnb[qlora]'; the test extra has it)")


@bnb
def test_qlora_trains_adapters_on_a_4bit_base(tiny_cfg, qa_data):
    import bitsandbytes as bnb_lib
    run = ftnb.train(tiny_cfg.replace(quantize="4bit", probe=False, device="cpu"), qa_data)
    base = run.model.get_base_model()
    assert isinstance(base.model.layers[0].self_attn.q_proj.base_layer, bnb_lib.nn.Linear4bit)
    assert all("lora_" in n for n, p in run.model.named_parameters() if p.requires_grad)
    curve = losses(run)
    assert curve[-1] < curve[0]
    # the adapter applies to the unquantised base too (how export merges it): logits close, not equal (NF4 error)
    reloaded, trained = same_logits_after_reload(run)
    assert (reloaded - trained).abs().max() < 0.1 * trained.abs().max()


def test_quantize_needs_lora_and_bitsandbytes(tiny_cfg, qa_data, monkeypatch):
    with pytest.raises(ConfigError, match="quantize"):
        tiny_cfg.replace(method="full", quantize="4bit")
    import builtins
    real_import = builtins.__import__

    def no_bnb(name, *a, **k):
        if name == "bitsandbytes":
            raise ImportError(name)
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ConfigError, match=r"pip install 'ftnb\[qlora\]'"):
        ftnb.train(tiny_cfg.replace(quantize="8bit"), qa_data)


def test_compiled_layers_give_the_eager_losses(tiny_cfg, qa_data, monkeypatch):
    # "aot_eager" captures the same graphs as inductor (dynamo + AOT autograd, dynamic shapes) without generating
    # code, which takes minutes on 2 CPU cores; the first step compiles, later packed rows of other lengths reuse it
    monkeypatch.setattr(train_module, "COMPILE_BACKEND", "aot_eager")
    cfg = tiny_cfg.replace(probe=False, max_steps=4, lora_dropout=0.0, val_fraction=0)
    eager = ftnb.train(cfg.replace(run_name="eager"), qa_data)
    torch._dynamo.reset()
    compiled = ftnb.train(cfg.replace(run_name="compiled", compile=True), qa_data)
    layer = ftnb.core.models.decoder_layers(compiled.model)[0]
    assert layer._compiled_call_impl is not None
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5)


def test_flex_attention_keeps_packed_examples_apart(tiny_path):
    # PyTorch runs flex attention forward only on CPU, so training with it is a CUDA test (test_cuda.py); here the
    # packed rows' loss and the probe's tree rows (which switch to SDPA for their explicit mask) match SDPA
    from ftnb.core.batching import pack, tokenize_example
    from ftnb.core.formats import Example
    from ftnb.core.loss import loss_sum
    from ftnb.core.models import load_model
    from ftnb.core.probe import Tree, score_trees
    trees = [Tree([5, 6, 7], [[8, 9], [10], [11, 12, 13]]), Tree([20, 21], [[22], [23, 24]])]
    got = {}
    for attn in ("sdpa", "flex_attention"):
        model, tok, _ = load_model(tiny_path, attn=attn)
        exs = [tokenize_example(tok, Example(messages=[{"role": "user", "content": f"Question {i}?"},
                                                       {"role": "assistant", "content": "An answer " * (i + 1)}]), 512)
               for i in range(5)]
        with torch.no_grad():
            packed = loss_sum(model, pack(exs))
            alone = sum(loss_sum(model, pack([e])) for e in exs)
        scores = torch.cat([s for per_tree in score_trees(model, trees)[0] for s in per_tree])
        assert model.config._attn_implementation == attn  # restored after the probe's rows
        got[attn] = packed, alone, scores
    torch.testing.assert_close(got["flex_attention"][0], got["flex_attention"][1], atol=1e-4, rtol=1e-5)
    for a, b in zip(got["flex_attention"], got["sdpa"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_flex_attention_training_is_refused_off_cuda(tiny_cfg, qa_data):
    with pytest.raises(ConfigError, match="attn_implementation.*CUDA only"):
        ftnb.train(tiny_cfg.replace(attn_implementation="flex_attention", device="cpu"), qa_data)
    assert not any(__import__("pathlib").Path(tiny_cfg.output_dir).glob("*/config.json"))


def test_tokens_per_pass_follow_the_free_device_memory(tiny_cfg):
    from ftnb.core.models import load_model
    from ftnb.core.train import auto_micro_batch_tokens
    model, _, _ = load_model("tiny")
    cfg, cuda = tiny_cfg.replace(precision="bf16", max_seq_len=512), torch.device("cuda")
    # the tiny model keeps about 9 kB per token by the rule
    fits = [auto_micro_batch_tokens(cfg, cuda, model, free_bytes=gb * 1e9) for gb in (0.001, 0.05, 0.2, 2)]
    assert fits[0] == 512  # never below one longest example
    assert fits == sorted(fits) and 512 < fits[1] < fits[2] < fits[3] == 65536
    assert all(t % 1024 == 0 for t in fits[1:])
    assert auto_micro_batch_tokens(cfg.replace(gradient_checkpointing=True), cuda, model, free_bytes=0.05e9) > fits[1]
    assert auto_micro_batch_tokens(cfg.replace(micro_batch_tokens=4096), cuda, model, free_bytes=1e9) == 4096
    assert auto_micro_batch_tokens(cfg, torch.device("cpu"), model) == 2048


def test_estimate_counts_quantised_weights(tiny_cfg, tmp_path):
    from transformers import LlamaConfig

    from ftnb.core.estimate import estimate
    LlamaConfig(vocab_size=49152, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                intermediate_size=8192, tie_word_embeddings=True).save_pretrained(tmp_path)  # SmolLM2-1.7B's shape
    cfg = tiny_cfg.replace(model=str(tmp_path))
    full, nf4, int8 = (estimate(cfg.replace(quantize=q), 10_000, "cpu", measure=False)["memory_gb"]["weights"]
                       for q in ("none", "4bit", "8bit"))
    assert full == pytest.approx(1.71e9 * 4 / 1e9, rel=0.02)  # fp32 on CPU
    assert nf4 < int8 < full / 3
