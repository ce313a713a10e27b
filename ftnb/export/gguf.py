"""Export a run as one GGUF file for llama.cpp, Ollama and LM Studio, verified before success is reported.

The LoRA adapter is merged in memory, the weights, hyperparameters, tokenizer and chat template are written with the
`gguf` package (llama.cpp's own writer and tensor names), and the file is read back by transformers' GGUF loader and
compared with the tuned model (gguf_check.py): token ids, chat template, logits and greedy answers. llama-cpp-python,
when installed, reads the file too.

"""
import copy
import json
import os
import re
import time
from pathlib import Path

import gguf
import torch

from ..core.durable import new_file, sync_dir, write_text
from ..core.errors import RunError
from ..core.run import Run
from ..core.saved import load_run
from .gguf_check import PROMPTS, TOLERANCE, reference, verify
from .merge import merged_model
from .ollama import modelfile_text

SUPPORTED = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2"}  # model_type -> gguf.MODEL_ARCH (llama.cpp's)


def export_gguf(run_or_dir, out_path, type="f16", checkpoint=None, modelfile=True, system=None,
                trust_remote_code=False, overwrite=False):
    """Write the run's model (its LoRA adapter merged) to the GGUF file `out_path` and verify it; returns a dict of
    what was done and measured.

    `run_or_dir`: a run folder, or a Run in memory (its model is copied, never changed). `type`: 'f16' (half the size
    of f32, answers unchanged), 'q8_0' (a quarter, logits move a little), 'bf16' or 'f32'. `checkpoint`: passed to
    load_run, instead of the final weights. `modelfile`: also write an Ollama Modelfile beside the file; `system`: its
    SYSTEM prompt (default: the one every training example began with, else the chat template's own). Nothing that
    exists is replaced unless `overwrite`; a file that fails the check is kept as NAME.unverified.gguf."""
    out = Path(out_path).expanduser()
    if type not in TOLERANCE:
        raise RunError(f"type {type!r} is not one of {', '.join(TOLERANCE)}")
    mf = out.with_name("Modelfile") if modelfile else None
    for path in (out, mf):
        if path is not None and path.exists() and not overwrite:
            raise RunError(f"{path} exists; choose another name or pass overwrite=True (nothing was written)")
    started = time.time()
    run = _load(run_or_dir, checkpoint, trust_remote_code)
    model, tok = run.model, run.tokenizer
    arch, notes = _architecture(model)
    tokenizer_kind = _tokenizer_kind(tok)
    ollama = modelfile_text(out.name, tok, system or _training_system(run)) if modelfile else None
    expected, base_gap = reference(model, tok)
    model = merged_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_file(out.parent, f".{out.stem}.", ".tmp.gguf")
    os.close(fd)
    try:
        n_tensors = _write(tmp, model, tok, tokenizer_kind, arch, type, run.run_dir.path.name)
        try:
            checks = verify(tmp, tok, expected, type)
        except Exception as e:  # a file transformers cannot read is as wrong as one that answers differently
            checks = {"problems": [f"it cannot be read back ({e.__class__.__name__}: {e})"]}
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise RunError(f"could not write {out}: {e.strerror or e} (disk full or read-only?); "
                           f"{'it is as it was' if out.exists() else 'nothing was written'}") from e
        raise
    if checks["problems"]:
        kept = out.with_name(f"{out.stem}.unverified.gguf")
        os.replace(tmp, kept)
        raise RunError(f"the GGUF file does not behave like the tuned model: {'; '.join(checks['problems'])}. "
                       f"Kept for inspection as {kept}; {out} was not written")
    os.replace(tmp, out)
    sync_dir(out.parent)
    if base_gap is not None and checks["max_logit_gap"] > base_gap / 4:
        notes.append(f"{type} moves the logits by {checks['max_logit_gap']:.3g}, not far below the {base_gap:.3g} "
                     "tuning moved them: the tuned behaviour may be partly lost; f16 keeps it")
    result = {"out": str(out), "type": type, "architecture": gguf.MODEL_ARCH_NAMES[arch], "bytes": out.stat().st_size,
              "tensors": n_tensors, "merged": base_gap is not None, "base_vs_tuned_gap": base_gap,
              "prompts": list(PROMPTS), **checks, "modelfile": None, "notes": notes}
    if ollama:
        write_text(mf, ollama[0])
        result.update(modelfile=str(mf), ollama_template=ollama[1]["ollama_template"], system=ollama[1]["system"],
                      notes=notes + ollama[1]["notes"])
    result["seconds"] = round(time.time() - started, 1)
    return result


