"""The lab extension in a real JupyterLab and a real browser (Playwright driving /usr/bin/chromium, headless).

The tests run in order on one page: the launcher card makes the quickstart notebook; the runs sidebar lists runs
made beforehand; a tiny model trains in a subprocess, shows as running in the sidebar and the status bar, and the
Stop button stops it; a run folder named like HTML shows as text. Screenshots go to docs/screenshots/lab-*.png
with FTNB_SCREENSHOTS=1.

The lab and the page come from conftest.py: the extension is served from this checkout's build (ftnb/labextension,
via JUPYTER_PATH), so run `npm run build:prod` in labextension/ (or `pip install .`) first.
"""
import json

import pytest
from labtools import REPO, SHOTS, state_of, wait_for
from playwright.sync_api import TimeoutError as PlaywrightTimeout

XSS_NAME = "<img src=x onerror=alert(1)>"

pytestmark = pytest.mark.browser  # skipped, or failed under FTNB_REQUIRE_BROWSER=1, without them: see conftest.py


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The lab's notebook folder, with a finished run and a failed run whose folder name is HTML."""
    root = tmp_path_factory.mktemp("lab") / "work"
    root.mkdir()
    import ftnb
    data = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    ftnb.train(model="tiny", data=data, output_dir=str(root / "runs"), run_name="finished-demo", epochs=1,
               probe=False)
    xss = root / "runs" / XSS_NAME
    xss.mkdir()
    (xss / "config.json").write_text(json.dumps({"model": "tiny"}))
    (xss / "status.json").write_text(json.dumps({"state": "failed", "step": 2, "total_steps": 10,
                                                 "error": "<b>bold?</b><script>alert(2)</script>"}))
    (xss / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 2.5, "elapsed_s": 1.0}) + "\n")
    return root


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"lab-{name}.png"))


def cell_texts(page):
    return [t for t in page.locator(".jp-NotebookPanel:visible .jp-Cell .jp-InputArea-editor").all_inner_texts()]


def active_cell(page):
    return page.locator(".jp-NotebookPanel:visible .jp-Cell.jp-mod-active")


def open_sidebar(page):
    sidebar = page.locator("#ftnb-runs-sidebar")
    if not sidebar.is_visible():
        page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="ftnb-runs-sidebar"]').click()
    sidebar.wait_for(state="visible")
    return sidebar


def run_row(page, path):
    return page.locator(f'#ftnb-runs-sidebar .ftnb-run[data-path="{path}"]')


def test_launcher_card_creates_the_quickstart_notebook(page, root):
    from playwright.sync_api import expect
    card = page.locator(".jp-LauncherCard", has_text="New fine-tuning notebook")
    card.scroll_into_view_if_needed()
    shot(page, "launcher")
    card.click()
    cells = page.locator(".jp-NotebookPanel:visible .jp-Cell")
    expect(cells.first).to_contain_text("The smart intern's first week")  # the markdown intro, rendered
    expect(cells.nth(17)).to_contain_text("format_summary(probe.summary)")
    texts = cell_texts(page)
    assert len(texts) == 18
    joined = "\n".join(texts)
    for needle in ("SMALL = False", "DatasetBuilder.from_source", "ConfigForm(preset=",
                   "TrainingMonitor(form=form, builder=builder)", "ForgettingPanel(monitor)", "monitor.run.compare("):
        assert needle in joined, needle
    assert page.locator(".lm-TabBar-tab.lm-mod-current", has_text="finetune.ipynb").count() == 1
    nb = json.loads((root / "finetune.ipynb").read_text())
    assert nb["cells"] == json.loads((REPO / "notebooks" / "01_quickstart.ipynb").read_text())["cells"]
    shot(page, "notebook")


def test_file_menu_item_never_overwrites(page, root):
    before = (root / "finetune.ipynb").read_text()
    page.locator(".lm-MenuBar-itemLabel", has_text="File").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="New fine-tuning notebook").click()
    page.locator(".lm-TabBar-tab.lm-mod-current", has_text="finetune-1.ipynb").wait_for()
    assert (root / "finetune-1.ipynb").exists()
    assert (root / "finetune.ipynb").read_text() == before


