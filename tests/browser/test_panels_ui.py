"""The notebook panels (ipywidgets, and plotly FigureWidget, an anywidget) in a real JupyterLab and a real browser.

A Studio trains the tiny model from its Train tab and the loss, learning-rate and gradient-norm charts draw; the
launcher's notebook trains and the runs sidebar stops it; user text holding HTML, scripts and template syntax shows
as text in the dataset builder; the chat panel's answer grows in the page while it is generated, and Stop ends it. Screenshots of the Studio's tabs go to docs/screenshots/panel-*.png
with FTNB_SCREENSHOTS=1.

The lab and the page come from conftest.py; the kernels inherit FTNB_DEFAULT_MODEL=tiny from the lab server.
"""
import json
import re
import time
from pathlib import Path

import pytest
from labtools import SHOTS, TINY_KERNELS, state_of, wait_for

LAB_ENV = TINY_KERNELS  # the lab's kernels train the tiny model
pytestmark = pytest.mark.browser  # skipped, or failed under FTNB_REQUIRE_BROWSER=1, without them: see conftest.py

XSS_IMG = "<img src=x onerror=window.__xss=1>"
XSS_TEXT = f"{XSS_IMG} and <script>window.__xss=2</script> and {{{{ 7*7 }}}}"
WIDGET_EXTENSIONS = ("@jupyter-widgets/jupyterlab-manager", "anywidget")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("panels") / "work"
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def viewport():
    return {"width": 1280, "height": 900}


def assert_no_browser_errors(page):
    # the launcher asks whether finetune.ipynb exists before creating it: that 404 is expected
    errors = [e for e in page.errors if "/api/contents/finetune.ipynb?content=0" not in e]
    assert errors == [], errors


def write_notebook(path, *sources):
    import nbformat
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources], metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}})
    nbformat.write(nb, str(path))


def menu(page, top, item):
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def open_notebook(page, path):
    menu(page, "File", "Open from Path")
    page.locator(".jp-Dialog input").fill(path)
    page.locator(".jp-Dialog .jp-mod-accept").click()
    page.locator(".lm-TabBar-tab.lm-mod-current", has_text=Path(path).name).wait_for()
    fold_left_sidebar(page)


def show_left_sidebar(page, panel_id):
    panel = page.locator(f"#{panel_id}")
    if not panel.is_visible():
        page.locator(f'.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="{panel_id}"]').click()
    panel.wait_for()
    return panel


def fold_left_sidebar(page):
    """The notebook gets the width (the screenshots too)."""
    current = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if current.count():
        current.click()


def wait_for_kernel(page):
    """Until the current notebook's kernel is idle (running a cell earlier asks which kernel to start). The status
    bar says so only once a kernel is attached; the toolbar's indicator says idle from the start."""
    page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\| Idle")).wait_for(timeout=60000)


def run_all(page):
    wait_for_kernel(page)
    menu(page, "Run", "Run All Cells")


def cells(page):
    return page.locator(".jp-NotebookPanel:visible .jp-Cell")


def output_of(page, i):
    return cells(page).nth(i).locator(".jp-OutputArea")


def widget_tab(out, title):
    return out.locator(".lm-TabBar-tab", has_text=title)


def button(out, name):
    return out.locator("button.widget-button:visible").filter(has_text=re.compile(rf"^\s*{name}\s*$"))


def shot(page, out, name):
    """The visible part of a cell's output (scrolled to its top) as panel-<name>.png in SHOTS."""
    out.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)  # let plotly finish a relayout after the tab switch
    box = out.bounding_box()
    view = page.locator(".jp-NotebookPanel:visible .jp-WindowedPanel-outer").bounding_box()
    top, bottom = max(box["y"], view["y"]), min(box["y"] + box["height"], view["y"] + view["height"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"panel-{name}.png"),
                    clip={"x": box["x"], "y": top, "width": box["width"], "height": bottom - top})


def chart_points(out, trace):
    """How many points trace number `trace` of the visible plotly chart holds in the browser."""
    return out.locator(".js-plotly-plot:visible").first.evaluate(f"gd => ((gd.data[{trace}] || {{}}).x || []).length")


def drawn_vertices(out, subplot):
    """How many vertices the first line of a subplot ('xy', 'x2y2', ...) of the visible chart draws (plotly drops
    points that fall on a straight line)."""
    line = out.locator(f".js-plotly-plot:visible .subplot.{subplot} .scatterlayer .trace path.js-line").first
    return len(re.findall(r"[ML]", line.get_attribute("d") or "")) if line.count() else 0