# -- the model ------------------------------------------------------------------------------------------------------

def _load(run_or_dir, checkpoint, trust_remote_code):
    """A Run whose model is on the CPU in float32 and may be merged in place."""
    run = run_or_dir
    if not isinstance(run, Run):
        return load_run(run, device="cpu", checkpoint=checkpoint, trust_remote_code=trust_remote_code)
    if checkpoint is not None or run.model is None or run.config.quantize != "none":
        # a 4-bit base cannot take the adapter exactly: load_run puts it on the full-precision base, as merge.py does
        return load_run(run.run_dir.path, device="cpu", checkpoint=checkpoint, trust_remote_code=trust_remote_code)
    return Run(run.config, run.run_dir.path, copy.deepcopy(run.model).to("cpu", torch.float32).eval(), run.tokenizer)


def _write(path, model, tok, tokenizer_kind, arch, type, name):
    """The GGUF file itself; returns how many tensors it holds."""
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    _add_hyperparameters(writer, model.config, arch, type)
    _add_tokenizer(writer, tok, tokenizer_kind, model.config.vocab_size)
    count = _add_tensors(writer, model, arch, type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return count


def _architecture(model):
    """(llama.cpp's architecture, notes on what it does differently) for a model it can run as transformers does."""
    c = model.config
    kind = c.model_type
    if kind not in SUPPORTED:
        raise RunError(f"GGUF export supports {', '.join(sorted(SUPPORTED))} models; this one is {kind!r} (nothing "
                       "was written). Export a transformers folder instead (ftnb.export.export) and convert it with "
                       "llama.cpp's convert_hf_to_gguf.py")
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise RunError(f"GGUF export does not handle {rope['rope_type']!r} rope scaling yet (nothing was written)")
    window = getattr(c, "sliding_window", None) if kind == "mistral" else None
    notes = [f"llama.cpp ignores Mistral's sliding window: prompts longer than {window} tokens are answered "
             "differently"] if window and window < c.max_position_embeddings else []
    return getattr(gguf.MODEL_ARCH, SUPPORTED[kind]), notes


def _add_hyperparameters(w, c, arch, type):
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    if arch == gguf.MODEL_ARCH.LLAMA:
        w.add_rope_dimension_count(head_dim)
    if head_dim != c.hidden_size // c.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(getattr(gguf.LlamaFileType, {"f32": "ALL_F32"}.get(type, f"MOSTLY_{type.upper()}")))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tensors(w, model, arch, type):
    """Every weight under llama.cpp's name, in `type` (norms and other 1-D tensors stay f32, as llama.cpp keeps
    them); returns how many."""
    c = model.config
    names = gguf.get_tensor_name_map(arch, c.num_hidden_layers)
    qtype = getattr(gguf.GGMLQuantizationType, type.upper())
    count = 0
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise RunError(f"GGUF export: no llama.cpp name for the weight {name!r} of this {c.model_type} model")
        data = tensor.detach().float()
        if arch == gguf.MODEL_ARCH.LLAMA and re.search(r"\.(q|k)_proj\.", name):
            heads = c.num_attention_heads if ".q_proj." in name else c.num_key_value_heads
            data = _rope_permute(data, heads)
        data = data.numpy()
        this_type = gguf.GGMLQuantizationType.F32 if data.ndim <= 1 or new_name.endswith("_norm.weight") else qtype
        try:
            packed = gguf.quants.quantize(data, this_type)
        except gguf.QuantError:  # rows not a multiple of the block size: llama.cpp's converter falls back to f16 too
            this_type = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, this_type)
        w.add_tensor(new_name, packed, raw_dtype=this_type)
        count += 1
    return count


