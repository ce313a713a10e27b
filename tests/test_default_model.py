"""A few integration tests on the real default model (SmolLM2-135M-Instruct from the offline GGUF copy)."""
import pytest

import ftnb
from ftnb.core.data import bundled
from ftnb.core.models import resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    path = resolve_model("default")  # converts the GGUF once per machine (about 30 s), then loads in seconds
    model, tok, _ = ftnb.load_model(path)
    return model, tok


def test_default_model_is_found_offline_and_knows_paris(default_model):
    model, tok = default_model
    assert "Paris" in ftnb.generate(model, tok, "What is the capital of France?", max_new_tokens=12)
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                               add_generation_prompt=True)


def test_a_few_lora_steps_on_the_demo_data_then_export(tmp_path, default_model):
    # five rows: four to train on, one to validate, so every step sees the same batch of four and its loss must fall
    # (the losses of three different batches of the whole file rise and fall with what the batches hold); no warm-up:
    # the preset's starts at a learning rate of 0, so its first step changes nothing and the first two losses are
    # equal (they differed only in float rounding, in either direction)
    rows = bundled("pizza_demo.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    (tmp_path / "five.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    run = ftnb.train(ftnb.TrainConfig.from_preset("quick-cpu-demo", data=str(tmp_path / "five.jsonl"),
                                                  output_dir=str(tmp_path / "runs"), max_steps=3, batch_size=4,
                                                  val_fraction=0.2, probe=False, warmup_steps=0))
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    meta = (run.run_dir.path / "meta.json").read_text()
    assert '"trainable_params": 4884480' in meta  # r=16 on every linear layer of SmolLM2-135M
    from ftnb.export import export
    res = export(run.run_dir.path, tmp_path / "merged")
    assert res["max_logit_gap"] < 1e-3 < res["base_vs_tuned_gap"]
