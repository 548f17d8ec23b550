"""The notebooks run top to bottom (on the tiny world model, with few steps)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tiny_env_kwargs, tmp_path, monkeypatch):
    monkeypatch.setenv("XWORLD_CHECKPOINT", tiny_env_kwargs["checkpoint"])
    monkeypatch.setenv("XWORLD_SCENARIO_BANK", tiny_env_kwargs["scenario_bank"])
    monkeypatch.setenv("XWORLD_NOTEBOOK_STEPS", "3")
    monkeypatch.setenv("XWORLD_NOTEBOOK_TIMESTEPS", "64")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(path.parents[1]))
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
