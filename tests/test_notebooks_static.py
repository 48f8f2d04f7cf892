"""Committed notebooks are clean: no outputs, no execution counts, the expected kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.paths import project_root

NOTEBOOKS = sorted((project_root() / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ is empty"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path: Path) -> None:
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs"), f"{path.name} cell {index} has outputs"
        assert cell.get("execution_count") is None, f"{path.name} cell {index} was executed"
