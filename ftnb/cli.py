"""The `ftnb` command: demo, train, data, resume, stop, runs, generate, probe, export, push."""
import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings

from .core.config import PRESETS, TrainConfig
from .core.formats import FORMAT_COLUMNS
from .core.errors import FtnbError


def _quiet_libraries():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    from transformers.utils import logging as hf_logging

    from .core.models import quiet_loading_bars
    hf_logging.set_verbosity_error()
    quiet_loading_bars()  # downloads still show their progress
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def _add_config_flags(p):
    """One flag per TrainConfig field, with the field's own help text."""
    g = p.add_argument_group("settings (any TrainConfig field; defaults shown in --help)")
    for f in dataclasses.fields(TrainConfig):
        flag, help_ = "--" + f.name.replace("_", "-"), f.metadata["help"].replace("%", "%%")
        default = TrainConfig.field_help()[f.name]["default"]
        if f.type in (bool, "bool"):
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.type in (list, "list"):
            g.add_argument(flag, dest=f.name, nargs="*", default=None, choices=f.metadata.get("item_choices"),
                           help=help_)
        elif f.type in (dict, "dict"):
            g.add_argument(flag, dest=f.name, type=mapping, default=None, metavar="ROLE=COLUMN,...",
                           help=help_ + " On the command line: prompt=Questions,completion=Answers (or JSON)")
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__)
            g.add_argument(flag, dest=f.name, type=typ, default=None, choices=f.metadata.get("choices"),
                           help=f"{help_} [default: {default}]")