def progress(out):
    """(step, total) from the Train tab's progress label, or None before it shows."""
    texts = out.locator(".widget-html-content:visible", has_text=re.compile(r"^step \d+/\d+")).all_inner_texts()
    m = re.match(r"step (\d+)/(\d+)", texts[0]) if texts else None
    return (int(m[1]), int(m[2])) if m else None


def test_widget_extensions_are_active(page):
    """ipywidgets' and anywidget's lab extensions are loaded by the page (plotly's FigureWidget needs anywidget's)."""
    config = json.loads(page.locator("#jupyter-config-data").text_content())
    names = {e["name"] for e in config["federated_extensions"]}
    assert set(WIDGET_EXTENSIONS) <= names, names
    assert not set(WIDGET_EXTENSIONS) & set(config.get("disabledExtensions", [])), config["disabledExtensions"]


def test_studio_trains_and_draws(page, root):
    write_notebook(root / "studio" / "studio.ipynb",
                   'import os\nos.environ["FTNB_DEFAULT_MODEL"] = "tiny"\nimport ftnb',
                   's = ftnb.Studio()\ns.form.fields["epochs"].value = 3.0\ns')
    open_notebook(page, "studio/studio.ipynb")
    run_all(page)
    out = output_of(page, 1)
    widget_tab(out, "Data").wait_for(timeout=90000)
    assert [t.strip() for t in out.locator(".lm-TabBar-tab").all_inner_texts()] == \
        ["Data", "Settings", "Train", "Forgetting", "Compare", "Export", "Chat"]
    out.get_by_text("pizza_demo.jsonl").first.wait_for()  # the bundled examples were loaded
    shot(page, out, "data")
    widget_tab(out, "Settings").click()
    out.get_by_text("settings are valid").wait_for()
    shot(page, out, "settings")

    widget_tab(out, "Train").click()
    button(out, "Start").click()
    started, seen = time.time(), set()  # how many loss points the chart held, polled while it trains

    def done():
        seen.add(chart_points(out, 0))
        p = progress(out)
        return p and p[1] > 1 and p[0] == p[1] and out.get_by_text("finished:").is_visible()
    wait_for(done, 120, "the Train tab to say step N/N and finished")
    _, total = progress(out)
    assert total == 21  # 54 training examples in batches of 8, 3 epochs
    assert [chart_points(out, i) for i in range(4)] == [total, 3, total, total]  # loss, val loss, lr, grad norm
    for subplot in ("xy", "x2y2", "x3y3"):  # drawn, not only sent
        assert drawn_vertices(out, subplot) >= total // 2, subplot
    if time.time() - started > 5:  # long enough for several throttled redraws (2 a second): the line grew live
        assert seen - {0, total}, f"the loss chart only drew at the end: {sorted(seen)}"
    runs = list((root / "studio" / "runs").iterdir())
    assert len(runs) == 1 and state_of(runs[0])["state"] == "finished"
    shot(page, out, "train")

    widget_tab(out, "Forgetting").click()
    out.locator(".widget-html-content:visible", has_text=re.compile(r"change in accuracy .* retention .*95% CI")).first.wait_for()
    wait_for(lambda: chart_points(out, 2) == 4, 30, "the accuracy curve (steps 0, 7, 14, 21)")
    shot(page, out, "forgetting")
    widget_tab(out, "Compare").click()
    out.get_by_text("1 run in runs").wait_for()
    out.locator("select:visible").select_option(index=0)
    wait_for(lambda: chart_points(out, 0) == total and drawn_vertices(out, "xy") > 1, 30,
             "the comparison's train-loss curve")
    shot(page, out, "compare")
    assert page.dialogs == []
    assert_no_browser_errors(page)


