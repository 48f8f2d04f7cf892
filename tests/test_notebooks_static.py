"""Committed notebooks are clean: no outputs, no execution counts, the expected kernel.

"Committed" is read from git (the index, which is what the next commit will hold), not from the
working tree: running a notebook in JupyterLab writes its outputs into the file on disk, and that
must not turn `make test` red. Outside a git checkout (an unpacked release) the files are read.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.paths import project_root

ROOT = project_root()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _in_git() -> bool:
    if shutil.which("git") is None:
        return False
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    return inside.returncode == 0 and inside.stdout.strip() == "true"


GIT = _in_git()


def committed(path: Path, root: Path = ROOT) -> dict[str, Any]:
    """The notebook as git holds it (index), or as on disk outside a checkout."""
    if not GIT:
        return json.loads(path.read_text())
    relative = path.relative_to(root).as_posix()
    shown = subprocess.run(["git", "show", f":{relative}"], cwd=root, capture_output=True,
                           text=True, check=False)
    if shown.returncode != 0:  # a new notebook not added yet: what is on disk will be added
        return json.loads(path.read_text())
    return json.loads(shown.stdout)


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ is empty"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path: Path) -> None:
    nb = committed(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs"), f"{path.name} cell {index} has outputs"
        assert cell.get("execution_count") is None, f"{path.name} cell {index} was executed"


@pytest.mark.skipif(not GIT, reason="not a git checkout")
def test_outputs_on_disk_do_not_count(tmp_path: Path) -> None:
    """A notebook run in JupyterLab (outputs in the working tree) is still clean in git, and a
    notebook staged with outputs is not."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    clean = {"cells": [{"cell_type": "code", "source": "1", "outputs": [],
                        "execution_count": None, "metadata": {}}],
             "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4,
             "nbformat_minor": 5}
    run = {**clean, "cells": [{**clean["cells"][0], "execution_count": 1,
                               "outputs": [{"output_type": "execute_result"}]}]}
    nb = repo / "notebooks" / "x.ipynb"
    nb.write_text(json.dumps(clean))
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    nb.write_text(json.dumps(run))  # JupyterLab autosaved outputs
    assert committed(nb, repo)["cells"][0]["outputs"] == []
    subprocess.run([*git, "add", "."], check=True)  # staged with outputs: that is caught
    assert committed(nb, repo)["cells"][0]["outputs"] != []


def test_the_architecture_is_a_picture() -> None:
    """00 shows the zones as an image (a PNG JupyterLab, GitHub and an HTML export all draw),
    not SVG markup in a cell's output that a sanitizer may show as text."""
    nb = committed(ROOT / "notebooks" / "00_architecture.ipynb")
    images = [m for c in nb["cells"] if c["cell_type"] == "markdown"
              for m in re.findall(r"!\[[^\]]+\]\(([^)]+)\)", "".join(c["source"]))]
    assert images == ["architecture.png"]
    png = ROOT / "notebooks" / images[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as picture:
        assert picture.size[0] >= 1200  # sharp on a projector (drawn at 2x)
    assert not any("<svg" in "".join(c["source"]) for c in nb["cells"]
                   if c["cell_type"] == "code")