def _rope_permute(weight, heads):
    """llama.cpp's rope pairs neighbouring dimensions, transformers' Llama pairs the two halves of each head: reorder
    the rows of q_proj / k_proj as llama.cpp's converter does (LlamaModel.permute)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


# -- the tokenizer --------------------------------------------------------------------------------------------------

# how a byte-level BPE tokenizer cuts text before merging -> llama.cpp's name for that rule (tokenizer.ggml.pre)
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
    (("Split", _QWEN2_SPLIT), ("ByteLevel", False)): "qwen2",
    (("Split", _LLAMA3_SPLIT), ("ByteLevel", False)): "llama-bpe",
}


def _tokenizer_kind(tok):
    """(tokenizer.ggml.model, tokenizer.ggml.pre): byte-level BPE (GPT-2 style) is 'gpt2' with the name of its way of
    splitting text; BPE with byte fallback (SentencePiece converted to tokenizer.json: Llama 2, Mistral) is 'llama'."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise RunError(f"GGUF export handles BPE tokenizers; this one is {spec['model']['type']} (nothing was written)")
    return ("llama", "default") if spec["model"].get("byte_fallback") else ("gpt2", _pre_tokenizer(spec))


def _add_tokenizer(w, tok, kind, n_vocab):
    """The vocabulary (padded to the embedding's rows as llama.cpp's converter does), merges, special tokens and chat
    template."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    spm = kind[0] == "llama"
    vocab = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in vocab:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(vocab[i])
            byte = spm and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", vocab[i])
            types.append(gguf.TokenType.BYTE if byte else gguf.TokenType.NORMAL)
    w.add_tokenizer_model(kind[0])
    w.add_tokenizer_pre(kind[1])
    w.add_token_list(tokens)
    w.add_token_types(types)
    if spm:  # llama.cpp's SentencePiece merges the pair whose result scores highest; ids follow the merge order
        w.add_token_scores([-float(i) for i in range(n_vocab)])
        w.add_add_space_prefix(_prepends_space(spec))
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for kind in ("bos", "eos", "unk", "pad"):
        if getattr(tok, f"{kind}_token_id") is not None:
            getattr(w, f"add_{kind}_token_id")(getattr(tok, f"{kind}_token_id"))
    ids = tok("a")["input_ids"]
    w.add_add_bos_token(tok.bos_token_id is not None and ids[0] == tok.bos_token_id)
    w.add_add_eos_token(tok.eos_token_id is not None and ids[-1] == tok.eos_token_id)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)


def _pre_tokenizer(spec):
    pre = spec.get("pre_tokenizer") or {}
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    shape = tuple(_step(s) for s in steps)
    if shape not in PRE_TOKENIZERS:
        raise RunError(f"GGUF export: this tokenizer splits text in a way ftnb cannot name for llama.cpp ({shape}); "
                       "nothing was written. Known: GPT-2, SmolLM, Qwen2 and Llama 3 byte-level BPE, and "
                       "SentencePiece-style BPE")
    return PRE_TOKENIZERS[shape]


def _step(s):
    if s.get("type") == "ByteLevel":  # llama.cpp never adds a space before the text of a byte-level BPE
        return ("ByteLevel", s.get("use_regex", True)) if not s.get("add_prefix_space") else ("ByteLevel", "prefix")
    if s.get("type") == "Digits":
        return "Digits", s.get("individual_digits", False)
    if s.get("type") == "Split":
        return "Split", (s.get("pattern") or {}).get("Regex")
    return (s.get("type"),)


def _prepends_space(spec):
    """Whether a SentencePiece-style tokenizer puts '▁' before every piece of text between special tokens, as
    llama.cpp's add_space_prefix does. transformers 5 builds Llama and Mistral tokenizers with Metaspace
    prepend_scheme='first', which puts it before the very first piece only, so never after the <s> that chat
    templates begin with: without the prefix llama.cpp splits chat prompts as the model was tuned on them."""
    steps = [s for part in (spec.get("pre_tokenizer"), spec.get("normalizer")) if part
             for s in part.get("pretokenizers") or part.get("normalizers") or [part]]
    return any(s["type"] == "Prepend" or s["type"] == "Metaspace" and s.get("prepend_scheme") == "always"
               for s in steps)


# -- small helpers --------------------------------------------------------------------------------------------------

def _training_system(run):
    """The system prompt every training example began with, or None."""
    from ..core.data import load_examples
    path = run.run_dir.path / "data" / "train.jsonl"
    if not path.exists():
        return None
    systems = {_system(e.messages or []) for e in load_examples(path, "auto", fix_encoding=False).examples}
    return systems.pop() if len(systems) == 1 else None


def _system(messages):
    return messages[0]["content"] if messages and messages[0]["role"] == "system" else None
