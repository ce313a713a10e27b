"""The forgetting panel: retention with its confidence band, drift (KL) and perplexity over the steps, the questions
that flipped, base versus current answers, your own probe items, and the mitigation switches."""
import json
from pathlib import Path

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..core.forgetting import read_probe_step
from ..core.metrics import History
from ..core.paired import points, retention_text
from ..core.probe import ProbeSuite
from ..core.rundir import RunDir
from ..core.saved import best_step
from ._common import TEXT, LiveChart, Panel, esc, fill_column, full_width, message, styled
from .form import ConfigForm

MITIGATIONS = [  # (field, one line); each switch is a view of the form's field (ConfigForm.field_view)
    ("replay_fraction", "Replay: mix this share of general examples into training; keeps general skills, costs that "
                        "much more compute."),
    ("kl_beta", "KL-to-base: penalise drifting from the base model's answers on general prompts (0.05-0.5)."),
    ("l2sp_alpha", "L2-SP (full fine-tuning): pull every weight back toward its starting value."),
    ("min_retention", "Forgetting budget: the best checkpoint must keep at least this share of the baseline accuracy."),
    ("budget_action", "Below budget: 'mark' keeps training (best checkpoint stays within budget), 'stop' stops the "
                      "run."),
    ("lora_r", "LoRA rank: lower rank and fewer target layers forget less and learn less."),
    ("lora_targets", "LoRA targets: 'attention' forgets less than 'all-linear'."),
]


def headline(s):
    """One probe summary in a line: the verdict first, every figure with its interval (HTML; text escaped)."""
    parts = [f"<b>{esc(s.get('verdict') or 'no paired verdict')}</b>"]
    if s.get("change") is not None:
        parts.append(f"change in accuracy {esc(points(s['change'], s['change_low'], s['change_high']))} "
                     f"({s['acc']:.1%} against {s['acc_base']:.1%}, n={s['n']}: {len(s['right_to_wrong'])} right "
                     f"&rarr; wrong, {len(s['wrong_to_right'])} wrong &rarr; right)")
    if s.get("retention") is not None and s.get("retention_low") is not None:
        parts.append(f"retention {retention_text(s)}")
    if s.get("judgement"):
        parts.append(f"judgement: <b>{esc(s['judgement'])}</b>")
    parts.append(f"KL {s.get('kl') or 0:.4f}, perplexity {s.get('ppl') or 0:.2f} (base {s.get('ppl_base') or 0:.2f})"
                 + (f"; one probe pass {s['seconds']:.1f} s" if s.get("seconds") else ""))
    return "; ".join(parts)


