"""The notebooks run top to bottom (nbclient, the active Python's ipykernel) and are stored
without outputs.

Each runs on the organisms when their weights are in the zoo, else on tiny random models
(the notebooks say so in an output line). Run them by hand, with timings, with
``python tests/test_notebooks.py [notebook ...]`` (``NB_EXECUTED_DIR=dir`` keeps the executed
copies there).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def kernel_name() -> str:
    """The kernelspec that runs this interpreter: ipykernel's native ``python3``.

    jupyter_client resolves ``python3`` to ``sys.executable -m ipykernel_launcher`` when
    ipykernel is importable here, so the notebooks see the same environment as the tests
    (the active venv on CI); no kernelspec needs to be registered.
    """
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    return NATIVE_KERNEL_NAME


def execute(path: Path) -> tuple[object, float]:
    """Run a notebook in its own folder; returns the executed notebook and the wall time."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel_name(), timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},
    )
    t0 = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - t0


@pytest.fixture()
def kernel_env(monkeypatch):
    """What the kernel inherits: one torch thread (fastest for tiny models), offline hub."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.setenv("TQDM_DISABLE", "1")


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_alignment_variants.ipynb", "03_diagnostics.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs: run " \
                                       "scripts/strip_notebooks.py"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
        assert "execution" not in cell.metadata, f"{path.name} cell {i} has timing metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel_env):
    nb, seconds = execute(path)   # raises CellExecutionError on any failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    print(f"{path.name}: {seconds:.0f} s")


def test_a_failing_sanity_check_fails_the_notebook(kernel_env):
    """01 stops at its trigger-row check when the check fails (here: a threshold no model meets),
    instead of printing a table that contradicts its text."""
    path = NOTEBOOKS[0]
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        "import unlock_lens.organisms.demo as _demo\n_demo.MIN_TRIGGER_ACCURACY = 1.01"))
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name(), timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="sanity check failed"):
        client.execute()


if __name__ == "__main__":
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                      TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
    keep = os.environ.get("NB_EXECUTED_DIR")
    for arg in sys.argv[1:] or map(str, NOTEBOOKS):
        nb, seconds = execute(Path(arg))
        print(f"{arg}: {seconds:.0f} s", flush=True)
        if keep:
            nbformat.write(nb, Path(keep) / Path(arg).name)
