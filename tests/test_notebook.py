"""examples/quickstart.ipynb runs top to bottom on the bundled model (in a scratch folder, a fresh kernel)."""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCLIP_CACHE", str(tmp_path / "cache"))  # the kernel inherits it: nothing shared
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [cell.outputs for cell in notebook.cells if cell.cell_type == "code"]
    assert not [o for cell in outputs for o in cell if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for cell in outputs for o in cell)  # the overlay is drawn
    assert (tmp_path / "runs" / "example" / "image.png").is_file()
    assert (tmp_path / "runs" / "shift" / "shift-drift.png").is_file()
    assert (tmp_path / "site" / "index.html").is_file()
