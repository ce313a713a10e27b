"""A run on real benchmarks, beside the core (which never imports this package): lm-evaluation-harness scores the
tuned model and its base in memory (harness.py), and the scores are stored in the run folder as
benchmarks/<task>-<weights>.json (results.py, the one owner of that format). Needs pip install 'ftnb[eval]'.

    from ftnb.evaluate import benchmark
    benchmark("runs/my-run", "arc_easy,hellaswag")                 # lm-eval's tasks (data from the Hub)
    benchmark("runs/my-run", ["questions.jsonl"], limit=100)       # your {question, choices, answer} file
    read_benchmarks("runs/my-run")                                 # what was stored, typed
"""
from .harness import benchmark, mc_task
from .results import read_all as read_benchmarks

__all__ = ["benchmark", "mc_task", "read_benchmarks"]
