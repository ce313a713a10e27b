"""What every panel shares: escaping, the panel base class, live charts with a static fallback, throttling."""
import html
import os
import sys
import time

import ipywidgets as w
import plotly.graph_objects as go


def esc(text):
    """User text as HTML text: examples, answers and run names can hold <script> or {{ }}."""
    return html.escape("" if text is None else str(text), quote=True)


def plural(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def static_charts():
    """FigureWidget has open rendering bugs on Colab: there, charts are static figures re-drawn in an Output."""
    return os.environ.get("FTNB_STATIC_CHARTS") == "1" or "google.colab" in sys.modules


PANEL_CLASS = "ftnb-panel"  # the lab extension's panels.css styles charts and tables inside it with the theme's colours
# One colour per run or series, the same in every chart and legend (plotly's default sequence, readable on light and
# dark backgrounds).
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
# Text colours that follow JupyterLab's theme through its CSS variables and fall back to ones readable on a light
# page where those are not defined (Colab, VS Code, a static HTML export).
TEXT = {"error": "var(--jp-error-color1, #b00020)", "warn": "var(--jp-warn-color0, #8a5a00)",
        "ok": "var(--jp-success-color0, #1b5e20)", "info": "var(--jp-ui-font-color1, #333)",
        "help": "var(--jp-ui-font-color2, #555)"}
SELECTED_ROW = "rgba(33, 150, 243, 0.22)"  # translucent: readable under light and dark text alike


def color(i):
    return COLORS[i % len(COLORS)]


def fill_column(**kw):
    """An input that stretches across its column (inside its margins: width 100% would overflow by them)."""
    return w.Layout(width="auto", align_self="stretch", min_width="0", **kw)


def full_width(**kw):
    """A widget that takes its row's width and shrinks with it rather than overflowing."""
    return w.Layout(width="100%", min_width="0", **kw)


def styled(fig, height=300, legend_below=False):
    """Panel look for a figure: transparent backgrounds (the page's shows through, light or dark), grid and text in
    colours that read on both, margins that keep titles off the axes, and no fixed width (it fills its container)."""
    grid = "rgba(128, 128, 128, 0.3)"
    fig.update_layout(paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", autosize=True, width=None,
                      height=height, colorway=list(COLORS), font=dict(size=12),
                      margin=dict(l=55, r=20, t=50, b=80 if legend_below else 45),
                      modebar=dict(bgcolor="rgba(0,0,0,0)", color="rgba(128,128,128,0.8)"),
                      legend=dict(bgcolor="rgba(0,0,0,0)",
                                  **(dict(orientation="h", x=0, xanchor="left", y=-0.3, yanchor="top")
                                     if legend_below else {})))
    fig.update_xaxes(gridcolor=grid, zerolinecolor=grid, linecolor=grid, automargin=True, title_standoff=6)
    fig.update_yaxes(gridcolor=grid, zerolinecolor=grid, linecolor=grid, automargin=True)
    fig.update_annotations(font_size=13)  # subplot titles
    return fig


class Panel(w.VBox):
    """A panel owns a root widget and lets go of everything on close(). It is itself a box around that root, so it
    shows itself in a cell and fits inside other widgets: `ipywidgets.VBox([builder, monitor])`.

    Subclasses stay plain classes: their __init__ builds the widgets and assigns `self.root`, which is when the box
    comes to life (ipywidgets' own constructor runs then, with the root as the one child)."""

    @property
    def root(self):
        return self.__dict__.get("_root")

    @root.setter
    def root(self, widget):
        self.__dict__["_root"] = widget
        if self.__dict__.get("_panel_box"):
            self.children = (widget,)
        else:
            self.__dict__["_panel_box"] = True
            w.VBox.__init__(self, children=(widget,), layout=w.Layout(width="100%", min_width="0"))
            self.add_class(PANEL_CLASS)

    def close(self):
        for child in _walk(self.root) if self.root is not None else ():
            child.close()
        w.VBox.close(self)


class class_or_widget_method:
    """A class method under a name ipywidgets also uses for a method of every widget (`open`, which opens the
    widget's connection to the browser): `TrainingMonitor.open(path)` calls the class method, `monitor.open()`
    the widget's own."""

    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, cls):
        if obj is None:
            return self.fn.__get__(cls)
        return getattr(w.VBox, self.fn.__name__).__get__(obj)


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()) or ():
        yield from _walk(child)


def message(kind, text):
    """An inline status line; `text` is escaped."""
    return f'<div class="ftnb-status ftnb-status-{kind}" style="color:{TEXT[kind]};font-size:0.92em">{esc(text)}</div>'


class Throttle:
    """ready() is True at most once per `interval` seconds."""

    def __init__(self, interval):
        self.interval, self.last = interval, 0.0

    def ready(self):
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False


def figure_bundle(fig):
    return {"application/vnd.plotly.v1+json": fig.to_plotly_json(),
            "text/html": fig.to_html(include_plotlyjs="cdn", full_html=False), "text/plain": "<plotly figure>"}


class LiveChart:
    """A plotly chart updated in place: a FigureWidget (updates batched), or on Colab a static figure re-drawn in an
    Output at a lower rate. Safe to update from a worker thread: both paths only assign traits."""

    def __init__(self, fig, static=None, static_interval=2.0):
        self.static = static_charts() if static is None else static
        self.throttle = Throttle(static_interval)
        if self.static:
            self.fig = go.Figure(fig)
            self.widget = w.Output(layout=full_width())
            self._draw()
        else:
            self.fig = go.FigureWidget(fig)
            # autosize, responsive and panels.css: its width follows its container's and the window's
            self.fig._config = {**self.fig._config, "responsive": True, "displaylogo": False}
            self.widget = self.fig
        self.widget.add_class("ftnb-chart")

    @property
    def data(self):
        return self.fig.data

    def update(self, traces, force=False, layout=None):
        """traces: {trace index: {property: value}} applied together (x/y as numpy arrays)."""
        if self.static:
            for i, props in traces.items():
                self.fig.data[i].update(props)
            if layout:
                self.fig.update_layout(layout)
            if force or self.throttle.ready():
                self._draw()
            return
        with self.fig.batch_update():  # never hold_sync(): it silently drops plotly updates
            for i, props in traces.items():
                self.fig.data[i].update(props)
            if layout:
                self.fig.update_layout(layout)

    def _draw(self):
        self.widget.outputs = ({"output_type": "display_data", "data": figure_bundle(self.fig), "metadata": {}},)

    def snapshot(self):
        """A static copy of the figure (for a cell output that survives reopening the notebook)."""
        return go.Figure(self.fig)