class ForgettingPanel(Panel):
    """probe = ForgettingPanel(monitor) (live) or ForgettingPanel(run_dir=path); probe.summary -> last summary.

    The mitigation switches are views of `form`'s fields (else the monitor's form; else a ConfigForm of the panel's
    own, with TrainConfig's defaults: `probe.form.config`)."""

    def __init__(self, monitor=None, run_dir=None, form=None, items_path="ftnb-probe-items.jsonl", static=None):
        self.monitor = monitor
        form = form or (monitor.form if monitor is not None else None)
        self._own_form = None if form is not None else ConfigForm()
        self.form = form or self._own_form
        self.run_dir = RunDir(run_dir) if run_dir else None
        self.items_path = Path(items_path)
        self.suite = ProbeSuite.default()
        self.points, self.summary = [], None
        self._build(static)
        if monitor is not None:
            monitor.listeners.append(self._on_event)
            if monitor.run_dir is not None:
                self.run_dir = monitor.run_dir
        if self.run_dir is not None:
            self.reload()
        else:
            self.redraw()
        self._build_benchmark()

    # -- plain functions --
    def reload(self):
        """Redraw from the run directory (all probe lines and the latest per-item file)."""
        history = History()
        history.load(self.run_dir.metrics_path)  # reads probe lines without parsing a long training history
        self.points = history.probe
        self.redraw()

    def add_mc_item(self, question, choices, answer):
        """A "don't forget this" multiple-choice item, appended to the items file; the form's next run uses it."""
        probe = ProbeSuite()
        probe.add_mc(question, list(choices), int(answer))  # validates
        self._append_item({"question": question, "choices": list(choices), "answer": int(answer)})

    def add_question(self, question, expect):
        self._append_item({"question": question, "expect": [e.strip().lower() for e in expect if e.strip()]})

    def _append_item(self, item):
        with open(self.items_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
        self.form.fields["probe_items"].value = str(self.items_path)
        n = sum(1 for line in self.items_path.read_text(encoding="utf-8").splitlines() if line.strip())
        self.items_msg.value = message("ok", f"{n} items of your own in {self.items_path} (used by the next run)")

    def set_mitigation(self, name, value):
        """Write a mitigation setting into the form (the form validates it and holds the config)."""
        self.form.fields[name].value = value

    # -- live --
    def _on_event(self, ev):
        if ev.kind == "start":
            self.run_dir, self.points = ev.run.run_dir, []
        elif ev.kind == "probe":
            self.points.append((ev.step, ev.data["probe"]))
            self.redraw()

    def redraw(self):
        if not self.points:
            self.headline.value = message("info", "no probe yet: it runs at step 0, at each evaluation and at the end")
            return
        steps = np.array([s for s, _ in self.points])
        get = lambda k, scale=1: np.array([np.nan if p.get(k) is None else p[k] * scale for _, p in self.points],
                                          float)  # noqa: E731
        self.chart.update({0: {"x": steps, "y": get("change_high", 100)}, 1: {"x": steps, "y": get("change_low", 100)},
                           2: {"x": steps, "y": get("change", 100)}, 3: {"x": steps, "y": np.zeros(len(steps))},
                           4: {"x": steps, "y": get("kl")}, 5: {"x": steps, "y": get("ppl")}}, force=True)
        self.summary = s = self.points[-1][1]
        self.headline.value = f"<b>step {esc(self.points[-1][0])}</b>: " + headline(s) + self._best_text()
        self._draw_categories(s)
        self._draw_details()

    def _draw_categories(self, s):
        cats = s.get("categories") or {}
        names = list(cats)
        change = np.array([cats[c]["change"] * 100 for c in names], float)
        self.categories_chart.update({0: {"x": names, "y": change,
                                          "error_y": {"type": "data", "symmetric": False,
                                                      "array": [(cats[c]["change_high"] - cats[c]["change"]) * 100
                                                                for c in names],
                                                      "arrayminus": [(cats[c]["change"] - cats[c]["change_low"]) * 100
                                                                     for c in names]},
                                          "text": [f"n={cats[c]['n']}" for c in names]}}, force=True)

    def _best_text(self):
        """Which checkpoint the forgetting budget chose so far (load it with checkpoint="best")."""
        live = self.monitor is not None and self.monitor.run is not None
        best = self.monitor.run.best_checkpoint if live else (best_step(self.run_dir) if self.run_dir else None)
        if best is None:
            return "; no checkpoint within the forgetting budget yet"
        return f"; best checkpoint within the budget: step {esc(best)}"

    def _draw_details(self):
        if self.run_dir is None:
            return
        last, first = read_probe_step(self.run_dir, self.points[-1][0]), read_probe_step(self.run_dir, 0)
        by_id = {it["id"]: it for it in self.suite.mc}
        s = self.summary
        flips = []
        for title, ids in (("right &rarr; wrong", s.get("right_to_wrong", [])), ("wrong &rarr; right",
                                                                                s.get("wrong_to_right", []))):
            items = "".join(f"<li>{esc(by_id[i]['question']) if i in by_id else esc(i)}</li>" for i in ids[:30])
            flips.append(f"<b>{title}: {len(ids)}</b><ul style='max-height:140px;overflow:auto'>{items}</ul>")
        self.flips.value = "".join(flips)
        if last and first and last.get("gen") and first.get("gen"):
            rows = "".join(f"<tr><td>{esc(a['question'])}</td><td>{esc(a['answer'])}</td><td>{esc(b['answer'])}</td>"
                           f"<td>{'yes' if b['ok'] else 'no'}</td></tr>" for a, b in zip(first["gen"], last["gen"]))
            self.answers.value = ("<table style='font-size:0.88em'><tr><th>question</th><th>base answer</th>"
                                  f"<th>now</th><th>right</th></tr>{rows}</table>")

    def _build(self, static):
        fig = make_subplots(rows=1, cols=3, subplot_titles=("change in accuracy, points<br>(paired 95% CI)",
                                                           "KL(base || current)", "general-text perplexity"),
                            horizontal_spacing=0.08)
        fig.add_scatter(x=[], y=[], mode="lines", line=dict(width=0), showlegend=False, row=1, col=1)
        fig.add_scatter(x=[], y=[], mode="lines", line=dict(width=0), fill="tonexty", fillcolor="rgba(31,119,180,0.2)",
                        name="95% CI", row=1, col=1)
        fig.add_scatter(x=[], y=[], mode="lines+markers", name="change", row=1, col=1)
        fig.add_scatter(x=[], y=[], mode="lines", line=dict(dash="dash"), name="no change", row=1, col=1)
        fig.add_scatter(x=[], y=[], mode="lines+markers", name="KL", showlegend=False, row=1, col=2)
        fig.add_scatter(x=[], y=[], mode="lines+markers", name="perplexity", showlegend=False, row=1, col=3)
        fig.update_xaxes(title_text="step")
        self.chart = LiveChart(styled(fig, height=320, legend_below=True), static=static)
        cats = go.Figure(go.Bar(x=[], y=[], name="change by category", textposition="outside", cliponaxis=False))
        cats.update_layout(title="change in accuracy by category, points (paired 95% CI), last probe",
                           title_font_size=13)
        self.categories_chart = LiveChart(styled(cats, height=260), static=static)
        self.headline, self.flips, self.answers = w.HTML(), w.HTML(), w.HTML()
        self.mc_question = w.Text(description="question", layout=fill_column())
        self.mc_choices = w.Textarea(description="choices", placeholder="one per line", layout=fill_column())
        self.mc_answer = w.BoundedIntText(value=1, min=1, max=10, description="right one #",
                                          layout=w.Layout(width="220px", max_width="100%"))
        self.add_mc_button = w.Button(description="Add multiple choice", icon="plus", layout=w.Layout(width="auto"))
        self.add_mc_button.on_click(lambda _: self._guard(self.add_mc_item, self.mc_question.value,
                                                          [c for c in self.mc_choices.value.splitlines() if c.strip()],
                                                          self.mc_answer.value - 1))
        self.q_text = w.Text(description="question", layout=fill_column())
        self.q_expect = w.Text(description="expect", placeholder="words a right answer contains, comma-separated",
                               layout=fill_column())
        self.add_q_button = w.Button(description="Add question", icon="plus", layout=w.Layout(width="auto"))
        self.add_q_button.on_click(lambda _: self._guard(self.add_question, self.q_text.value,
                                                         self.q_expect.value.split(",")))
        self.items_msg = w.HTML()
        def column():  # the two item forms side by side, stacked when the panel is narrow
            return w.Layout(flex="1 1 320px", min_width="0", max_width="640px", margin="0 12px 0 0")
        rows = []
        self.views = {name: self.form.field_view(name, width="360px", description_width="140px")
                      for name, _ in MITIGATIONS}
        self.switches = {name: view.widget for name, view in self.views.items()}
        for name, line in MITIGATIONS:
            view = self.views[name]
            view.widget.layout.max_width, view.widget.layout.flex = "100%", "0 0 auto"  # keeps its width; help wraps
            rows.append(w.VBox([w.HBox([view.widget,
                                        w.HTML(f"<span class='ftnb-help' style='color:{TEXT['help']};font-size:0.9em'>"
                                               f"{esc(line)}</span>", layout=w.Layout(flex="1 1 0", min_width="0"))],
                                       layout=w.Layout(flex_flow="row wrap", width="100%")), view.error]))
        self.root = w.VBox([self.headline, self.chart.widget, self.categories_chart.widget, w.HBox([self.flips]), w.HTML("<b>Base versus now</b>"),
                            self.answers, w.HTML("<b>Your own probe items</b>"),
                            w.HBox([w.VBox([self.mc_question, self.mc_choices, self.mc_answer, self.add_mc_button],
                                           layout=column()),
                                    w.VBox([self.q_text, self.q_expect, self.add_q_button], layout=column())],
                                   layout=w.Layout(width="100%", flex_flow="row wrap")), self.items_msg,
                            w.HTML("<b>Mitigations</b> (settings of the next run)"), w.VBox(rows, layout=full_width())],
                           layout=full_width())

    def _guard(self, fn, *args):
        try:
            fn(*args)
        except Exception as e:
            self.items_msg.value = message("error", str(e))

    # -- check on a benchmark (ftnb.evaluate: lm-evaluation-harness, pip install 'ftnb[eval]') --
    def _build_benchmark(self):
        self.bench_tasks = w.Text(value="arc_easy", description="tasks",
                                  layout=w.Layout(width="420px", min_width="0", flex="0 1 420px"),
                                  placeholder="arc_easy,hellaswag, a task .yaml, a {question, choices, answer} .jsonl")
        self.bench_limit = w.IntText(value=100, description="limit", layout=w.Layout(width="160px"),
                                     tooltip="the first N documents of each task, a quick look (0: all of them)")
        self.bench_button = w.Button(description="Check on a benchmark", icon="check", layout=w.Layout(width="auto"))
        self.bench_button.on_click(lambda _: self._start_benchmark())
        self.bench_out, self._bench_thread = w.HTML(), None
        self.root.children += (w.HTML("<b>Check on a benchmark</b> (lm-evaluation-harness, base and tuned)"),
                               w.HBox([self.bench_tasks, self.bench_limit, self.bench_button]), self.bench_out)
        self.show_benchmarks()

    def check_benchmark(self, tasks, limit=None, checkpoint=None, **kw):
        """Score this run and its base on lm-eval tasks (ftnb.evaluate.benchmark: stored in the run folder), show
        every stored score and return this check's {task: record}."""
        from ..evaluate import benchmark
        if self.run_dir is None:
            raise ValueError("no run yet: train one, or open a run folder (run_dir=...)")
        res = benchmark(self.run_dir.path, tasks, limit=limit, checkpoint=checkpoint, **kw)
        self.show_benchmarks()
        return res

    def show_benchmarks(self):
        """The run folder's stored benchmark scores as a table: base, tuned, difference and flips per metric."""
        from ..evaluate.results import read_all
        recs, skipped = read_all(self.run_dir.path) if self.run_dir is not None else ([], [])
        pm = lambda v, e: "-" if v is None else f"{v:.3f}" + (f" &plusmn; {e:.3f}" if e is not None else "")  # noqa: E731
        rows = []
        for r in recs:
            weights = "final" if r["checkpoint"] == "final" else f"step {r['checkpoint']}"
            for name, m in r["metrics"].items():
                p = r["paired"].get(name)
                flips = f"{p['lost']} / {p['gained']}" if p else "-"
                diff = "-" if m["difference"] is None else f"{m['difference']:+.3f}"
                if p and p["verdict"] and p["difference_low"] is not None:  # the paired view: the probe's verdict
                    diff = (f"<b>{esc(p['verdict'])}</b> "
                            f"({esc(points(p['difference'], p['difference_low'], p['difference_high']))})")
                rows.append(f"<tr><td>{esc(r['task'])}</td><td>{esc(weights)}</td><td>{esc(r['n'])}</td>"
                            f"<td>{esc(name)}</td><td>{pm(m['base'], m['base_stderr'])}</td>"
                            f"<td>{pm(m['tuned'], m['tuned_stderr'])}</td><td>{diff}</td>"
                            f"<td>{flips}</td></tr>")
        table = ("<table style='font-size:0.88em'><tr><th>task</th><th>weights</th><th>n</th><th>metric</th>"
                 "<th>base</th><th>tuned</th><th>difference (paired)</th><th>right &rarr; wrong / wrong &rarr; right</th></tr>"
                 + "".join(rows) + "</table>") if rows else ""
        self.bench_out.value = table + "".join(message("warn", why) for why in skipped)

    def _start_benchmark(self):
        """The button: the check runs in a thread (minutes on a CPU); widgets change only by trait assignment."""
        import threading
        if self._bench_thread is not None and self._bench_thread.is_alive():
            return
        self.bench_button.disabled = True
        self.bench_out.value = message("info", "scoring the tuned model and its base (lm-eval's progress in the log)")

        def work():
            try:
                self.check_benchmark(self.bench_tasks.value, self.bench_limit.value or None)
            except Exception as e:
                self.bench_out.value = message("error", str(e))
            finally:
                self.bench_button.disabled = False
        self._bench_thread = threading.Thread(target=work, daemon=True, name="ftnb-benchmark")
        self._bench_thread.start()

    def close(self):
        if self.monitor is not None and self._on_event in self.monitor.listeners:
            self.monitor.listeners.remove(self._on_event)
        for view in self.views.values():
            view.close()
        if self._own_form is not None:
            self._own_form.close()
        super().close()
