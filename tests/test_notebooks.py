"""The notebooks: each .ipynb is its .py twin with outputs stripped, and each runs top to bottom.

Running them is `slow`: together they load the embedded model, compute trunk features for about a
hundred OASST prompts and score the held-out ones (a couple of minutes on a 2-core CPU). Any
failing cell, including the asserts that compare each notebook's derivation with rmcore, fails
the test with the cell's source and traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))  # in order: notebook 5 reuses notebook 4's feature cache


def _cells(notebook) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), list(c.metadata.get("tags", []))) for c in notebook.cells]


def test_there_are_six_notebooks():
    assert [p.name[:2] for p in SOURCES] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_paired_and_stripped(source: Path):
    import jupytext
    import nbformat

    ipynb = source.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} is missing: run `jupytext --sync notebooks/*.py`"
    paired = nbformat.read(ipynb, as_version=4)
    for i, cell in enumerate(paired.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{ipynb.name} cell {i} has outputs: run "
                "`jupyter nbconvert --clear-output --inplace notebooks/*.ipynb` before committing"
            )
    assert _cells(paired) == _cells(jupytext.read(source)), (
        f"{ipynb.name} and {source.name} differ: run `jupytext --sync notebooks/*.py`"
    )
    assert paired.metadata.get("kernelspec", {}).get("name") == "python3"


def _parameters(source: Path) -> dict[str, object]:
    import ast

    import jupytext

    cell = next(c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", []))
    tree = ast.parse(cell.source)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


def test_notebook_5_evaluates_what_notebook_4_trains():
    """Same data, split and training settings, so notebook 5 reuses notebook 4's cached trunk features."""
    train_nb, eval_nb = _parameters(SOURCES[3]), _parameters(SOURCES[4])
    shared = ("DATA", "N_TRAIN", "N_EVAL", "MAX_LENGTH", "EPOCHS", "BATCH_SIZE", "LR", "SEED")
    assert {k: train_nb[k] for k in shared} == {k: eval_nb[k] for k in shared}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(source: Path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    # The kernelspec "python3" starts `python`, which jupyter_client maps to this interpreter (the venv).
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell raises
    errors = [out for cell in notebook.cells if cell.cell_type == "code"
              for out in cell.outputs if out.output_type == "error"]
    assert not errors
