"""The panels in JupyterLab's light and dark themes, at 1000 and 1600 px (issue 17), measured in the browser:
the charts' backgrounds are the theme's and their text reads on it, nothing is wider than its panel, a run has one
colour in every chart and legend of the comparison, and Start, Stop and Resume are enabled only when they do
something. The run folders are written here (no training), so the whole module takes about a minute.

Screenshots of the monitor go to panels-light.png and panels-dark.png (docs/screenshots with FTNB_SCREENSHOTS=1).
The lab and the page come from conftest.py; the kernels inherit FTNB_DEFAULT_MODEL=tiny from the lab server.
"""
import json
import math

import pytest
from labtools import SHOTS, TINY_KERNELS, wait_for
from test_panels_ui import (assert_no_browser_errors, button, cells, open_notebook, output_of, run_all,
                            widget_tab, write_notebook)

LAB_ENV = TINY_KERNELS  # the lab's kernels train the tiny model
pytestmark = pytest.mark.browser

NOTEBOOK = ("import pathlib\nimport ftnb\nfrom ftnb.panels import RunComparison, TrainingMonitor",
            'studio = ftnb.Studio(runs_dir="runs")\nstudio',
            'TrainingMonitor.open("runs/lr-3e-4")',
            'c = RunComparison("runs")\nc.select(sorted(str(p) for p in pathlib.Path("runs").iterdir()))\nc')
STUDIO, MONITOR, COMPARE = 1, 2, 3
RUNS = {"lr-3e-4": (0.55, 0.97), "lr-1e-3": (0.42, 0.9), "lr-3e-3-long-run-name": (0.35, 0.78)}

# Measurements of one panel in the page: boxes, colours and the background that shows behind its charts
MEASURE = """panel => {
  const box = e => {
    const b = e.getBoundingClientRect();
    return {x: b.left, y: b.top, r: b.right, b: b.bottom, w: b.width};
  };
  const shown = e => { const b = e.getBoundingClientRect(); return b.width > 0 && b.height > 0; };
  const all = sel => [...panel.querySelectorAll(sel)].filter(shown);
  const behind = e => {  // the first opaque background at or above e: what the eye sees behind it
    for (; e; e = e.parentElement) {
      const m = getComputedStyle(e).backgroundColor.match(/[\\d.]+/g);
      if (m && (m.length < 4 || +m[3] > 0.5)) return getComputedStyle(e).backgroundColor;
    }
    return 'rgb(255, 255, 255)';
  };
  const chart = all('.js-plotly-plot')[0];
  const tick = chart && chart.querySelector('.xtick text');
  return {
    panel: box(panel),
    charts: all('.js-plotly-plot').map(box),
    legends: all('.js-plotly-plot .legend').map(box),
    inputs: all('input, textarea, select, .widget-slider .slider-container').map(box),
    sliders: all('.widget-hslider .slider-container').map(box),
    outside: all('input, textarea, select').filter(e => {  // inputs wider than the box they are in
      const inner = e.getBoundingClientRect(), outer = e.parentElement.closest('.widget-box').getBoundingClientRect();
      return inner.left < outer.left - 1 || inner.right > outer.right + 1;
    }).map(e => e.outerHTML.slice(0, 80)),
    svgBackground: chart ? getComputedStyle(chart.querySelector('.main-svg')).backgroundColor : null,
    chartBehind: chart ? behind(chart) : null,
    tickFill: tick ? getComputedStyle(tick).fill : null,
    status: all('.ftnb-status, .ftnb-help').map(e => [getComputedStyle(e).color, behind(e)]),
    crowded: all('.js-plotly-plot').flatMap(gd => {  // titles, axis titles, tick labels and legends that overlap
      const parts = [...gd.querySelectorAll('.g-gtitle text, .annotation-text, .g-xtitle text, .g-ytitle text, '
                                            + '.xtick text, .ytick text, .legend .bg')]
        .map(e => [e.textContent || 'legend', e.getBoundingClientRect()]).filter(([, b]) => b.width > 0);
      const hit = (a, b) => a.left < b.right - 1 && b.left < a.right - 1
                            && a.top < b.bottom - 1 && b.top < a.bottom - 1;
      const ticks = t => /^[-\\d.,\\u2212μmk ]+$/.test(t);
      return parts.flatMap(([t, a], i) => parts.slice(i + 1).filter(([u, b]) => !(ticks(t) && ticks(u)) && hit(a, b))
                                                     .map(([u]) => `${t} / ${u}`));
    }),
  };
}"""

# (legend entry, its line colour) and, per subplot, the colour of each drawn line, of the comparison's curves
LINE_COLOURS = """gd => ({
  legend: [...gd.querySelectorAll('.legend .traces')].map(t => [t.querySelector('.legendtext').textContent,
                                                            getComputedStyle(t.querySelector('path')).stroke]),
  subplots: ['xy', 'x2y2'].map(s => [...gd.querySelectorAll(`.subplot.${s} .scatterlayer .trace path.js-line`)]
                                       .map(p => getComputedStyle(p).stroke)),
})"""


