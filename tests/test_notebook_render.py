"""Look at the notebooks as a person would: execute EVERY notebook in a real Jupyter kernel
(nbclient, the widget state kept as a browser would save it), render each to HTML with nbconvert,
and check it carries no error and that its widget views point at saved widget models; then
screenshot the tier-2 and tier-4 notebooks with headless Chromium: the page must show the lab's
panels (the phone card's pushes and who answered them, the last call, the token inspector, the
events) and not be blank. HTML and PNGs land in tests/artifacts/ (not committed).

Why not a `jupyter lab` server: executing through a server's kernel means driving it over the
server's websocket (`/api/kernels/<id>/channels`); nbclient only drives a local kernel over ZMQ,
and a websocket kernel client is not a dependency. Its pixels would also need a browser driver
(Playwright, Selenium or raw CDP) to open the notebook, run it and wait for the widgets, where
`chromium --headless --screenshot` can only load a URL and take one picture. And the live widget
views of the exported HTML need `@jupyter-widgets/html-manager` from a CDN, which a CI sandbox
cannot reach, so the screenshot proves the static snapshots, and the widget views are proven from
the saved state instead. The same kernel (ipykernel, `python3`) runs the notebooks as `make lab`.

The notebooks run two at a time (each one starts its own lab on loopback ports).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from PIL import Image

from harness.paths import project_root

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = project_root() / "tests" / "artifacts"
NOTEBOOKS = sorted((project_root() / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]
WITH_CONSOLE = {n for n in NAMES if n[:2] in {"02", "03", "04", "05", "06", "07"}}
WORKERS = 2
WIDGET_VIEW = re.compile(
    r'<script type="application/vnd\.jupyter\.widget-view\+json">\s*(\{.*?\})\s*</script>', re.S)
STATE_KEY = "application/vnd.jupyter.widget-state+json"


class Rendered:
    def __init__(self, nb: nbformat.NotebookNode | None, html: str, failure: str | None) -> None:
        self.nb, self.html, self.failure = nb, html, failure


async def _execute(path: Path, gate: asyncio.Semaphore, env: dict[str, str]) -> Rendered:
    async with gate:
        # its own lab directory: never attach to a lab a person runs, nor to the other kernel's
        private = tempfile.mkdtemp(prefix=f"iia-render-{path.stem[:2]}-")
        env = {**env, "IIA_LAB_DIR": private}
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                                store_widget_state=True,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            await client.async_execute(env=env)
        except Exception as exc:  # a timeout or a dead kernel: reported by that notebook's test
            return Rendered(None, "", f"{exc.__class__.__name__}: {exc}")
        finally:
            shutil.rmtree(private, ignore_errors=True)
    html, _ = HTMLExporter().from_notebook_node(nb)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{path.stem}.html").write_text(html)
    return Rendered(nb, html, None)


async def _execute_all(env: dict[str, str]) -> list[Rendered]:
    gate = asyncio.Semaphore(WORKERS)
    return list(await asyncio.gather(*(_execute(p, gate, env) for p in NOTEBOOKS)))


@pytest.fixture(scope="module")
def rendered() -> Iterator[dict[str, Rendered]]:
    old = os.environ.get("IIA_PHONE")
    os.environ["IIA_PHONE"] = "scripted"  # the kernels inherit this process's environment
    try:
        results = asyncio.run(_execute_all(dict(os.environ)))
    finally:
        if old is None:
            os.environ.pop("IIA_PHONE", None)
        else:
            os.environ["IIA_PHONE"] = old
    yield dict(zip(NAMES, results, strict=True))


def _errors(nb: nbformat.NotebookNode) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
            for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _widget_state(nb: nbformat.NotebookNode) -> dict[str, Any]:
    return nb.metadata.get("widgets", {}).get(STATE_KEY, {}).get("state", {})


@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_renders_without_errors(name: str, rendered: dict[str, Rendered]) -> None:
    result = rendered[name]
    assert result.failure is None, f"{name} did not finish: {result.failure}"
    assert result.nb is not None
    assert _errors(result.nb) == [], f"{name} has error outputs"
    assert "Traceback" not in result.html
    if name not in WITH_CONSOLE:
        return
    views = [json.loads(m)["model_id"] for m in WIDGET_VIEW.findall(result.html)]
    assert views, f"{name} shows no widget view"
    state = _widget_state(result.nb)
    missing = [v for v in views if v not in state]
    assert missing == [], f"{name}: widget views without saved models: {missing}"
    labels = {s["state"].get("description") for s in state.values()}
    assert {"Approve", "Deny"} <= labels, "the phone card's buttons were not created"


@pytest.mark.parametrize(("name", "pushes"), [("03_tier2_write", 1), ("04_tier3_sensitive", 3)])
def test_the_phone_card_kept_the_pushes_and_who_answered(
        name: str, pushes: int, rendered: dict[str, Rendered]) -> None:
    nb = rendered[name].nb
    assert nb is not None
    texts = [s["state"].get("value", "") for s in _widget_state(nb).values()
             if s["model_name"] == "HTMLModel"]
    phone = [t for t in texts if t.startswith("<div><b>Phone of alice@example.com</b>")]
    assert phone, "no phone card in the saved widget state"
    assert "no pending push" in phone[-1]
    assert phone[-1].count("<td>scripted phone</td>") == pushes


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed: run "
                    "`apt-get install chromium` (Debian) to enable this check; .ci/run does")
@pytest.mark.parametrize("name", ["03_tier2_write", "05_tier4_blocked"])
def test_screenshot_shows_the_panels(name: str, rendered: dict[str, Rendered],
                                     tmp_path: Path) -> None:
    body = rendered[name].html
    for panel in ("Phone of alice@example.com", "Security events", "On-behalf-of token",
                  "Last call"):
        assert panel in body, panel
    png = ARTIFACTS / f"{name}.png"
    _screenshot(ARTIFACTS / f"{name}.html", png, tmp_path)
    image = Image.open(png).convert("RGB")
    assert image.size[0] >= 1000 and image.size[1] >= 1000
    small = image.resize((130, 260))
    pixels = list(small.get_flattened_data())
    non_white = sum(1 for p in pixels if sum(p) < 720) / len(pixels)
    assert non_white > 0.05, f"the page is nearly blank ({non_white:.1%} non-white)"
    assert len(set(pixels)) > 50, "the page looks flat (no panels drawn)"
    reds = sum(1 for r, g, b in pixels if r > 240 and 225 < g < 240 and 230 < b < 245)
    greens = sum(1 for r, g, b in pixels if 225 < r < 240 and g > 240 and 225 < b < 240)
    assert greens > 0, "successful calls should be drawn in green"
    if name == "05_tier4_blocked":
        assert reds > 0, "the denial should be drawn in red"


def _screenshot(html_file: Path, png: Path, tmp: Path) -> None:
    assert CHROMIUM is not None
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp / 'chromium'}", "--hide-scrollbars",
                    "--window-size=1300,2600", f"--screenshot={png}", html_file.as_uri()],
                   check=True, capture_output=True, timeout=120)
