"""The quickstart in Notebook 7 (`jupyter notebook`), in a real browser: run top to bottom with its small budget
switched on (the tiny model), the panels draw as widgets and training finishes; and what of the lab extension
Notebook 7 shows: the File menu's "New fine-tuning notebook", the runs sidebar (View > Left Sidebar) and the
palette's insert-cell commands; no status bar and no launcher. docs/extension.md says the same. About a minute on 2
cores.
"""
import os
import re

import nbformat
import pytest
from labtools import REPO, TINY_KERNELS, state_of, wait_for

LAB_ENV = TINY_KERNELS  # the lab's kernels train the tiny model
pytestmark = pytest.mark.browser  # skipped, or failed under FTNB_REQUIRE_BROWSER=1, without them: see conftest.py


@pytest.fixture(scope="module", autouse=True)
def notebook7():
    try:
        import notebook
    except ImportError:
        notebook = None
    if notebook is None or int(notebook.__version__.split(".")[0]) < 7:
        if os.environ.get("FTNB_REQUIRE_BROWSER") == "1":
            pytest.fail("Notebook 7 is not installed (pip install 'notebook>=7')", pytrace=False)
        pytest.skip("Notebook 7 is not installed (pip install 'notebook>=7')")


@pytest.fixture(scope="module")
def frontend():
    return {"module": "notebook", "page": "/tree", "ready": ".jp-DirListing-item", "args": []}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The quickstart with its budget switch turned on, as a user would: `SMALL = True`."""
    root = tmp_path_factory.mktemp("notebook7") / "work"
    root.mkdir()
    nb = nbformat.read(REPO / "notebooks" / "01_quickstart.ipynb", as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert setup.source.startswith("SMALL = False")
    setup.source = "SMALL = True" + setup.source[len("SMALL = False"):]
    nbformat.write(nb, str(root / "quickstart.ipynb"))
    return root


def menu(page, top, item):
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel:visible").filter(has_text=re.compile(rf"^{re.escape(item)}$")).click()


def ftnb_errors(page):
    """Browser errors that come from ftnb's code (Notebook 7 logs some of its own)."""
    return [e for e in page.errors if "ftnb" in e and "/api/contents/finetune.ipynb?content=0" not in e]


def test_the_quickstart_runs_in_notebook7(page, lab, root):
    page.goto(f"{lab}/notebooks/quickstart.ipynb")  # logged in by the tree page's token
    cells = page.locator(".jp-NotebookPanel .jp-Cell")
    cells.nth(17).wait_for()
    # the runs sidebar: in Notebook 7's left area, hidden until View > Left Sidebar opens it; no runs yet
    sidebar = page.locator("#ftnb-runs-sidebar")
    assert not sidebar.is_visible()
    page.locator(".lm-MenuBar-itemLabel", has_text="View").first.click()
    page.locator(".lm-Menu-itemLabel:visible", has_text="Left Sidebar").first.hover()
    page.locator(".lm-Menu-itemLabel:visible", has_text="Show Fine-tuning runs").click()
    message = sidebar.locator(".ftnb-sidebar-message")
    message.locator("code", has_text="ftnb train").wait_for()
    assert "No runs yet" in message.inner_text() and "`" not in message.inner_text()

    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60000)
    menu(page, "Run", "Run All Cells")

    def finished():
        return next((p for p in root.glob("runs/*") if state_of(p).get("state") in ("finished", "failed")), None)
    run = wait_for(finished, 150, "the quickstart's run to end")
    assert state_of(run)["state"] == "finished"
    # the sidebar polls on its own (fast after cells run and a run starts): it shows the end without Refresh
    sidebar.locator(f'.ftnb-run[data-path="runs/{run.name}"] .ftnb-run-state', has_text="finished").wait_for(
        timeout=12000)
    builder, form, monitor = (cells.nth(i).locator(".jp-OutputArea") for i in (5, 7, 9))
    for out in (builder, form):  # widgets, not text; an off-screen cell may draw its output only when idle or seen
        out.scroll_into_view_if_needed()
        out.locator(".widget-vbox").first.wait_for(timeout=30000)
    monitor.locator(".js-plotly-plot").first.wait_for()  # the live charts
    monitor.get_by_text(re.compile(r"finished")).first.wait_for()
    # the last cells ran after training: the forgetting panel drew and the summary printed
    cells.nth(16).locator(".jp-OutputArea .widget-vbox").first.wait_for(timeout=60000)
    cells.nth(17).locator(".jp-OutputArea", has_text="retention").wait_for(timeout=60000)
    assert "Traceback (most recent call last)" not in page.locator(".jp-NotebookPanel").inner_text()
    assert ftnb_errors(page) == []


def test_what_of_the_lab_extension_notebook7_shows(page, root):
    # the runs sidebar (opened by the test above) lists the run
    run = next(root.glob("runs/*"))
    row = page.locator(f'#ftnb-runs-sidebar .ftnb-run[data-path="runs/{run.name}"]')
    row.locator(".ftnb-run-state", has_text="finished").wait_for()
    # no status bar in Notebook 7, so no active-run item; no launcher either (the tree's New menu lists kernels)
    assert page.locator("#jp-main-statusbar").count() == 0 and page.locator(".jp-LauncherCard").count() == 0
    # the insert-cell commands are in the command palette
    menu(page, "View", "Activate Command Palette")
    page.keyboard.insert_text("Insert dataset builder")
    page.locator(".lm-CommandPalette-item:visible", has_text="Insert dataset builder cell").wait_for()
    page.keyboard.press("Escape")
    # "New fine-tuning notebook" is in the File menu, and opens the quickstart in a new browser tab
    with page.context.expect_page() as opened:
        menu(page, "File", "New fine-tuning notebook")
    new = opened.value
    new.locator(".jp-NotebookPanel .jp-Cell").nth(17).wait_for()
    assert new.url.endswith("/notebooks/finetune.ipynb") and (root / "finetune.ipynb").exists()
    new.close()
    assert ftnb_errors(page) == []
