"""The tutorial notebooks (``tutorials/NN_name.ipynb``) run, and the committed ones came from a clean run.

1. Every committed notebook is executed headless with nbclient, top to bottom, in a fresh kernel and a
   temporary working directory, under a per-notebook time budget; any error (a failed "check yourself"
   assertion included) fails the test.
2. Every committed notebook carries outputs and execution counts 1, 2, 3, ... over its code cells in
   order (what a top-to-bottom run of ``tutorials/build.py`` leaves), and no error output.
3. Every source script ``NN_name.py`` has its notebook, with the same code (checked when jupytext is
   installed; jupytext is only needed to *build* the notebooks).

The notebooks are executed from the committed .ipynb files, so running them needs only nbclient,
nbformat and ipykernel (the ``test`` extra).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
SCRIPTS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
# Each notebook is written to run in about 1 (at most 3) minutes on 2 busy CPU cores; the budget leaves
# room for a loaded CI machine but still catches a notebook that hangs or silently grew.
NOTEBOOK_BUDGET_S = 600


def _ids(paths):
    return [p.stem for p in paths]


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_tutorials_exist():
    assert NOTEBOOKS, f"no tutorial notebooks in {TUTORIALS}"
    assert [p.stem for p in NOTEBOOKS] == [p.stem for p in SCRIPTS], (
        "every tutorials/NN_name.py needs its executed NN_name.ipynb (python tutorials/build.py) and vice versa"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_is_a_top_to_bottom_run(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert cells, f"{path.name} has no code cells"
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(cells)}; rebuild it with tutorials/build.py"
    )
    assert sum(bool(cell.outputs) for cell in cells) >= len(cells) // 2, f"{path.name} was saved without outputs"
    errors = [out for cell in cells for out in cell.outputs if out.output_type == "error"]
    assert not errors, f"{path.name} was saved with an error: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    markdown = [cell.source for cell in nb.cells if cell.cell_type == "markdown"]
    assert markdown and "Learning goals" in markdown[0], f"{path.name} must open with its learning goals"
    assert "Summary" in "\n".join(markdown[-2:]), f"{path.name} must close with a summary"


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids(SCRIPTS))
def test_notebook_matches_its_script(script):
    jupytext = pytest.importorskip("jupytext")
    notebook = script.with_suffix(".ipynb")
    assert notebook.is_file(), f"{notebook.name} is missing; build it with python tutorials/build.py"
    want = [cell.source for cell in _code_cells(jupytext.read(script))]
    have = [cell.source for cell in _code_cells(nbformat.read(notebook, as_version=4))]
    assert have == want, f"{notebook.name} is stale: rebuild it with python tutorials/build.py {script.stem[:2]}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=NOTEBOOK_BUDGET_S,
        record_timing=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    deadline = time.monotonic() + NOTEBOOK_BUDGET_S
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            # the per-notebook budget: each cell may use what the cells before it left
            client.timeout = max(1, int(deadline - time.monotonic()))
            try:
                client.execute_cell(cell, index)
            except nbclient.exceptions.CellTimeoutError:
                pytest.fail(f"{path.name} ran past its {NOTEBOOK_BUDGET_S} s budget at cell {index}")
            except nbclient.exceptions.CellExecutionError as err:
                pytest.fail(f"{path.name}, cell {index}, failed:\n{cell.source}\n\n{err}")
    assert [c.execution_count for c in _code_cells(nb)] == list(range(1, len(_code_cells(nb)) + 1))


def test_the_docs_gif_is_the_notebooks():
    """docs/reflow_toy.gif is the animation notebook 6 shows (``python tutorials/export_gif.py`` copies it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_gif", TUTORIALS / "export_gif.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TARGET.read_bytes() == module.notebook_gif(), (
        "docs/reflow_toy.gif is stale: python tutorials/export_gif.py"
    )
