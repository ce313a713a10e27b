"""Experiment trackers (the config's `report_to`): TensorBoard, MLflow, Weights & Biases and trackio, as subscribers.

Each receives what metrics.jsonl holds, at the same steps: every number of a train line (train/loss, train/lr,
train/grad_norm, train/tokens_per_s, train/reg_loss, ...), of an evaluation (eval/val_loss) and of a probe summary
(probe/acc, probe/retention, probe/retention_low, probe/kl, probe/ppl, ...), and the run's settings as
hyperparameters. Where it logs, by default and otherwise:

    tensorboard  runs/X/tensorboard/                       (tensorboard --logdir runs)
    mlflow       sqlite:///runs/X/mlflow.db                MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME (default "ftnb")
    wandb        offline, runs/X/wandb/offline-run-*      WANDB_MODE=online or WANDB_API_KEY; WANDB_PROJECT, WANDB_DIR
    trackio      trackio's local store, project "ftnb"    TRACKIO_DIR, TRACKIO_SPACE_ID, TRACKIO_SERVER_URL

A resumed run continues the same tracker run where the tracker can (ids kept in runs/X/trackers.json; TensorBoard
hides the steps logged after the checkpoint). The packages are imported only when a run asks for them. A tracker that
raises is closed and then detached by the EventBus with one warning; training goes on.
"""
import importlib.util
import json
import os
import time

from . import metrics
from .errors import ConfigError
from .events import ENDS

EXTRA = "pip install 'ftnb[{}]'"


def _modules(name):
    """The importable modules a tracker needs here."""
    if name == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        return ("mlflow", "sqlalchemy", "alembic") if not uri or uri.startswith("sqlite:") else ("mlflow",)
    return (name,)


def require(names):
    """Raise a ConfigError naming the extra to install when a tracker's package is missing."""
    for name in names:
        missing = [m for m in _modules(name) if importlib.util.find_spec(m) is None]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise ConfigError("report_to", f"{name!r} needs {' and '.join(missing)}, which {verb} not installed: "
                              f"{EXTRA.format(name)}")


def make_trackers(names):
    return [CLASSES[name]() for name in names]


def scalars(ev):
    """{tag: number} of an event as metrics.jsonl holds it (typed by metrics.py, its one reader): train/<field>,
    eval/<field>, probe/<field>; {} for events that write no metrics line."""
    kind = {"log": "train", "eval": "eval", "probe": "probe"}.get(ev.kind)
    if kind is None:
        return {}
    try:
        row = metrics.typed({"kind": kind, "step": ev.step, **ev.data})
    except metrics.Skip:
        return {}
    values = row["probe"] if kind == "probe" else row
    return {f"{kind}/{k}": v for k, v in values.items()
            if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def hyperparameters(cfg):
    """The config as flat {name: str | int | float | bool} (lists and mappings as JSON), for trackers' param tables."""
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in cfg.to_dict().items()}


def _recall(run_dir, name):
    try:
        saved = json.loads((run_dir.path / "trackers.json").read_text())
    except (OSError, ValueError):
        return {}
    return saved.get(name) if isinstance(saved, dict) and isinstance(saved.get(name), dict) else {}


def _remember(run_dir, name, value):
    from .durable import write_json
    path = run_dir.path / "trackers.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    write_json(path, {**(saved if isinstance(saved, dict) else {}), name: value})


class Tracker:
    """Opens on `start`, logs the metrics lines' numbers, closes on finished/stopped/failed. On an error it closes
    itself and raises, so that the EventBus detaches it with a warning (a tracker is not essential to the run)."""
    name = ""

    def __init__(self):
        self.opened = False

    def __repr__(self):
        return f"<ftnb {self.name} tracker>"

    def on_event(self, ev):
        try:
            if ev.kind == "start":
                self.open(ev.run, ev.step, bool(ev.data.get("resumed")))
                self.opened = True
            elif not self.opened:
                return
            elif ev.kind in ENDS:
                self.opened = False
                self.close(ev.kind)
            else:
                values = scalars(ev)
                if values:
                    self.log(values, ev.step)
        except Exception:
            if self.opened:
                self.opened = False
                try:
                    self.close("failed")
                except Exception:  # the first error is the one to report
                    pass
            raise

    def open(self, run, step, resumed):
        raise NotImplementedError

    def log(self, values, step):
        raise NotImplementedError

    def close(self, how):
        raise NotImplementedError


class TensorBoard(Tracker):
    name = "tensorboard"

    def open(self, run, step, resumed):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
        # a resumed run writes the steps after its checkpoint again: TensorBoard hides the earlier copies
        self.writer = SummaryWriter(str(run.run_dir.path / "tensorboard"), purge_step=step + 1 if resumed else None,
                                    flush_secs=10)
        if not resumed:
            params = hyperparameters(run.config)
            for summary in hparams(params, {}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + json.dumps(params, indent=1) + "\n```")

    def log(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, how):
        self.writer.close()


class MLflow(Tracker):
    name = "mlflow"
    STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def open(self, run, step, resumed):
        from mlflow import MlflowClient
        from mlflow.entities import Param
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run.run_dir.path / 'mlflow.db').resolve()}"
        self.client = client = MlflowClient(tracking_uri=uri)
        saved = _recall(run.run_dir, self.name)
        if resumed and saved.get("tracking_uri") == uri and saved.get("run_id"):
            self.run_id = saved["run_id"]
            client.update_run(self.run_id, status="RUNNING")
            return
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ftnb"
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:  # the default store keeps its (unused) artifact folder in the run folder too, not in the working dir
            where = None if os.environ.get("MLFLOW_TRACKING_URI") else \
                (run.run_dir.path / "mlartifacts").resolve().as_uri()
            experiment_id = client.create_experiment(experiment, artifact_location=where)
        self.run_id = client.create_run(experiment_id, run_name=run.run_dir.path.name,
                                        tags={"ftnb.run_dir": str(run.run_dir.path.resolve())}).info.run_id
        _remember(run.run_dir, self.name, {"tracking_uri": uri, "run_id": self.run_id})
        params = [Param(k, str(v)[:6000]) for k, v in hyperparameters(run.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, values, step):
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def close(self, how):
        self.client.set_terminated(self.run_id, status=self.STATUS.get(how, "FAILED"))


class WandB(Tracker):
    name = "wandb"

    def open(self, run, step, resumed):
        import wandb
        # offline unless asked otherwise: never a login prompt in the middle of a run
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        saved = _recall(run.run_dir, self.name) if resumed else {}
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "ftnb", name=run.run_dir.path.name,
                              dir=os.environ.get("WANDB_DIR") or str(run.run_dir.path), mode=mode,
                              config=run.config.to_dict(), id=saved.get("id"), resume="allow" if saved else None,
                              reinit="create_new", settings=wandb.Settings(console="off"))
        _remember(run.run_dir, self.name, {"id": self.run.id})

    def log(self, values, step):
        self.run.log(values, step=step)

    def close(self, how):
        self.run.finish(exit_code=1 if how == "failed" else 0)


class Trackio(Tracker):
    name = "trackio"

    def open(self, run, step, resumed):
        import trackio
        self.run = trackio.init(project="ftnb", name=run.run_dir.path.name, config=run.config.to_dict(),
                                resume="allow" if resumed else "never", embed=False, auto_log_cpu=False,
                                auto_log_gpu=False)

    def log(self, values, step):
        self.run.log(values, step=step)

    def close(self, how):
        self.run.finish()


CLASSES = {t.name: t for t in (TensorBoard, MLflow, WandB, Trackio)}  # config.TRACKERS names them