def mapping(text):
    """A column mapping from the command line: 'prompt=Questions,completion=Answers' or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos + 1})") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise argparse.ArgumentTypeError('a JSON mapping of roles to column names, e.g. {"prompt": "Questions"}')
        return value
    pairs = [p.partition("=") for p in text.split(",") if p.strip()]
    bad = [f"{role}{eq}{col}" for role, eq, col in pairs if not (eq and role.strip() and col.strip())]
    if bad or not pairs:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or repr(text)}: write ROLE=COLUMN pairs separated by commas, "
                                         "e.g. prompt=Questions,completion=Answers")
    return {role.strip(): col.strip() for role, _, col in pairs}


def _add_checkpoint_flag(p):
    p.add_argument("--checkpoint", default=None, metavar="best|last|STEP",
                   help="which weights: 'last' (the final weights; default), 'best' (the best checkpoint within the "
                        "forgetting budget, or of the validation loss) or a step number")


def _add_trust_flag(p):
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow Python code shipped with the run's model (a run folder's own config cannot turn this "
                        "on: only for runs and models you trust)")


def _config_from_args(args):
    base = {}
    if args.config:
        base = TrainConfig.load(args.config).to_dict()
    if args.preset:
        base = {**PRESETS[args.preset]["settings"], **base}
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    return TrainConfig.from_dict({**base, **flags})


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec) if isinstance(x, float) else str(x)


def cmd_train(args):
    from .core.train import train
    cfg = _config_from_args(args)
    run = train(cfg, progress=True)
    if run.main:  # one line from a multi-process run, not one per process
        print(f"run directory: {run.run_dir.path}  ({run.state})")


def cmd_data(args):
    """Read a data file as training would and print its report; exit status 1 when no row is usable."""
    from .core.batching import tokenize_data
    from .core.data import load_examples
    from .core.models import load_tokenizer, resolve_model
    data = load_examples(args.file, args.data_format, args.columns, fix_encoding=args.fix_encoding)
    if data.examples:
        tokenizer = load_tokenizer(resolve_model(args.model))
        tokenize_data(data, tokenizer, args.max_seq_len, args.train_on, args.overlong)
    print(data.report.render(limit=args.limit))
    if data.report.usable:
        n = data.report.usable
        print(f"  {n} example{'' if n == 1 else 's'} ready to train (model {args.model}, max_seq_len {args.max_seq_len})")
    else:
        print("  nothing to train on", file=sys.stderr)
        sys.exit(1)


def cmd_resume(args):
    from .core.train import resume
    run = resume(args.run, progress=True, force=args.force, trust_remote_code=args.trust_remote_code)
    if run.main:  # one line from a multi-process run, not one per process
        print(f"run directory: {run.run_dir.path}  ({run.state})")


def cmd_stop(args):
    from .core.rundir import RunDir
    RunDir(args.run).request_stop()
    print(f"stop requested: {args.run} will save a checkpoint and stop at its next step")


def cmd_runs(args):
    from .core.rundir import list_runs
    runs = list_runs(args.dir)
    if not runs:
        print(f"no runs under {args.dir}")
        return
    print(f"{'run':<32} {'state':<11} {'step':>11} {'loss':>7} {'val':>7} {'time':>7}  forgetting (retention, 95% CI)")
    for r in runs:
        steps = f"{r['step']}/{r['total_steps'] or '?'}"
        print(f"{r['name'][:32]:<32} {r['state']:<11} {steps:>11} {_fmt(r['loss']):>7} {_fmt(r['val_loss']):>7} "
              f"{_fmt(r['elapsed_s'], '.0f'):>6}s  {_forgetting(r)}")


def _forgetting(r):
    """'no detectable change, 101% (96-106%)': the verdict and retention, never without its interval."""
    if r.get("retention") is None or r.get("retention_low") is None:
        return "-"
    return (f"{r.get('verdict') or 'no paired verdict'}, {r['retention']:.0%} "
            f"({r['retention_low']:.0%}-{r['retention_high']:.0%})")


def cmd_generate(args):
    from .core.saved import load_run
    run = load_run(args.run, checkpoint=args.checkpoint, trust_remote_code=args.trust_remote_code)
    print(f"({run.weights})\n")
    for p, a in zip(args.prompts, run.generate(args.prompts, args.max_new_tokens)):
        print(f"> {p}\n{a}\n")


def cmd_chat(args):
    """Talk to a run's model in the terminal: answers print as they are generated. /reset forgets the conversation,
    /base switches between the tuned and the base model (LoRA: the same weights, adapter off), /quit ends; Ctrl-C
    stops an answer, and at the prompt (or Ctrl-D) ends the chat."""
    from .core.chat import Conversation
    from .core.saved import load_run
    run = load_run(args.run, checkpoint=args.checkpoint, trust_remote_code=args.trust_remote_code)
    lora = hasattr(run.model, "disable_adapter")
    base = args.base and lora
    if args.base and not lora:
        print("(--base: this run is a full fine-tune, whose base would be a second model: talking to the tuned one)")
    conv = Conversation(system=args.system)
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "greedy": args.greedy, "seed": args.seed}
    print(f"({run.weights}; {'the base model' if base else 'the tuned model'}) /reset, /base, /quit; Ctrl-C stops "
          "an answer")
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text == "/quit":
            return
        if text == "/reset":
            conv.reset()
            print("(a new conversation)")
            continue
        if text == "/base":
            base = lora and not base
            print(f"(now: the {'base model, adapter off' if base else 'tuned model'})" if lora else
                  "(/base: this run is a full fine-tune; its base would be a second model)")
            continue
        if not text:
            continue
        print("base> " if base else "model> ", end="", flush=True)
        stream = conv.ask(run.model, run.tokenizer, text, adapter=not base, **settings)
        try:
            for piece in stream:
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            stream.close()
            print("\n(stopped; Ctrl-C again or Ctrl-D to quit)")
            continue
        print("\n(cut at --max-new-tokens)" if stream.finish == "length" else "")


def cmd_export(args):
    if args.gguf:
        from .export.gguf import export_gguf
        res = export_gguf(args.run, args.gguf, type=args.type, checkpoint=args.checkpoint, system=args.system,
                          trust_remote_code=args.trust_remote_code)
        print(f"wrote {res['out']} ({res['type']}, {res['bytes'] / 1e6:,.1f} MB, {res['architecture']}); read back and "
              f"compared on {len(res['prompts'])} prompts: max logit difference {res['max_logit_gap']:.3g} "
              f"(tolerance {res['tolerance']:.3g}), greedy answers equal {res['answers_equal']}/{len(res['prompts'])}"
              + (f"; llama.cpp: {res['llama_cpp']}" if res.get("llama_cpp") else "")
              + (f"\nOllama: ollama create NAME -f {res['modelfile']}" if res.get("modelfile") else "")
              + "".join(f"\nnote: {n}" for n in res.get("notes") or ()))
        return
    from .export import export
    res = export(args.run, args.merge, merge=True, trust_remote_code=args.trust_remote_code, checkpoint=args.checkpoint)
    print(f"wrote {res['out']} from {res['weights']} (merged: {res['merged']}); verified on {len(res['prompts'])} prompts: "
          f"max logit difference to the tuned model {res['max_logit_gap']:.2e}"
          + (f" (the base model differs by {res['base_vs_tuned_gap']:.2f})" if res["base_vs_tuned_gap"] else ""))


def cmd_push(args):
    from .export.hub import push_to_hub
    res = push_to_hub(args.run, args.repo_id, private=not args.public, merged=args.merged, checkpoint=args.checkpoint,
                      trust_remote_code=args.trust_remote_code)
    print(f"pushed {res['kind']} ({'private' if res['private'] else 'public'}) to {res['url']}: "
          f"{', '.join(res['files'])}")


def cmd_probe(args):
    from .core.probe import format_summary
    from .core.rundir import RunDir
    from .core.probe_saved import probe_model, probe_run
    if RunDir(args.target).config_path.exists():
        summary = probe_run(args.target, items=args.items, trust_remote_code=args.trust_remote_code)
    else:
        summary = probe_model(args.target, base=args.base, items=args.items)
    print(format_summary(summary))


def cmd_eval(args):
    """Score a run (and its base) on lm-eval benchmarks; one table line per task and metric."""
    from .core.paired import points
    from .evaluate.harness import benchmark
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on an in-memory model are for lm-eval's own CLI
    tasks = [t for t in (args.tasks or "").split(",") if t.strip()] + list(args.mc_file or ())
    if not tasks:
        raise FtnbError("name tasks with --tasks (arc_easy,hellaswag, a task .yaml, a .jsonl) or --mc-file FILE.jsonl")
    res = benchmark(args.run, tasks, limit=args.limit, checkpoint=args.checkpoint, base=args.base,
                    include_path=args.include_path, device=args.device, trust_remote_code=args.trust_remote_code,
                    **({"batch_size": args.batch_size} if args.batch_size else {}))
    first = next(iter(res.values()))
    print(f"({first['weights']}; base: {first['base_from'] or 'not scored'}; lm-eval {first['lm_eval_version']}; "
          f"{first['seconds']:.0f} s)")
    print(f"{'task':<28} {'metric':<10} {'n':>6} {'base':>15} {'tuned':>15} {'difference':>10}  right->wrong / "
          "wrong->right")
    pm = lambda v, e: "-" if v is None else f"{v:.3f}" + (f" ± {e:.3f}" if e is not None else "")  # noqa: E731
    for task, rec in res.items():
        for name, m in rec["metrics"].items():
            p = rec["paired"].get(name)
            print(f"{task[:28]:<28} {name[:10]:<10} {_fmt(rec['n']):>6} {pm(m['base'], m['base_stderr']):>15} "
                  f"{pm(m['tuned'], m['tuned_stderr']):>15} {_fmt(m['difference'], '+.3f'):>10}  "
                  + (f"{p['lost']} / {p['gained']}" if p else "-"))
    for task, rec in res.items():  # the paired view of each 0/1 metric: the probe's verdict and interval
        for name, p in rec["paired"].items():
            if p["difference_low"] is not None:
                print(f"{task} {name}: {p['verdict']}, {points(p['difference'], p['difference_low'], p['difference_high'])}"
                      f", McNemar p = {p['p_value']:.3g}")
    print("stored in " + ", ".join(rec["path"] for rec in res.values()))


def cmd_demo(args):
    from .demo import run_demo, run_forgetting_demo
    if args.forgetting:
        run_forgetting_demo(output_dir=args.output_dir if args.output_dir != "runs" else "runs-forgetting",
                            model=args.model)
        return
    ok = run_demo(output_dir=args.output_dir, epochs=args.epochs, model=args.model)
    if not ok:
        sys.exit(1)


SEVERAL_PROCESSES = """several GPUs: one process per GPU, data parallel (DDP through accelerate) or with the layers sharded
over the GPUs (FSDP); batch_size counts the examples of a step over all processes, and process 0 alone writes the run
directory:
  accelerate launch --multi_gpu --num_processes 4 -m ftnb.cli train --data faq.jsonl ...
  accelerate launch --config_file docs/accelerate-ddp.yaml -m ftnb.cli train ...
  accelerate launch --config_file docs/accelerate-fsdp.yaml -m ftnb.cli train ...    (sharded)
  torchrun --nproc_per_node 4 -m ftnb.cli train ...        (or: ... -m ftnb.cli resume RUN)
