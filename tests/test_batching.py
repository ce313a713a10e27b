import pytest
import torch

from ftnb import load_examples
from ftnb.core.batching import IGNORE, StepPlan, micro_batches, pack, tokenize_data, tokenize_example
from ftnb.core.formats import Example
from ftnb.core.loss import loss_sum, split_head
from ftnb.core.models import load_model


@pytest.fixture(scope="module")
def tiny(tiny_path):
    torch.manual_seed(0)
    model, tok, _ = load_model(tiny_path)
    return model, tok


def chat(q, a, system=None):
    msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return Example(messages=([{"role": "system", "content": system}] if system else []) + msgs)


def test_only_assistant_tokens_are_targets(tiny):
    _, tok = tiny
    ex = Example(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                           {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Sunday?"},
                           {"role": "assistant", "content": "We close at 9pm."}])
    t = tokenize_example(tok, ex, 512)
    trained = tok.decode([i for i, m in zip(t.ids, t.mask) if m])
    assert trained == "Hello.<|im_end|>\nWe close at 9pm.<|im_end|>\n"
    assert tok.decode(t.ids) == tok.apply_chat_template(ex.messages, tokenize=False)
    everything = tokenize_example(tok, ex, 512, train_on="all")
    assert all(everything.mask)


def test_overlong_rows_keep_whole_turns_or_are_dropped(tiny):
    """An answer is never cut and trained on as if complete (issue 14): a conversation keeps the exchanges that fit
    whole, a row whose first answer does not fit is left out, a plain text is cut; each is named in the report."""
    _, tok = tiny
    rows = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": "More?"}, {"role": "assistant", "content": "answer " * 40}]},
            {"prompt": "short", "completion": "answer " * 40},
            {"messages": [{"role": "user", "content": "ok?"}, {"role": "assistant", "content": "Yes."}]}]
    data = load_examples(rows[:1] + [{"messages": [{"role": "user", "content": rows[1]["prompt"]},
                                                   {"role": "assistant", "content": rows[1]["completion"]}]}]
                         + rows[2:])
    out = tokenize_data(data, tok, max_seq_len=40)
    assert [t.row for t in out] == [1, 3] and out[0].truncated and not out[1].truncated
    assert tok.decode(out[0].ids).endswith("Hello.<|im_end|>\n")  # the first exchange, its end-of-turn included
    assert data.report.usable == 2 and data.report.truncated == 1 and not data.report.problems
    notes = {n.row: n.detail for n in data.report.overlong}
    assert notes[1].startswith("kept the first 1 of 2 answers") and notes[2].startswith("dropped")
    dropped = load_examples(rows[:1] + rows[2:])
    assert [t.row for t in tokenize_data(dropped, tok, max_seq_len=40, overlong="drop")] == [2]
    assert "dropped" in dropped.report.overlong[0].detail and dropped.report.usable == 1
    text = load_examples(["word " * 100])
    (cut,) = tokenize_data(text, tok, max_seq_len=40)
    assert len(cut) == 40 and "cut to its first 40 tokens" in text.report.overlong[0].detail
    assert "line" not in str(text.report) and "row 1: cut to its first 40 tokens" in str(text.report)


def test_pack_positions_and_shifted_labels(tiny):
    _, tok = tiny
    a, b = (tokenize_example(tok, chat("Hi?", "Yes."), 512), tokenize_example(tok, chat("Who?", "Me."), 512))
    batch = pack([a, b])
    n = len(a)
    assert batch.input_ids.shape == (1, len(a) + len(b)) and batch.n_tokens == len(a) + len(b)
    assert batch.position_ids[0, :n].tolist() == list(range(n))
    assert batch.position_ids[0, n:].tolist() == list(range(len(b)))
    labels = batch.labels[0].tolist()
    assert labels[n - 1] == IGNORE  # the last token of an example never predicts the next example
    for t in range(n - 1):
        assert labels[t] == (a.ids[t + 1] if a.mask[t + 1] else IGNORE)
    assert batch.n_targets == sum(a.mask[1:]) + sum(b.mask[1:])


