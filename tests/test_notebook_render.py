"""Look at the notebooks as a person would: execute them in a real Jupyter kernel, render them to
HTML (nbconvert) and take a headless Chromium screenshot; the page must show the lab's panels, not
be blank, and carry no error trace. Screenshots land in tests/artifacts/ (not committed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from PIL import Image

from harness.paths import project_root

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = project_root() / "tests" / "artifacts"


def execute(name: str) -> nbformat.NotebookNode:
    path = project_root() / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, "IIA_PHONE": "scripted"}
    old = os.environ.get("IIA_PHONE")
    os.environ["IIA_PHONE"] = "scripted"  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": str(path.parent)}}).execute(env=env)
    finally:
        if old is None:
            os.environ.pop("IIA_PHONE", None)
        else:
            os.environ["IIA_PHONE"] = old
    return nb


def screenshot(html_file: Path, png: Path, tmp: Path) -> None:
    assert CHROMIUM is not None
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp / 'chromium'}", "--hide-scrollbars",
                    "--window-size=1300,2600", f"--screenshot={png}", html_file.as_uri()],
                   check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed: run "
                    "`apt-get install chromium` (Debian) to enable this check; .ci/run does")
@pytest.mark.parametrize("name", ["03_tier2_write", "05_tier4_blocked"])
def test_executed_notebook_renders_its_panels(name: str, tmp_path: Path) -> None:
    nb = execute(name)
    body, _ = HTMLExporter().from_notebook_node(nb)
    assert "Traceback" not in body and "Error" not in _errors(nb)
    for panel in ("Security events", "On-behalf-of token", "Last call"):
        assert panel in body, panel
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    html_file = ARTIFACTS / f"{name}.html"
    html_file.write_text(body)
    png = ARTIFACTS / f"{name}.png"
    screenshot(html_file, png, tmp_path)
    image = Image.open(png).convert("RGB")
    assert image.size[0] >= 1000 and image.size[1] >= 1000
    small = image.resize((130, 260))
    pixels = list(small.get_flattened_data())
    non_white = sum(1 for p in pixels if sum(p) < 720) / len(pixels)
    colors = len(set(pixels))
    assert non_white > 0.05, f"the page is nearly blank ({non_white:.1%} non-white)"
    assert colors > 50, "the page looks flat (no panels drawn)"
    red_rows = sum(1 for r, g, b in pixels if r > 240 and 225 < g < 240 and 230 < b < 245)
    if name == "05_tier4_blocked":
        assert red_rows > 0, "the denial should be drawn in red"


def _errors(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("ename", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "error")
