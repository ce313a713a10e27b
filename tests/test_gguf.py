"""GGUF export: a LoRA run of the tiny model written as GGUF, read back by transformers and by gguf's own reader,
compared with the merged model; the Ollama Modelfile; tiny Qwen2 and Mistral models; refusals; the default model."""
import time

import gguf
import pytest
import torch

import ftnb
from ftnb.core.errors import RunError
from ftnb.core.run import Run
from ftnb.core.saved import load_run
from ftnb.export import export_gguf
from ftnb.export.merge import merged_model

SYSTEM = "You answer sums."
CHATML_MODELFILE = '''FROM ./tiny.gguf
TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
PARAMETER stop "<|im_start|>"
PARAMETER stop "<|im_end|>"
'''


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """conftest's qa_data with a system prompt, a few LoRA steps of the tiny model (lr high enough that the answers
    are words, not only newlines)."""
    data = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]
    cfg = ftnb.TrainConfig(model="tiny", output_dir=str(tmp_path_factory.mktemp("runs")), run_name="tiny-qa", epochs=2,
                           batch_size=4, learning_rate=1e-2, val_fraction=0.2, probe=False)
    return ftnb.train(cfg, data)


@pytest.fixture(scope="module")
def tiny_f16(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("f16") / "tiny.gguf"
    return export_gguf(tiny_run.run_dir.path, out), out


def merged(run_dir):
    run = load_run(run_dir, device="cpu")
    return merged_model(run.model), run.tokenizer


def test_f16_file_answers_like_the_merged_model(tiny_run, tiny_f16):
    res, out = tiny_f16
    assert res["problems"] == [] and res["tokens_equal"] and res["chat_template_equal"]
    assert res["answers_equal"] == len(res["prompts"]) == len(res["answers"]) == 4
    assert res["max_logit_gap"] <= res["tolerance"] and res["max_logit_gap"] < res["base_vs_tuned_gap"] / 100
    assert res["merged"] and res["architecture"] == "llama"
    # independently of export_gguf's own check: the file, as transformers reads it, answers as the merged model does
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = merged(tiny_run.run_dir.path)
    back = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32)
    back_tok = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    prompts = ["What is 5 plus 5?", "Hello! How can I help you today?"]
    expected = ftnb.generate(model, tok, prompts, max_new_tokens=16)
    assert ftnb.generate(back, back_tok, prompts, max_new_tokens=16) == expected
    assert any(expected)  # words, not only newlines stripped away