def test_template_notebook_runs_and_sidebar_stops_it(page, root):
    # the launcher makes the notebook in the file browser's folder: the lab's root
    show_left_sidebar(page, "filebrowser").locator(".jp-BreadCrumbs-home").click()
    menu(page, "File", "New Launcher")
    page.locator(".jp-LauncherCard:visible", has_text="New fine-tuning notebook").click()
    page.locator(".lm-TabBar-tab.lm-mod-current", has_text="finetune.ipynb").wait_for()
    fold_left_sidebar(page)
    cells(page).nth(17).wait_for()  # the quickstart, notebooks/01_quickstart.ipynb
    # its budget switch on, as a user would: the first line of the setup cell
    cells(page).nth(1).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Home")
    page.keyboard.press("Shift+End")
    page.keyboard.insert_text("SMALL = True")
    page.keyboard.press("Escape")
    assert cells(page).nth(1).locator(".jp-InputArea-editor").inner_text().startswith("SMALL = True\n")
    # a long run on the tiny model: below the form cell
    cells(page).nth(7).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.insert_text('form.fields["epochs"].value = 2000.0\nform.fields["probe"].value = False')
    page.keyboard.press("Escape")
    assert 'form.fields["epochs"].value = 2000.0' in cells(page).nth(8).inner_text()
    assert "TrainingMonitor(form=form" in cells(page).nth(10).inner_text()
    cells(page).nth(11).locator(".jp-InputArea-editor").click()  # monitor.start(): run what is above it
    wait_for_kernel(page)
    menu(page, "Run", "Run All Above Selected Cell")
    monitor = output_of(page, 10)
    button(monitor, "Start").wait_for(timeout=90000)
    output_of(page, 7).locator(".widget-vbox").first.wait_for()  # the form drew as widgets, not as text
    button(monitor, "Start").click()

    def training():
        return next((p for p in root.glob("runs/*") if state_of(p).get("state") == "running"
                     and state_of(p).get("step", 0) > 0), None)
    run = wait_for(training, 120, "the run to start training")
    assert json.loads((run / "config.json").read_text())["model"] == "tiny"
    monitor.get_by_text(re.compile(r"step \d+/14000")).wait_for()  # 54 examples, batches of 8, 2000 epochs
    sidebar = show_left_sidebar(page, "ftnb-runs-sidebar")
    row = sidebar.locator(f'.ftnb-run[data-path="runs/{run.name}"]')
    state = row.locator(".ftnb-run-state", has_text="running")
    # Refresh rather than wait for the slow poll; a click during a poll only joins it, so click until it shows
    wait_for(lambda: sidebar.locator(".ftnb-refresh").click() or state.count(), 30, "the sidebar to list it running")
    row.locator(".ftnb-stop").click()
    wait_for(lambda: state_of(run).get("state") == "stopped", 60, "status.json to say stopped")
    monitor.get_by_text(re.compile(r"stopped at step \d+")).wait_for()
    row.locator(".ftnb-run-state", has_text="stopped").wait_for()
    assert not row.locator(".ftnb-stop").is_visible()
    assert page.dialogs == []
    assert_no_browser_errors(page)


def test_user_text_is_escaped_in_the_panels(page, root):
    write_notebook(root / "xss" / "xss.ipynb", f"""from ftnb.panels import DatasetBuilder
text = {XSS_TEXT!r}
data = [{{"messages": [{{"role": "user", "content": text}}, {{"role": "assistant", "content": "Sure: " + text}}]}},
        {{"messages": [{{"role": "user", "content": "plain"}}, {{"role": "assistant", "content": "text"}}]}}]
builder = DatasetBuilder.from_source(data, model="tiny")
builder""")
    open_notebook(page, "xss/xss.ipynb")
    run_all(page)
    out = output_of(page, 0)
    table = out.locator("table", has_text="assistant")
    table.wait_for(timeout=90000)
    user, answer = table.locator("td", has_text=XSS_IMG).all()
    assert user.inner_text() == XSS_TEXT and answer.inner_text() == "Sure: " + XSS_TEXT
    button(out, "Show template and tokens").click()
    template = out.locator("pre", has_text="<|im_start|>")  # the tiny model's ChatML template
    template.wait_for(timeout=60000)
    assert template.inner_text().count(XSS_TEXT) == 2  # user and assistant, as the characters they are
    assert out.locator("textarea").first.input_value() == XSS_TEXT
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("script", has_text="__xss").count() == 0
    assert user.is_visible() and template.is_visible()
    assert page.dialogs == []
    assert_no_browser_errors(page)


