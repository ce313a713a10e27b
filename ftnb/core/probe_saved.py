"""The forgetting summary after training: of a saved run against its base model, or of any model."""
from .forgetting import probe_baseline, read_baseline
from .models import load_model, pick_device, resolve_model
from .probe import ProbeSuite, run_probe, summarize
from .saved import load_run


def probe_run(run_dir, items=None, trust_remote_code=False):
    """The forgetting summary of a run's final (or latest) weights against its base model."""
    run = load_run(run_dir, trust_remote_code=trust_remote_code)
    suite = ProbeSuite.default(items or run.config.probe_items or None)
    saved = read_baseline(run.run_dir.path / "probe", suite)
    if saved:
        baseline = saved["result"]
    elif hasattr(run.model, "disable_adapter"):
        baseline = probe_baseline(run.model, run.tokenizer, suite, resolve_model(run.config.model))[0]
    else:
        base, tok, path = load_model(run.config.model, next(run.model.parameters()).device,
                                     trust_remote_code=trust_remote_code)
        baseline = probe_baseline(base, tok, suite, path)[0]
        del base
    return summarize(suite, run_probe(run.model, run.tokenizer, suite, baseline=baseline), baseline)


def probe_model(name, base=None, items=None):
    """A model's probe summary; with `base`, against that model's results (retention, drift)."""
    suite = ProbeSuite.default(items)
    model, tok, path = load_model(name, pick_device())
    if base:
        bmodel, btok, bpath = load_model(base, pick_device())
        baseline = probe_baseline(bmodel, btok, suite, bpath)[0]
        del bmodel
    else:
        baseline = probe_baseline(model, tok, suite, path)[0]
    return summarize(suite, run_probe(model, tok, suite, baseline=baseline), baseline)