def test_metadata_read_back_with_ggufs_reader(tiny_f16):
    reader = gguf.GGUFReader(tiny_f16[1])
    meta = {k: f.contents() for k, f in reader.fields.items()
            if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "tiny-qa"
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.feed_forward_length"]) == (2, 64,
                                                                                                               128)
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    assert meta["llama.context_length"] == 2048 and meta["llama.rope.dimension_count"] == 16
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    tok = ftnb.core.models.load_tokenizer(ftnb.core.models.resolve_model("tiny"))
    assert tokens == [tok.convert_ids_to_tokens(i) for i in range(len(tok))] and meta["llama.vocab_size"] == len(tok)
    assert tokens[meta["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert tokens[meta["tokenizer.ggml.padding_token_id"]] == "<|endoftext|>"
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == ftnb.core.models.CHATML_TEMPLATE
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied to token_embd, as llama.cpp expects


def test_modelfile_holds_chatml_and_the_training_system_prompt(tiny_run, tiny_f16, tmp_path):
    res, out = tiny_f16
    assert res["ollama_template"] == "chatml" and res["system"] == SYSTEM and res["notes"] == []
    assert (out.parent / "Modelfile").read_text() == CHATML_MODELFILE + f'SYSTEM """{SYSTEM}"""\n'
    (tmp_path / "tiny.gguf").write_bytes(b"an older export")
    with pytest.raises(RunError, match="tiny.gguf exists; choose another name or pass overwrite=True"):
        export_gguf(tiny_run.run_dir.path, tmp_path / "tiny.gguf", system="Be brief.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]
    assert (tmp_path / "tiny.gguf").read_bytes() == b"an older export"
    export_gguf(tiny_run.run_dir.path, tmp_path / "tiny.gguf", system="Be brief.", overwrite=True)
    assert (tmp_path / "Modelfile").read_text() == CHATML_MODELFILE + 'SYSTEM """Be brief."""\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "tiny.gguf"]  # no temporary file left


def test_q8_0_from_the_run_in_memory_is_smaller_and_close(tiny_run, tiny_f16, tmp_path):
    res = export_gguf(tiny_run, tmp_path / "tiny-q8_0.gguf", type="q8_0", modelfile=False)
    loras = [m for m in tiny_run.model.modules() if hasattr(m, "lora_A")]
    assert res["merged"] and loras and not any(m.merged for m in loras)  # a copy was merged, not the Run's model
    assert res["problems"] == [] and res["tokens_equal"] and res["modelfile"] is None
    assert res["bytes"] < 0.6 * tiny_f16[0]["bytes"]
    assert tiny_f16[0]["max_logit_gap"] < res["max_logit_gap"] <= res["tolerance"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-q8_0.gguf"]


def test_a_file_that_answers_differently_is_refused_and_kept(tiny_run, tmp_path, monkeypatch):
    import ftnb.export.gguf as export_module
    monkeypatch.setattr(export_module, "_rope_permute", lambda weight, heads: weight)  # llama.cpp's q/k order skipped
    with pytest.raises(RunError, match="logits differ by .* Kept for inspection as .*tiny.unverified.gguf"):
        export_gguf(tiny_run.run_dir.path, tmp_path / "tiny.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.unverified.gguf"]


def tiny_run_of(model, tok, tmp_path):
    """An untrained model in memory as a Run, the way a notebook holds one."""
    return Run(ftnb.TrainConfig(model="tiny"), tmp_path / "run", model.eval(), tok)


def test_the_command_line_writes_and_checks_a_gguf(tiny_run, tmp_path, capsys):
    from ftnb.cli import main
    out = tmp_path / "cli" / "tiny.gguf"
    out.parent.mkdir()
    main(["export", str(tiny_run.run_dir.path), "--gguf", str(out), "--type", "q8_0", "--checkpoint", "best"])
    printed = capsys.readouterr().out
    assert f"wrote {out} (q8_0" in printed and "read back and compared on 4 prompts" in printed
    assert f"ollama create NAME -f {out.parent / 'Modelfile'}" in printed and out.exists()


def test_an_unsupported_architecture_is_refused_before_anything_is_written(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = ftnb.core.models.load_tokenizer(ftnb.core.models.resolve_model("tiny"))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    with pytest.raises(RunError, match="GGUF export supports llama, mistral, qwen2 models; this one is 'gpt2'"):
        export_gguf(tiny_run_of(model, tok, tmp_path), tmp_path / "out" / "m.gguf")
    assert not (tmp_path / "out").exists()


def test_tiny_qwen2_with_a_padded_vocabulary(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok = ftnb.core.models.load_tokenizer(ftnb.core.models.resolve_model("tiny"))
    torch.manual_seed(0)  # Qwen2 has q/k/v biases; its embedding has rows for tokens the tokenizer lacks
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok) + 8, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, tie_word_embeddings=True))
    res = export_gguf(tiny_run_of(model, tok, tmp_path), tmp_path / "qwen.gguf")
    assert res["problems"] == [] and res["architecture"] == "qwen2" and res["ollama_template"] == "chatml"
    assert res["answers_equal"] == 4 and not res["merged"]
    reader = gguf.GGUFReader(tmp_path / "qwen.gguf")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == len(tok) + 8 and tokens[-1] == f"[PAD{len(tok) + 7}]"
    assert "blk.1.attn_k.bias" in {t.name for t in reader.tensors}


def spm_tokenizer():
    """A SentencePiece-style tokenizer as Llama 2 and Mistral ship it in tokenizer.json: BPE on '▁'-marked words
    with byte fallback, <s> added in front, and Mistral's [INST] chat template."""
    import json

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = metaspace
    learner.train_from_iterator([ftnb.core.models._TINY_TEXT] * 4, trainers.BpeTrainer(vocab_size=300,
                                                                                       show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for t in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(t, len(vocab))
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in learned["merges"]], unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    bpe.pre_tokenizer = metaspace
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="</s>")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content']"
                         " + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    return tok


def test_tiny_mistral_with_a_sentencepiece_tokenizer_and_no_ollama_template(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM
    tok = spm_tokenizer()
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512, sliding_window=None))
    res = export_gguf(tiny_run_of(model, tok, tmp_path), tmp_path / "mistral.gguf")
    assert res["problems"] == [] and res["architecture"] == "llama" and res["answers_equal"] == 4
    assert res["ollama_template"] is None and "no TEMPLATE" in res["notes"][0]
    assert (tmp_path / "Modelfile").read_text() == "FROM ./mistral.gguf\n"
    meta = gguf.GGUFReader(tmp_path / "mistral.gguf").fields
    assert meta["tokenizer.ggml.model"].contents() == "llama" and meta["tokenizer.ggml.add_bos_token"].contents()
    assert "output.weight" in {t.name for t in gguf.GGUFReader(tmp_path / "mistral.gguf").tensors}


def test_llama_cpp_answers_like_the_merged_model(tiny_run, tmp_path):
    pytest.importorskip("llama_cpp")
    res = export_gguf(tiny_run.run_dir.path, tmp_path / "tiny.gguf", modelfile=False)
    assert res["llama_cpp"]["answers_equal"] == len(res["prompts"])
    assert res["llama_cpp"]["max_logit_gap"] <= res["tolerance"]


@pytest.mark.slow
def test_default_model_f16_and_q8_0(tmp_path, capsys):
    """SmolLM2-135M after two LoRA steps: f16 answers exactly as the merged model does, q8_0 close; the Modelfile
    carries the template's own system prompt. Prints the figures (about 3 minutes on 2 busy CPU cores)."""
    from ftnb.core.data import bundled
    run = ftnb.train(ftnb.TrainConfig.from_preset("quick-cpu-demo", data=str(bundled("pizza_demo.jsonl")),
                                                  output_dir=str(tmp_path), max_steps=2, batch_size=2,
                                                  val_fraction=0.05, probe=False))
    figures = {}
    for kind in ("f16", "q8_0"):
        started = time.time()
        res = export_gguf(run.run_dir.path, tmp_path / kind / "smollm2.gguf", type=kind)
        figures[kind] = {"seconds": round(time.time() - started, 1), "bytes": res["bytes"],
                         "gap": round(res["max_logit_gap"], 4), "tolerance": round(res["tolerance"], 3),
                         "base_vs_tuned": round(res["base_vs_tuned_gap"], 3), "equal": res["answers_equal"]}
        assert res["problems"] == [] and res["tokens_equal"] and res["chat_template_equal"]
    with capsys.disabled():
        print("\nGGUF export of SmolLM2-135M:", figures)
    assert figures["f16"]["equal"] == 4 and figures["f16"]["gap"] < figures["f16"]["base_vs_tuned"] / 10
    assert figures["q8_0"]["bytes"] < 0.6 * figures["f16"]["bytes"]
    modelfile = (tmp_path / "f16" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./smollm2.gguf\nTEMPLATE") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