def test_a_hostile_run_folder_shows_as_text(page, root):
    """A run folder from someone else: numbers that are markup, answers that are markup. Nothing runs, and what
    the folder holds shows as the characters it is (issue 13)."""
    run = root / "hostile" / "runs" / "evil"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "tiny", "sample_prompts": [XSS_TEXT]}))
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": 2, "total_steps": 2,
                                                 "error": XSS_TEXT}))
    probe = {"acc": 0.5, "acc_base": 0.5, "acc_low": 0.4, "acc_high": 0.6, "retention": 1.0, "kl": 0.0, "ppl": 9.0}
    lines = [{"step": 1, "loss": 2.0, "lr": 1e-4, "grad_norm": 1.0, "elapsed_s": 1.0, "train_s": 1.0},
             {"step": 2, "loss": 1.5, "lr": 1e-4, "grad_norm": 1.0, "elapsed_s": 2.0, "train_s": 2.0},
             {"step": 2, "val_loss": 1.6, "samples": [{"prompt": XSS_TEXT, "answer": "Sure: " + XSS_TEXT}]},
             {"step": 2, "probe": {**probe, "right_to_wrong": [XSS_IMG]}},
             # the last lines, so that a viewer that took them would show their steps in its headings
             {"step": XSS_IMG, "val_loss": 1.7, "samples": [{"prompt": XSS_TEXT, "answer": XSS_TEXT}]},
             {"step": XSS_IMG, "probe": probe}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    write_notebook(root / "hostile" / "open.ipynb",
                   "from ftnb.panels import ForgettingPanel, RunComparison, TrainingMonitor\n"
                   "TrainingMonitor.open('runs/evil')",
                   "ForgettingPanel(run_dir='runs/evil')",
                   "c = RunComparison('runs')\nc.select(['runs/evil'])\nc")
    open_notebook(page, "hostile/open.ipynb")
    run_all(page)
    samples = output_of(page, 0).locator(".widget-html-content", has_text="Sample answers at step")
    samples.wait_for(timeout=90000)
    headline = output_of(page, 1).locator(".widget-html-content", has_text="perplexity")
    headline.wait_for(timeout=60000)
    page.wait_for_timeout(500)  # an image that fails to load fires its onerror
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert samples.inner_text().startswith("Sample answers at step 2\n")
    assert samples.locator("td").all_inner_texts() == [XSS_TEXT, "Sure: " + XSS_TEXT]
    assert headline.inner_text().startswith("step 2:")
    output_of(page, 1).get_by_text(XSS_IMG).wait_for()  # the flipped question's id, as text
    output_of(page, 0).get_by_text(f"runs/evil: finished ({XSS_TEXT})").wait_for()  # status.json's error
    output_of(page, 2).get_by_text("1 run in runs").wait_for(timeout=60000)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("script", has_text="__xss").count() == 0
    assert page.dialogs == []
    assert_no_browser_errors(page)


CHAT_RUN = """import ftnb
from ftnb.panels import Chat
data = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]
run = ftnb.train(model="tiny", data=data, output_dir="runs", run_name="talk", max_steps=6, batch_size=4, eval_every=3,
                 save_every=3, probe=False, learning_rate=1e-2)"""


def test_chat_streams_and_stops(page, root):
    """The answer grows in the browser while it is generated (the worker thread's throttled assignments reach the
    page), Stop ends it, and the base model's turn, which was to come after it, is skipped."""
    write_notebook(root / "chat" / "chat.ipynb", CHAT_RUN,
                   "chat = Chat(run_dir=run.run_dir.path)\nchat.greedy.value = True\n"
                   "chat.max_new_tokens.value = 2000\nchat")
    open_notebook(page, "chat/chat.ipynb")
    run_all(page)
    out = output_of(page, 1)
    out.get_by_text("talking to the final weights (step 6)").wait_for(timeout=120000)
    assert out.locator(".ftnb-chat-base").is_visible()  # LoRA: the base column beside the tuned one
    out.locator("textarea:visible").last.fill("What is 3 plus 3?")
    button(out, "Send").click()
    live = out.locator(".ftnb-chat-tuned .ftnb-live")
    live.wait_for(timeout=60000)
    stop = button(out, "Stop")
    lengths, t0 = [], time.time()
    while time.time() - t0 < 4 and len(set(lengths)) < 6:  # the answer's length, sampled while it is generated
        assert stop.is_enabled() and live.count() == 1
        lengths.append(len(live.inner_text()))
        if len(lengths) == 2:  # early, while the question still shows above the answer
            shot(page, out, "chat")
        page.wait_for_timeout(250)
    print(f"chat streaming: {len(set(lengths))} distinct lengths in {len(lengths)} samples over "
          f"{time.time() - t0:.1f}s: {lengths}")
    assert len(set(lengths)) >= 3 and lengths == sorted(lengths), lengths  # it grew while generating
    base = out.locator(".ftnb-chat-base")
    assert "(answers when the tuned model is done)" in base.inner_text()
    assert base.locator(".ftnb-msg-user").inner_text().endswith("What is 3 plus 3?")
    stop.click()
    status = out.get_by_text(re.compile(r"^stopped after \d+ tokens$"))
    status.wait_for(timeout=30000)
    assert stop.is_disabled() and live.count() == 0
    assert int(re.search(r"\d+", status.inner_text())[0]) < 2000  # ended by Stop, not by max tokens
    answer = out.locator(".ftnb-chat-tuned .ftnb-msg-assistant").last.inner_text()
    page.wait_for_timeout(1000)
    assert out.locator(".ftnb-chat-tuned .ftnb-msg-assistant").last.inner_text() == answer  # it stopped growing
    assert len(answer) >= lengths[-1] - 20  # what had streamed stays (less the "(answering)" label and cursor)
    assert "(stopped before it began)" in base.inner_text()
    assert page.dialogs == []
    assert_no_browser_errors(page)