"""


def main(argv=None):
    from . import __version__
    parser = argparse.ArgumentParser(prog="ftnb", description="Fine-tune chat models and measure what they forget.")
    parser.add_argument("--version", action="version", version=f"ftnb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="teach the default model a pizza restaurant's facts (LoRA, a few minutes on CPU)")
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--epochs", type=float, default=None, help="override the demo's epochs")
    p.add_argument("--model", default="default", help="model to tune (default: SmolLM2-135M-Instruct)")
    p.add_argument("--forgetting", action="store_true",
                   help="instead: an aggressive full fine-tune against LoRA, with the learning-versus-forgetting "
                        "figure (about 15 minutes on 2 CPU cores)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("train", help="fine-tune on a data file", epilog=SEVERAL_PROCESSES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # flags' help carries the defaults
    p.add_argument("--config", help="a JSON config file (flags override it)")
    p.add_argument("--preset", choices=list(PRESETS), help="start from a preset")
    _add_config_flags(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("data", help="check a data file as training would read it: format, kept and rejected rows, "
                                    "over-long rows, duplicates, encoding (exit status 1 when nothing is usable)")
    p.add_argument("file", help="a .jsonl, .json, .csv, .tsv or .parquet file, or a Hub dataset name")
    defaults = TrainConfig()
    p.add_argument("--data-format", default="auto", choices=["auto", *FORMAT_COLUMNS], help="how rows are read")
    p.add_argument("--columns", type=mapping, default=None, metavar="ROLE=COLUMN,...",
                   help="which column plays which role: prompt=Questions,completion=Answers (or JSON)")
    p.add_argument("--model", default=defaults.model, help="whose tokenizer and chat template measure the rows")
    p.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    p.add_argument("--overlong", default=defaults.overlong, choices=["turns", "drop"])
    p.add_argument("--train-on", default=defaults.train_on, choices=["assistant", "all"])
    p.add_argument("--fix-encoding", action=argparse.BooleanOptionalAction, default=defaults.fix_encoding)
    p.add_argument("--limit", type=int, default=10, help="rows shown per kind of trouble")
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser("resume", help="continue a stopped or interrupted run from its last checkpoint",
                       epilog=SEVERAL_PROCESSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--force", action="store_true",
                   help="take the run over although its lock names another process (one that is gone for good, e.g. "
                        "on a machine that was shut down or preempted)")
    _add_trust_flag(p)
    p.set_defaults(fn=cmd_resume)

    p = sub.add_parser("stop", help="ask a running run to checkpoint and stop")
    p.add_argument("run")
    p.set_defaults(fn=cmd_stop)

    p = sub.add_parser("runs", help="list runs with their state and last metrics")
    p.add_argument("dir", nargs="?", default="runs")
    p.set_defaults(fn=cmd_runs)

    p = sub.add_parser("generate", help="answer prompts with a run's model")
    p.add_argument("run")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--max-new-tokens", type=int, default=64)
    _add_checkpoint_flag(p)
    _add_trust_flag(p)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("chat", help="talk to a run's model in the terminal (answers stream; /reset, /base, /quit)")
    p.add_argument("run")
    _add_checkpoint_flag(p)
    p.add_argument("--base", action="store_true", help="start with the base model (LoRA: adapter off; /base toggles)")
    p.add_argument("--system", default=None, help="a system prompt")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature: lower is safer and blander")
    p.add_argument("--top-p", type=float, default=0.9, help="sample among the likeliest tokens holding this much "
                                                           "probability")
    p.add_argument("--greedy", action="store_true", help="always the likeliest token: the same answer every time")
    p.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    p.add_argument("--max-new-tokens", type=int, default=256)
    _add_trust_flag(p)
    p.set_defaults(fn=cmd_chat)

    p = sub.add_parser("probe", help="measure forgetting: a run against its base model, or a model")
    p.add_argument("target", help="a run directory, or a model (name or folder)")
    p.add_argument("--base", help="for a model: the model it was tuned from (default: compare with itself)")
    p.add_argument("--items", help="your own probe items (JSONL), added to the bundled set")
    _add_trust_flag(p)
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("export", help="a run's model as a merged transformers folder (--merge) or a GGUF file for "
                                      "llama.cpp, Ollama and LM Studio (--gguf), verified before it says so")
    p.add_argument("run")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--merge", metavar="OUT", help="folder to write (must not exist)")
    where.add_argument("--gguf", metavar="OUT.gguf", help="GGUF file to write, with an Ollama Modelfile beside it")
    p.add_argument("--type", default="f16", choices=["f16", "bf16", "q8_0", "f32"], help="GGUF weight type")
    p.add_argument("--system", help="GGUF: the system prompt the Modelfile sets (default: the training data's, or "
                                    "the template's own)")
    _add_checkpoint_flag(p)
    _add_trust_flag(p)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("eval", help="score a run and its base on real benchmarks with lm-evaluation-harness, in "
                                    "memory (pip install 'ftnb[eval]'); stored in the run's benchmarks/ folder")
    p.add_argument("run")
    p.add_argument("--tasks", metavar="T1,T2", help="comma-separated: lm-eval task names (arc_easy, hellaswag, mmlu: "
                                                    "data from the Hub), task .yaml files, or .jsonl files of "
                                                    "{question, choices, answer}")
    p.add_argument("--mc-file", action="append", metavar="FILE.jsonl",
                   help="a JSONL file of {question, choices, answer}, scored with lm-eval's arc_easy prompt "
                        "(repeatable)")
    p.add_argument("--include-path", metavar="DIR", help="a folder of your own task YAML files, named in --tasks")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N documents of each task: a quick look")
    _add_checkpoint_flag(p)
    p.add_argument("--base", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the base model, for the differences (LoRA: adapter off; full: loaded separately)")
    p.add_argument("--batch-size", type=int, default=None, help="requests per forward pass (default 16): larger is "
                                                                "faster until memory runs out")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps (default: the fastest there is)")
    _add_trust_flag(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("push", help="upload a run to the Hugging Face Hub with a model card (adapter, or --merged)")
    p.add_argument("run")
    p.add_argument("repo_id", help="owner/name (or name, under your account); created when missing")
    p.add_argument("--merged", action="store_true", help="upload the adapter merged into the base weights: a model that "
                                                         "works without the base (verified before upload)")
    p.add_argument("--public", action="store_true", help="make a new repository public (default: private)")
    _add_checkpoint_flag(p)
    _add_trust_flag(p)
    p.set_defaults(fn=cmd_push)

    args = parser.parse_args(argv)
    _quiet_libraries()
    t0 = time.time()
    try:
        args.fn(args)
    except FtnbError as e:
        print(f"ftnb: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\nftnb: interrupted after {time.time() - t0:.0f}s", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
