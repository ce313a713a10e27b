"""The peers of bench/throughput.py: what a user who does not use ftnb runs, one function each, same contract:

    run(shape, method, data, batch, steps, warm, device, lr) -> dict(impl, tok_s, loss, losses, ...)

`data` is a list of (token ids, target mask); every peer sees the same batches in the same order (ftnb's StepPlan),
from the same initial weights, with the same optimizer, schedule and clipping, and trains on the same targets.
  trainer       transformers' Trainer + peft, each batch padded to its longest sequence (the default collator's way)
  trainer-flat  the Trainer with DataCollatorWithFlattening: a batch is one row, no padding, position_ids restart
  trl           TRL's SFTTrainer with padding_free=True and the loss on the answers only (its own collator)
"""
import tempfile
import time

import torch

from ftnb.core.batching import IGNORE, StepPlan


def order(n_seqs, batch, steps, seed):
    plan = StepPlan(n_seqs, batch, epochs=1, max_steps=steps, seed=seed)
    return [plan.indices(s) for s in range(steps)]


def labels_of(ids, mask):
    """Unshifted labels, as transformers' models take them: the token itself where it is a target."""
    return [t if m else IGNORE for t, m in zip(ids, mask)]


class InOrder:
    """Mixed into a trainer: the same batches, in the same order, as ftnb's plan (`data` is given in that order)."""

    def _get_train_sampler(self, *a, **k):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def padded_collate(items):
    L = max(len(x["input_ids"]) for x in items)
    ids = torch.zeros(len(items), L, dtype=torch.long)
    att = torch.zeros(len(items), L, dtype=torch.long)
    labels = torch.full((len(items), L), IGNORE, dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x["input_ids"])
        ids[i, :n], att[i, :n], labels[i, :n] = torch.tensor(x["input_ids"]), 1, torch.tensor(x["labels"])
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


def tokenizer():
    """TRL's trainer wants a tokenizer (for its pad id); the data is token ids already."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>")),
                                   pad_token="<pad>", eos_token="<eos>")


def run(impl, model, method, data, batch, steps, warm, device, lr, padded_accumulation=1):
    """padded_accumulation: the padded Trainer takes each batch as that many accumulated parts (the same step, less
    memory: SmolLM2-135M's shape padded to batches of 8 chat examples needs more than 24 GB on a CPU)."""
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    n_params = sum(p.numel() for p in model.parameters())
    if method == "lora":
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    batches = order(len(data), batch, steps, seed=0)
    ordered = [data[i] for b in batches for i in b]

    class Timer(TrainerCallback):
        t0 = None
        losses = []

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warm:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                Timer.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                Timer.losses.append(logs["loss"])

    parts = padded_accumulation if impl == "trainer" else 1
    common = dict(per_device_train_batch_size=batch // parts, gradient_accumulation_steps=parts, max_steps=steps, learning_rate=lr, bf16=device.type == "cuda",
                  logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0, disable_tqdm=True,
                  optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch", lr_scheduler_type="cosine",
                  warmup_steps=2, max_grad_norm=1.0, weight_decay=0.0, use_cpu=device.type == "cpu", seed=0)
    with tempfile.TemporaryDirectory() as out:
        if impl == "trl":
            from datasets import Dataset
            from trl import SFTConfig, SFTTrainer

            class Peer(InOrder, SFTTrainer):
                pass
            # token ids with a mask of the answers: TRL's completion_only_loss, which builds the labels that
            # assistant_only_loss builds from a conversational text dataset
            rows = {"input_ids": [ids for ids, _ in ordered],
                    "completion_mask": [[int(m) for m in mask] for _, mask in ordered]}
            args = SFTConfig(output_dir=out, padding_free=True, completion_only_loss=True, max_length=None,
                             dataset_num_proc=None, **common)
            tr = Peer(model=model, args=args, train_dataset=Dataset.from_dict(rows), processing_class=tokenizer(),
                         callbacks=[Timer()])
        else:
            from transformers import DataCollatorWithFlattening

            class Peer(InOrder, Trainer):
                pass

            class DS(torch.utils.data.Dataset):
                def __len__(self):
                    return len(ordered)

                def __getitem__(self, i):
                    ids, mask = ordered[i]
                    return {"input_ids": ids, "labels": labels_of(ids, mask)}
            collate = DataCollatorWithFlattening() if impl == "trainer-flat" else padded_collate
            args = TrainingArguments(output_dir=out, remove_unused_columns=False, **common)
            tr = Peer(model=model, args=args, train_dataset=DS(), data_collator=collate, callbacks=[Timer()])
        tr.remove_callback(PrinterCallback)  # it prints every log dict
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tr.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - Timer.t0
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    timed = [data[i][0] for b in batches[warm:] for i in b]
    real = sum(map(len, timed))
    size = batch // parts
    padded = sum(max(len(data[i][0]) for i in b[k:k + size]) * len(b[k:k + size]) for b in batches[warm:]
                 for k in range(0, len(b), size)) if impl == "trainer" else real
    del tr, model
    last = Timer.losses[-warm:]  # the mean over the last window, as ftnb logs it
    return dict(impl=impl, tok_s=real / dt, peak_gb=peak, loss=sum(last) / len(last), losses=list(Timer.losses),
                n_params=n_params, pad_share=1 - real / padded, seconds=dt)
