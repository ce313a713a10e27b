"""The same guarantees on a CUDA device (bf16 or fp16 autocast, fused AdamW, a half-precision frozen base for
LoRA). Skipped without CUDA."""
import pytest
import torch

import ftnb
from ftnb.core.batching import pack, tokenize_example
from ftnb.core.formats import Example
from ftnb.core.loss import loss_sum

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def losses(run):
    return [m["loss"] for m in run.metrics() if "loss" in m]


def test_lora_on_cuda_keeps_the_base_in_half_precision_and_learns(tiny_cfg, qa_data):
    run = ftnb.train(tiny_cfg, qa_data, device="cuda", epochs=4)
    assert run.run_dir.status()["state"] == "finished"
    dtypes = {p.dtype for n, p in run.model.named_parameters() if not p.requires_grad}
    trained = {p.dtype for p in run.model.parameters() if p.requires_grad}
    half = torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16  # precision="auto"
    assert dtypes == {half} and trained == {torch.float32}
    assert losses(run)[-1] < losses(run)[0]
    assert run.metrics()[-1].get("mem_gb") or any("mem_gb" in m for m in run.metrics())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_on_cuda_continues_the_curve(tiny_cfg, qa_data, method):
    cfg = tiny_cfg.replace(method=method, epochs=3, device="cuda", probe=False)
    whole = ftnb.train(cfg, qa_data, run_name=f"w-{method}")

    def stop_at_7(ev):
        if ev.kind == "log" and ev.step == 7:
            ev.run.request_stop()
    ftnb.train(cfg, qa_data, run_name=f"p-{method}", subscribers=[stop_at_7])
    resumed = ftnb.resume(f"{cfg.output_dir}/p-{method}")
    assert losses(resumed) == pytest.approx(losses(whole), rel=2e-3)


def test_packed_equals_unpacked_under_bf16(tiny_path):
    model, tok, _ = ftnb.load_model(tiny_path, device="cuda")
    exs = [tokenize_example(tok, Example(messages=[{"role": "user", "content": f"Question {i}?"},
                                                   {"role": "assistant", "content": "An answer " * (i + 1)}]), 512)
           for i in range(6)]
    dev = torch.device("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        packed = loss_sum(model, pack(exs).to(dev))
        unpacked = sum(loss_sum(model, pack([e]).to(dev)) for e in exs)
    assert float(packed) == pytest.approx(float(unpacked), rel=1e-2)


def test_qlora_on_cuda_trains_bf16_adapters_over_a_4bit_base(tiny_cfg, qa_data):
    pytest.importorskip("bitsandbytes")
    run = ftnb.train(tiny_cfg, qa_data, device="cuda", quantize="4bit", probe=False, epochs=4)
    layer = run.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit" and layer.weight.device.type == "cuda"
    assert losses(run)[-1] < losses(run)[0]


def test_compiled_layers_on_cuda_give_the_eager_losses(tiny_cfg, qa_data):
    cfg = tiny_cfg.replace(device="cuda", probe=False, max_steps=6, lora_dropout=0.0, val_fraction=0)
    eager = ftnb.train(cfg, qa_data, run_name="eager")
    torch._dynamo.reset()
    compiled = ftnb.train(cfg, qa_data, run_name="compiled", compile=True)  # inductor
    assert losses(compiled) == pytest.approx(losses(eager), rel=2e-2)  # bf16: kernels differ in rounding


def test_tokens_per_pass_are_sized_from_the_free_memory(tiny_cfg, qa_data):
    import json
    run = ftnb.train(tiny_cfg, qa_data, device="cuda", probe=False, max_steps=2)
    chosen = json.loads((run.run_dir.path / "meta.json").read_text())["micro_batch_tokens"]
    assert tiny_cfg.max_seq_len <= chosen <= 65536 and chosen % 1024 == 0


def test_flex_attention_on_cuda_gives_the_sdpa_losses(tiny_cfg, qa_data):
    cfg = tiny_cfg.replace(device="cuda", max_steps=6, lora_dropout=0.0, val_fraction=0.2)
    sdpa = ftnb.train(cfg, qa_data, run_name="sdpa")
    flex = ftnb.train(cfg, qa_data, run_name="flex", attn_implementation="flex_attention")  # with the probe's rows
    assert flex.model.config._attn_implementation == "flex_attention"
    assert losses(flex) == pytest.approx(losses(sdpa), rel=2e-2)  # bf16: kernels differ in rounding
    assert flex.run_dir.status()["state"] == "finished"


def test_auto_precision_follows_the_gpu(tiny_cfg):
    from ftnb.core.train import resolve_precision
    native = torch.cuda.get_device_capability() >= (8, 0)
    assert resolve_precision("auto", "cuda") == ("bf16" if native else "fp16")


def test_fp16_on_cuda_scales_the_loss_and_counts_skipped_steps(tiny_cfg, qa_data):
    """fp16 autocast with torch.amp.GradScaler("cuda") (and fused AdamW, which unscales inside its kernel): an
    overflowing step is skipped and counted, the others train."""
    def overflow_at_step_3(ev):
        if ev.kind == "start":
            run = ev.run
            p = next(p for p in run.model.parameters() if p.requires_grad)
            p.register_hook(lambda g: g * float("inf") if run.step == 2 else g)
    run = ftnb.train(tiny_cfg, qa_data, device="cuda", precision="fp16", probe=False, epochs=4,
                     subscribers=[overflow_at_step_3])
    assert run.run_dir.status()["state"] == "finished"
    frozen = {p.dtype for p in run.model.parameters() if not p.requires_grad}
    assert frozen == {torch.float16}
    rows = [m for m in run.metrics() if m["kind"] == "train"]
    assert rows[1]["skipped_steps"] == 0 and rows[2]["skipped_steps"] >= 1
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
