"""The analysis notebooks run end to end on a synthetic results folder, in this venv's kernel, and draw figures."""

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_report import write_comparison, write_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Chameleon, one seed: dense Mamba, MoM (all four projections) and one ablation variant; short curves."""
    root = tmp_path_factory.mktemp("notebooks")
    runs = [
        write_run(root, "chameleon", "mamba", 0, steps=200),
        write_run(root, "chameleon", "mom", 0, {"text": 1.25, "image": 2.0}, steps=200),
        write_run(root, "chameleon", "mom", 0, {"image": 1.5}, "mom-in_proj", ["in_proj"], steps=200),
    ]
    return write_comparison(root / "results", runs, ["chameleon"], "chameleon", [0])


@pytest.mark.parametrize(
    ("name", "table_text"),
    [("report.ipynb", "| chameleon | image |"), ("ablation.ipynb", "| in_proj (`mom-in_proj`) |")],
)
def test_notebook_executes_and_draws(name, table_text, results, monkeypatch):
    """The notebook runs without error against MOM_RESULTS, shows its table and at least one PNG figure, and its
    kernel is this venv's Python (ipykernel's python3 spec under sys.prefix)."""
    monkeypatch.setenv("MOM_RESULTS", str(results))
    nb = nbformat.read(ROOT / "analysis" / name, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "stored with outputs"
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert any("image/png" in out.get("data", {}) for out in outputs)
    assert any(table_text in out.get("data", {}).get("text/markdown", "") for out in outputs)
    assert nb.cells[-1].outputs[0]["text"].strip() == sys.prefix
