"""Share a run on the Hugging Face Hub, with a model card that says what it is and how it was made.

    from ftnb.export import push_to_hub
    push_to_hub("runs/my-run", "me/pizza-bot")                # the LoRA adapter, in a private repo
    push_to_hub("runs/my-run", "me/pizza-bot", merged=True)   # a standalone model: merged, verified by logits

Everything up to the network is `prepare_upload`, which writes the folder that would be sent (look at it, or test
it); `push_to_hub` prepares it in a temporary folder, creates the repo and uploads the folder with huggingface_hub.
"""
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path

from ..core.durable import write_json
from ..core.errors import RunError
from ..core.models import check_safe_folder, load_tokenizer, resolve_model
from ..core.rundir import RunDir, read_untrusted_json
from ..core.saved import choose_weights
from .card import model_card, recorded_base
from .merge import export

# what is copied from a weights folder: weights, configs and tokenizer files; never pickles, never the run's README
UPLOAD_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model")


def prepare_upload(run_dir, folder, merged=False, checkpoint=None, repo_id=None, trust_remote_code=False):
    """Write to `folder` (new or empty) what `push_to_hub` would upload: the run's LoRA adapter, or with `merged`
    the adapter merged into its base (a transformers folder, verified by logits); a full fine-tune's model either
    way; the tokenizer; and the model card README.md. `checkpoint`: the step of a checkpoint instead of the final
    weights (a run without final weights gives its newest checkpoint). `repo_id`: named in the card's snippet.
    Returns what was prepared, with `warning` set (and warned) when the adapter's base weights are not the Hub
    original's."""
    rd = RunDir(getattr(run_dir, "run_dir", run_dir))
    cfg = rd.config()
    folder = Path(folder).expanduser()
    if folder.exists() and any(folder.iterdir()):
        raise RunError(f"{folder} is not empty; choose a new folder (nothing was written)")
    weights, step, from_checkpoint, _ = choose_weights(rd, checkpoint)
    if not weights.resolve().is_relative_to(rd.path.resolve()):  # a symlinked folder could name any on this machine
        raise RunError(f"{weights} points outside the run folder; nothing was written")
    check_safe_folder(weights)
    base = recorded_base(rd, cfg)
    check = None
    if weights.name == "adapter" and merged:
        kind = "merged"
        check = export(rd.path, folder, merge=True, trust_remote_code=trust_remote_code,
                       checkpoint=step if from_checkpoint else None)
    else:
        kind = "adapter" if weights.name == "adapter" else "model"
        folder.mkdir(parents=True, exist_ok=True)
        _copy_files(weights, folder)
        if not (folder / "tokenizer_config.json").exists():  # a checkpoint holds weights only
            _save_tokenizer(rd, cfg, folder, trust_remote_code)
        if kind == "adapter" and base["base_model"]:
            _name_base(folder / "adapter_config.json", base["base_model"])
    prepared = {"folder": str(folder), "kind": kind, "step": step, "checkpoint": from_checkpoint, "check": check,
                **base, "warning": _base_warning(kind, base)}
    model_card(rd.path, kind, step, from_checkpoint, repo_id, check).save(folder / "README.md")
    prepared["files"] = sorted(p.name for p in folder.iterdir())
    if prepared["warning"]:
        warnings.warn(prepared["warning"], stacklevel=2)
    return prepared


def push_to_hub(run_or_dir, repo_id, private=True, merged=False, checkpoint=None, token=None, commit_message=None,
                trust_remote_code=False):
    """Upload a run to the Hub repo `repo_id` ("name" or "owner/name"; created when missing, `private` by default):
    the folder `prepare_upload` writes (adapter or merged model, tokenizer, model card). `token`: a Hub token (default:
    the one `hf auth login` saved). Returns prepare_upload's dict with repo_id, url, private and commit_url."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(repo_id)
    except ValueError as e:
        raise RunError(f"{repo_id!r} is not a Hub repo id ({e})") from None
    rd = RunDir(getattr(run_or_dir, "run_dir", run_or_dir))
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ftnb-push-") as tmp:
        folder = Path(tmp) / "upload"
        prepared = prepare_upload(rd, folder, merged, checkpoint, repo_id, trust_remote_code)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        target = getattr(url, "repo_id", None) or repo_id
        if target != repo_id:  # a bare name lands in the token's namespace: the card's snippet names it in full
            model_card(rd.path, prepared["kind"], prepared["step"], prepared["checkpoint"], target,
                       prepared["check"]).save(folder / "README.md")
        if private and api.repo_info(target, repo_type="model").private is False:
            raise RunError(f"{target} already exists and is public (create_repo leaves an existing repo as it is); "
                           "nothing was uploaded. Make it private on the Hub, or pass private=False to publish")
        commit = api.upload_folder(repo_id=target, folder_path=str(folder), repo_type="model",
                                   commit_message=commit_message or f"Upload the {prepared['kind']} of ftnb run "
                                                                    f"{rd.path.name} (step {prepared['step']})")
    return {**prepared, "folder": None, "repo_id": target, "url": str(url), "private": private,
            "commit_url": getattr(commit, "commit_url", None)}


def _copy_files(src, dst):
    """The regular files of `src` worth uploading. A symlink is never followed: a run folder may come from anyone,
    and a link could name any file on this machine."""
    for p in sorted(src.iterdir()):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and p.suffix in UPLOAD_SUFFIXES:
            shutil.copyfile(p, dst / p.name)


def _save_tokenizer(rd, cfg, folder, trust_remote_code):
    """The tokenizer the run trained with: the one saved with its final weights, or its base model's."""
    saved = rd.weights_path
    path = saved if saved is not None and (saved / "tokenizer_config.json").exists() else resolve_model(cfg.model)
    load_tokenizer(path, trust_remote_code).save_pretrained(folder)


def _name_base(config_path, base_model):
    """adapter_config.json names the base as users load it, the Hub id (a checkpoint's names the local folder)."""
    value, why = read_untrusted_json(config_path)
    if why or not isinstance(value, dict):
        raise RunError(f"the adapter's adapter_config.json cannot be read ({why or 'not a JSON object'})")
    if value.get("base_model_name_or_path") != base_model:
        write_json(config_path, {**value, "base_model_name_or_path": base_model})


def _base_warning(kind, base):
    """Why the adapter may not work for others as it did in training (None when its base is the Hub original)."""
    if kind != "adapter" or base["base_exact"] is True:
        return None
    if base["base_exact"] is False and base["base_model"]:
        why = (f"this adapter was trained on base weights {base['base_weights']}, not on {base['base_model']}'s own: "
               f"applied to the Hub original it behaves close to, not exactly as, it did in training")
    elif not base["base_model"]:
        why = f"this adapter's base is not on the Hub ({base['base_weights']}): others cannot load it"
    else:
        why = f"the run did not record which weights of {base['base_model']} it trained on"
    return f"{why}; push with merged=True to upload weights that work without that base"