def test_packed_rows_do_not_attend_across_examples(tiny):
    model, tok = tiny
    a = tokenize_example(tok, chat("What is the capital of France?", "Paris."), 512)
    b = tokenize_example(tok, chat("How many legs?", "Eight."), 512)
    c = tokenize_example(tok, chat("Completely different words here?", "Yes indeed."), 512)
    with torch.no_grad():
        packed_ab = model(input_ids=pack([a, b]).input_ids, position_ids=pack([a, b]).position_ids,
                          use_cache=False).logits[0]
        packed_cb = model(input_ids=pack([c, b]).input_ids, position_ids=pack([c, b]).position_ids,
                          use_cache=False).logits[0]
        alone_b = model(input_ids=torch.tensor([b.ids]), use_cache=False).logits[0]
    torch.testing.assert_close(packed_ab[len(a):], alone_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_cb[len(c):], alone_b, atol=1e-5, rtol=1e-5)


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_packed_loss_equals_unpacked_and_split_does_not_change_gradients(tiny):
    model, tok = tiny
    exs = [tokenize_example(tok, chat(f"Question number {i}?", f"Answer {i} " * (i + 1)), 512) for i in range(5)]
    n_targets = sum(sum(e.mask[1:]) for e in exs)
    unpacked = sum(loss_sum(model, pack([e])) for e in exs) / n_targets
    model.zero_grad()
    packed = loss_sum(model, pack(exs)) / n_targets
    packed.backward()
    g_one = _grads(model).clone()
    torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=1e-5)
    model.zero_grad()
    groups = micro_batches(exs, max_tokens=len(exs[0]) + len(exs[1]))
    assert len(groups) > 2
    for g in groups:
        (loss_sum(model, pack(g)) / n_targets).backward()
    torch.testing.assert_close(_grads(model), g_one, atol=1e-6, rtol=1e-4)
    model.zero_grad()


def test_chunked_output_layer_equals_full_logits(tiny, monkeypatch):
    import ftnb.core.loss as L
    model, tok = tiny
    batch = pack([tokenize_example(tok, chat(f"Q{i}?", "An answer of a few words."), 512) for i in range(6)])
    assert split_head(model) is not None
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
    full = torch.nn.functional.cross_entropy(logits, batch.labels[0], ignore_index=IGNORE, reduction="sum")
    monkeypatch.setattr(L, "CHUNK", 7)
    monkeypatch.setattr(L, "RECOMPUTE_ELEMENTS", 1)  # force the recompute path too
    model.zero_grad()
    chunked = loss_sum(model, batch)
    chunked.backward()
    g_chunked = _grads(model).clone()
    model.zero_grad()
    full.backward()
    torch.testing.assert_close(chunked, full, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(g_chunked, _grads(model), atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_step_plan_is_a_seeded_permutation_per_epoch():
    plan = StepPlan(10, 4, epochs=2, max_steps=0, seed=1)
    assert plan.steps_per_epoch == 3 and plan.total_steps == 6
    epoch0 = sum((plan.indices(s) for s in range(3)), [])
    epoch1 = sum((plan.indices(s) for s in range(3, 6)), [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(10)) and epoch0 != epoch1
    assert StepPlan(10, 4, 2, 0, seed=1).indices(4) == plan.indices(4)


def test_the_output_layer_runs_once_and_gives_the_autograd_gradients(tiny, monkeypatch):
    """HeadLoss (gradients in the forward pass, no recompute) against full logits through autograd: the loss, the
    backbone's gradients and the tied output layer's, in fp32 and under bf16 autocast; a LoRA-wrapped output layer
    keeps the autograd path."""
    import copy

    import ftnb.core.loss as L
    model, tok = tiny
    batch = pack([tokenize_example(tok, chat(f"Q{i}?", "An answer of a few more words."), 512) for i in range(6)])
    monkeypatch.setattr(L, "CHUNK", 7)
    monkeypatch.setattr(L, "checkpoint", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(L, "RECOMPUTE_ELEMENTS", 1)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model.zero_grad()
            fused = loss_sum(model, batch)
            fused.backward()
            g_fused = _grads(model).clone()
            model.zero_grad()
            logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
            full = torch.nn.functional.cross_entropy(logits.float(), batch.labels[0], ignore_index=IGNORE,
                                                     reduction="sum")
            full.backward()
        tol = dict(atol=2e-2, rtol=2e-2) if autocast else dict(atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fused, full, **tol)
        torch.testing.assert_close(g_fused, _grads(model), **tol)
        assert model.get_output_embeddings().weight.grad is not None  # tied to the embeddings: full fine-tuning
    model.zero_grad()
    from peft import LoraConfig, get_peft_model
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["lm_head", "q_proj"]))
    head = split_head(lora)[1]
    assert not L._plain(head)
    with pytest.raises(pytest.fail.Exception, match="recomputed"):  # the autograd path, with its recompute
        loss_sum(lora, batch).backward()
