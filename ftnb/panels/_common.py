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
            w.VBox.__init__(self, children=(widget,))

    def close(self):
        for child in _walk(self.root):
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
    color = {"error": "#b00020", "warn": "#8a5a00", "ok": "#1b5e20", "info": "#444"}[kind]
    return f'<div style="color:{color};font-size:0.92em">{esc(text)}</div>'


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
            self.widget = w.Output()
            self._draw()
        else:
            self.fig = go.FigureWidget(fig)
            self.widget = self.fig

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