def rgba(css):
    v = [float(x) for x in css.replace("rgba", "").replace("rgb", "").strip("()").split(",")]
    return v + [1.0] * (4 - len(v))


def luminance(css, over="rgb(255, 255, 255)"):
    """WCAG relative luminance of a colour (translucent: laid over `over`)."""
    r, g, b, a = rgba(css)
    base = rgba(over)
    lin = [((c * a + o * (1 - a)) / 255) for c, o in zip((r, g, b), base[:3])]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in lin]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg, bg):
    hi, lo = sorted((luminance(fg, bg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def write_run(path, lr, val_end, retention, steps=60):
    """A finished run folder, as training leaves it (curves, evaluations with samples, probes), without weights."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": "tiny", "run_name": path.name, "learning_rate": lr,
                                                  "epochs": 3}))
    (path / "status.json").write_text(json.dumps({"state": "finished", "step": steps, "total_steps": steps}))
    rows = []
    for s in range(1, steps + 1):
        loss = val_end + 1.6 * math.exp(-s / (8 + 4000 * lr)) + 0.05 * math.sin(s * 1.7)
        rows.append({"step": s, "loss": loss, "lr": lr * min(1, s / 6) * (1 - s / (steps + 1)), "grad_norm":
                     1.5 * math.exp(-s / 30) + 0.2 + 0.1 * math.cos(s), "elapsed_s": s * 0.4, "train_s": s * 0.4,
                     "tokens_per_s": 5200.0})
        if s % 15 == 0:
            rows.append({"step": s, "val_loss": val_end + 1.6 * math.exp(-s / (10 + 4000 * lr)) + 0.05, "samples": [
                {"prompt": "When do you close on Sunday?", "answer": "On Sundays we close at 9pm."}]})
        if s % 20 == 0 or s == 1:
            ret = 1 - (1 - retention) * s / steps
            rows.append({"step": s, "probe": {"acc": 0.6 * ret, "acc_base": 0.6, "acc_low": 0.5 * ret,
                                              "acc_high": 0.7 * ret, "retention": ret, "retention_low": ret - 0.06,
                                              "retention_high": min(1.0, ret + 0.05), "kl": 0.02 * s / steps,
                                              "ppl": 12 + 3 * s / steps, "ppl_base": 12.0}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("look") / "work"
    for i, (name, (val_end, retention)) in enumerate(RUNS.items()):
        write_run(root / "runs" / name, (3e-4, 1e-3, 3e-3)[i], val_end, retention)
    write_notebook(root / "look.ipynb", *NOTEBOOK)
    return root


@pytest.fixture(scope="module")
def viewport():
    return {"width": 1000, "height": 900}


@pytest.fixture(scope="module")
def notebook(page, root):
    open_notebook(page, "look.ipynb")
    run_all(page)
    output_of(page, COMPARE).locator(".js-plotly-plot .legend").first.wait_for(timeout=120000)
    output_of(page, MONITOR).locator(".js-plotly-plot .scatterlayer path.js-line").first.wait_for()
    widget_tab(output_of(page, STUDIO), "Train").wait_for()
    return page


def measure(page, i):
    panel = output_of(page, i).locator(".ftnb-panel").first
    panel.scroll_into_view_if_needed()
    return panel.evaluate(MEASURE)


def assert_fits(m, what):
    """Every chart, legend and input lies inside its panel; the panel inside the notebook."""
    p = m["panel"]
    for kind in ("charts", "legends", "inputs"):
        for b in m[kind]:
            assert p["x"] - 1 <= b["x"] and b["r"] <= p["r"] + 1, f"{what}: a {kind[:-1]} {b} leaves the panel {p}"
    assert m["outside"] == [], f"{what}: inputs overflow their box: {m['outside']}"
    assert m["crowded"] == [], f"{what}: labels overlap: {m['crowded']}"
    for s in m["sliders"]:
        assert s["w"] >= 100, f"{what}: a slider collapsed to {s['w']:.0f} px"


def assert_theme(m, dark, what):
    assert m["svgBackground"] == "rgba(0, 0, 0, 0)", what  # the figure lets the page show through
    behind = luminance(m["chartBehind"])
    assert (behind < 0.05) if dark else (behind > 0.9), f"{what}: the chart's background is {m['chartBehind']}"
    assert contrast(m["tickFill"], m["chartBehind"]) >= 7, f"{what}: axis text {m['tickFill']} on {m['chartBehind']}"
    for fg, bg in m["status"]:
        assert contrast(fg, bg) >= 4.5, f"{what}: status or help text {fg} on {bg}"


def set_theme(page, name):
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
    page.locator(".lm-Menu-itemLabel", has_text=name).first.click()
    light = "true" if "Light" in name else "false"
    wait_for(lambda: page.evaluate("document.body.dataset.jpThemeLight") == light, 30, f"the {name} theme")
    page.wait_for_timeout(500)


def shoot(page, i, name):
    out = output_of(page, i)
    out.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    box, view = out.bounding_box(), page.locator(".jp-NotebookPanel:visible .jp-WindowedPanel-outer").bounding_box()
    top, bottom = max(box["y"], view["y"]), min(box["y"] + box["height"], view["y"] + view["height"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"panels-{name}.png"),
                    clip={"x": box["x"], "y": top, "width": box["width"], "height": bottom - top})


def test_buttons_are_enabled_only_when_they_do_something(notebook):
    page = notebook
    studio = output_of(page, STUDIO)
    widget_tab(studio, "Train").click()
    assert button(studio, "Start").is_enabled()
    assert button(studio, "Stop").is_disabled() and button(studio, "Resume").is_disabled()  # no run yet
    widget_tab(studio, "Settings").click()
    assert studio.locator("select:visible").first.input_value() == "quick-cpu-demo"  # the preset applied
    widget_tab(studio, "Data").click()
    assert studio.get_by_label("messages", exact=True).input_value() == "messages"  # the column detected
    monitor = output_of(page, MONITOR)  # opened on a finished run: nothing to start, stop or resume
    assert button(monitor, "Start").count() == 0
    assert button(monitor, "Stop").is_disabled() and button(monitor, "Resume").is_disabled()
    widget_tab(studio, "Forgetting").click()
    labels = studio.locator(".widget-label:visible").all_inner_texts()
    assert "kl beta" in labels and "kl_beta" not in labels  # as the Settings tab names it


def test_light_then_dark_at_1000_and_1600_px(notebook):
    page = notebook
    widths = {}
    for width, theme in ((1000, "JupyterLab Light"), (1600, "JupyterLab Light"), (1600, "JupyterLab Dark"),
                         (1000, "JupyterLab Dark")):
        page.set_viewport_size({"width": width, "height": 900})
        if page.evaluate("document.body.dataset.jpThemeLight") != ("true" if "Light" in theme else "false"):
            set_theme(page, theme)
        page.wait_for_timeout(600)  # plotly relayouts after the window's resize
        dark = "Dark" in theme
        for tab in ("Data", "Settings", "Train", "Export", "Chat"):  # no chart (yet): they only have to fit
            widget_tab(output_of(page, STUDIO), tab).click()
            assert_fits(measure(page, STUDIO), f"{tab} tab, {theme}, {width} px")
        for i, name in ((MONITOR, "monitor"), (COMPARE, "comparison"), (STUDIO, "forgetting tab")):
            if i == STUDIO:
                widget_tab(output_of(page, STUDIO), "Forgetting").click()
            m = measure(page, i)
            what = f"{name}, {theme}, {width} px"
            assert_fits(m, what)
            assert_theme(m, dark, what)
            if i == MONITOR:
                print(f"{what}: page behind the chart {m['chartBehind']}, axis text {m['tickFill']}, "
                      f"chart {m['charts'][0]['w']:.0f} of {m['panel']['w']:.0f} px")
            widths[(i, width, theme)] = m["charts"][0]["w"]
            assert m["charts"][0]["w"] >= 0.9 * m["panel"]["w"], f"{what}: the chart does not fill the panel"
        if (width, theme) == (1600, "JupyterLab Light"):
            shoot(page, MONITOR, "light")
        if (width, theme) == (1600, "JupyterLab Dark"):
            shoot(page, MONITOR, "dark")
    print("chart widths:", widths)
    assert widths[(MONITOR, 1600, "JupyterLab Light")] > widths[(MONITOR, 1000, "JupyterLab Light")] + 400


def test_a_monitor_made_in_the_dark_theme_is_dark(notebook):
    page = notebook
    assert page.evaluate("document.body.dataset.jpThemeLight") == "false"
    cells(page).nth(MONITOR).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")  # a new monitor, drawn after the switch
    out = output_of(page, MONITOR)
    out.locator(".js-plotly-plot .scatterlayer path.js-line").first.wait_for(timeout=60000)
    page.wait_for_timeout(500)
    assert_theme(measure(page, MONITOR), True, "a monitor made in the dark theme")


def test_one_colour_per_run_in_the_comparison(notebook):
    page = notebook
    gd = output_of(page, COMPARE).locator(".js-plotly-plot").first
    seen = gd.evaluate(LINE_COLOURS)
    names = [n for n, _ in seen["legend"]]
    assert sorted(names) == sorted(RUNS)
    legend = [c for _, c in seen["legend"]]
    assert len(set(legend)) == len(RUNS), seen  # one colour each
    assert seen["subplots"] == [legend, legend], seen  # train and validation lines in the legend's colours
    scatter = output_of(page, COMPARE).locator(".js-plotly-plot").nth(1)
    labels = scatter.evaluate("gd => [...gd.querySelectorAll('.textpoint text')].map(t => { const b = "
                              "t.getBoundingClientRect(); return [t.textContent, b.left, b.right, b.top]; })")
    box = scatter.bounding_box()
    assert sorted(n for n, *_ in labels) == sorted(RUNS)
    for name, left, right, top in labels:  # run names next to their points, all of each inside the chart
        assert box["x"] <= left and right <= box["x"] + box["width"] and top >= box["y"], (name, left, right, box)
    assert page.dialogs == []
    assert_no_browser_errors(page)
