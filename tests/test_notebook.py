"""The walkthrough notebook runs top to bottom on a real (tiny) run and is committed clean."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
# `tiny_run` (tests/conftest.py): the tiny experiment run end to end once per session.

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)  # the notebook writes figures into <run>/report
    monkeypatch.setenv("LOWLAT_RUN_DIR", str(run))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel must use its inline backend
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs)
    assert "rate MSE vs QC-ANN" in text and "RMPE share" in text
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "Table 3" in markdown
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
    assert (run / "report" / "accuracy_vs_T.png").is_file()