def run_from_palette(page, label, done):
    """Run the command labelled `label` from the command palette (Ctrl+Shift+C, type, Enter) until `done` (a
    locator) shows.

    Under load (2 busy cores, a kernel starting) the notebook was seen to take the focus back a moment after the
    palette opened: the modal palette then closes, and an Enter meant for it puts the notebook cell into edit mode.
    So each try checks the outcome, and a failed try is undone with Escape (back to command mode) and repeated. Enter
    runs the highlighted item because clicking it can miss while the lab redraws the list."""
    palette = page.locator(".lm-CommandPalette-input:visible")
    for _ in range(4):
        try:
            page.keyboard.press("Control+Shift+C")
            palette.fill(label, timeout=8000)
            page.locator(".lm-CommandPalette-item.lm-mod-active:visible", has_text=label).wait_for(timeout=5000)
            palette.press("Enter", timeout=5000)
            done.wait_for(timeout=10000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    raise AssertionError(f"the command palette did not run {label!r} in 4 tries")


def test_palette_inserts_a_panel_cell_below_the_active_cell(page):
    page.locator(".jp-NotebookPanel:visible .jp-Cell").first.click()
    run_from_palette(page, "Insert config form cell",
                     active_cell(page).get_by_text('form = ConfigForm(preset="quick-cpu-demo")'))
    page.locator("#jp-main-statusbar").get_by_text("Cell 2/19").wait_for()  # below the first of 18 cells


def test_sidebar_lists_runs_as_text(page, root):
    sidebar = open_sidebar(page)
    row = run_row(page, "runs/finished-demo")
    row.wait_for()
    assert row.locator(".ftnb-run-state").inner_text() == "finished"
    assert "loss" in row.locator(".ftnb-run-details").inner_text()
    figures = row.locator(".ftnb-run-details .ftnb-run-figure")  # "val 1.23" never wraps between word and number
    assert figures.count() >= 2 and figures.nth(1).inner_text().startswith("loss ")
    assert figures.nth(1).evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"
    assert not row.locator(".ftnb-stop").is_visible()
    # a folder named like HTML, and an error message with markup: shown as the characters they are
    xss = run_row(page, f"runs/{XSS_NAME}")
    xss.wait_for()
    assert xss.locator(".ftnb-run-name").inner_text() == XSS_NAME
    assert xss.locator(".ftnb-run-error").inner_text() == "<b>bold?</b><script>alert(2)</script>"
    assert sidebar.locator("img, script, b").count() == 0
    assert page.dialogs == []
    assert not page.locator(".ftnb-status").is_visible()  # nothing runs
    shot(page, "sidebar")


def test_open_inserts_the_monitor_cell_into_the_active_notebook(page):
    run_row(page, "runs/finished-demo").locator(".ftnb-open").click()
    active_cell(page).get_by_text('ftnb.panels.TrainingMonitor.open("runs/finished-demo")').wait_for()
    page.locator("#jp-main-statusbar").get_by_text("Cell 3/20").wait_for()


def test_running_run_shows_and_stops(page, root, train_forever):
    proc = train_forever(root / "runs", "live-run")
    run = root / "runs" / "live-run"
    wait_for(lambda: proc.poll() is None and state_of(run).get("step", 0) > 0, 120, "the run to start training")
    open_sidebar(page)
    page.locator("#ftnb-runs-sidebar .ftnb-refresh").click()  # rather than waiting for the slow poll
    row = run_row(page, "runs/live-run")
    row.locator(".ftnb-run-state", has_text="running").wait_for(timeout=30000)
    status = page.locator(".ftnb-status")
    status.wait_for(state="visible", timeout=30000)
    text = status.inner_text()
    assert "live-run" in text and "%" in text and "/" in text
    shot(page, "running")
    row.locator(".ftnb-stop").click()
    wait_for(lambda: state_of(run).get("state") == "stopped", 120, "status.json to say stopped")
    assert proc.wait(60) == 0
    row.locator(".ftnb-run-state", has_text="stopped").wait_for(timeout=30000)
    status.wait_for(state="hidden", timeout=30000)
    assert not row.locator(".ftnb-stop").is_visible()
    shot(page, "stopped")
    assert page.dialogs == []
