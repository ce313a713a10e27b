"""Run comparison: pick runs from a folder, overlay their curves, see how their configs differ, and place them on the
learning-versus-forgetting plane (validation loss against retention) with the Pareto front highlighted."""
import ipywidgets as w
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..core.comparison import compare_runs
from ..core.rundir import list_runs
from ._common import LiveChart, Panel, color, esc, full_width, message, plural, styled


def trade_off_figure(result):
    """Validation loss (x) against retention (y), one point per run in the run's colour (as in the curves); the
    Pareto front joined by a line. Labels may reach past the plot area (not clipped) and the margins make room."""
    fig = go.Figure()
    pts = [(i, r["name"], p, r["probe"][-1][1]) for i, (r, p) in enumerate(zip(result["runs"], result["points"]))
           if p is not None]
    bound = lambda s, k: s.get(k) if s.get(k) is not None else s["retention"]  # noqa: E731
    fig.add_scatter(x=[p[0] for _, _, p, _ in pts], y=[p[1] for _, _, p, _ in pts], text=[n for _, n, _, _ in pts],
                    mode="markers+text", textposition="top center", name="runs", cliponaxis=False,
                    marker=dict(size=10, color=[color(i) for i, _, _, _ in pts]), showlegend=False,
                    error_y=dict(type="data", symmetric=False, color="rgba(128,128,128,0.7)",  # paired 95% interval
                                 array=[bound(s, "retention_high") - p[1] for _, _, p, s in pts],
                                 arrayminus=[p[1] - bound(s, "retention_low") for _, _, p, s in pts]))
    front = [result["points"][i] for i in result["pareto"]]
    fig.add_scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines+markers", name="Pareto front",
                    marker=dict(size=12, symbol="star-open", color="rgba(128,128,128,0.9)"),
                    line=dict(color="rgba(128,128,128,0.9)", dash="dot"), cliponaxis=False)
    fig.update_layout(xaxis_title="task validation loss (lower learns more)",
                      yaxis_title="retention, paired 95% CI<br>(higher forgets less)")
    styled(fig, height=380)
    fig.update_layout(margin=dict(t=60, r=60))  # room for the labels above and beside the outer points
    return fig


class RunComparison(Panel):
    """cmp = RunComparison("runs"); cmp.select([...paths]); cmp.result -> compare_runs(...) data."""

    def __init__(self, folder="runs", static=None):
        self.result = None
        self.folder = w.Text(value=str(folder), description="folder")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.picker = w.SelectMultiple(options=[], rows=6, description="runs", layout=full_width(max_width="720px"))
        self.picker.observe(lambda ch: self.select(list(ch["new"])), names="value")
        self.static, self.curves, self.scatter = static, None, None  # charts are built when runs are first picked
        self.curves_box, self.scatter_box = w.VBox(), w.VBox()  # columns: a chart takes their width
        self.diff = w.HTML()
        self.msg = w.HTML()
        self.root = w.VBox([w.HBox([self.folder, self.refresh_button]), self.picker, self.msg, self.curves_box,
                            w.HTML("<b>Settings that differ</b>"), self.diff,
                            w.HTML("<b>Learning versus forgetting</b>"), self.scatter_box], layout=full_width())
        for box in (self.curves_box, self.scatter_box):
            box.layout = full_width()
        self.refresh()

    def refresh(self):
        runs = list_runs(self.folder.value)
        self.picker.options = [(f"{r['name']} ({r['state']})", r["path"]) for r in runs]
        self.msg.value = message("info", f"{plural(len(runs), 'run')} in {self.folder.value}") if runs else \
            message("warn", f"no runs in {self.folder.value}")
        return runs

    def _charts(self):
        if self.curves is None:
            fig = make_subplots(rows=1, cols=2, subplot_titles=("train loss", "validation loss"),
                                horizontal_spacing=0.1)
            fig.update_xaxes(title_text="step")
            self.curves = LiveChart(styled(fig, height=340, legend_below=True), static=self.static)
            self.scatter = LiveChart(trade_off_figure({"runs": [], "points": [], "pareto": []}), static=self.static)
            self.curves_box.children, self.scatter_box.children = [self.curves.widget], [self.scatter.widget]

    def select(self, paths):
        self.result = res = compare_runs(paths)
        self._charts()
        fig = self.curves.fig
        n = len(res["runs"])
        with_traces = len(fig.data)
        if with_traces != 2 * n:  # the number of runs changed: rebuild the traces (not a live update)
            fig.data = []
            for i, r in enumerate(res["runs"]):  # one colour per run, in both charts, the legend and the scatter
                fig.add_scatter(x=[], y=[], mode="lines", name=r["name"], legendgroup=str(i), row=1, col=1,
                                line=dict(color=color(i)))
                fig.add_scatter(x=[], y=[], mode="lines+markers", name=r["name"], legendgroup=str(i),
                                showlegend=False, row=1, col=2, line=dict(color=color(i)),
                                marker=dict(color=color(i)))
        self.curves.update({2 * i + k: {"x": np.asarray(r[part][0]), "y": np.asarray(r[part][1]), "name": r["name"]}
                            for i, r in enumerate(res["runs"]) for k, part in enumerate(("train", "val"))}, force=True)
        new = trade_off_figure(res)
        self.scatter.update({i: new.data[i].to_plotly_json() for i in range(2)}, force=True)
        names = [r["name"] for r in res["runs"]]
        if res["config_diff"]:
            head = "".join(f"<th>{esc(n)}</th>" for n in names)
            body = "".join(f"<tr><td><code>{esc(k)}</code></td>{''.join(f'<td>{esc(v)}</td>' for v in vals)}</tr>"
                           for k, vals in res["config_diff"].items() if k not in ("run_name",))
            self.diff.value = f"<table style='font-size:0.88em'><tr><th>setting</th>{head}</tr>{body}</table>"
        else:
            self.diff.value = message("info", "same settings" if n > 1 else "pick two or more runs")
        return res
