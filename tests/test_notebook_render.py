"""Look at the notebooks as a person would: execute EVERY notebook in a real Jupyter kernel
(nbclient, the widget state kept as a browser would save it), render each to HTML with nbconvert,
and check it carries no error and that its widget views point at saved widget models; then
screenshot the tier-2 and tier-4 notebooks with headless Chromium: the page must show the lab's
panels (the phone card's pushes and who answered them, the last call, the token inspector, the
events) and not be blank. HTML and PNGs land in tests/artifacts/ (not committed).

Then JupyterLab itself: a headless `jupyter lab` serves the executed 03 and 05, and headless
Chromium opens each in the real JupyterLab app: the notebook opens, the lab's panels are on the
page, no output is an error, and the page is screenshotted (`jupyterlab-*.png`).

What is not shown live: widget views. The notebooks are executed by nbclient (a local kernel over
ZMQ), not through the server's websocket; running them inside the browser would need a browser
driver (Playwright, Selenium or raw CDP), where `chromium --headless` only loads a URL, waits and
takes one picture; JupyterLab does not draw saved widget state once a new kernel attaches; and the
exported HTML's live views need `@jupyter-widgets/html-manager` from a CDN a CI sandbox cannot
reach. So the pictures show the panels' static snapshots, and the widget views are proven from the
saved widget state instead. The same kernel (ipykernel, `python3`) runs the notebooks in `make lab`.

Each notebook is executed once, by the first test that needs it, in its own lab on loopback ports
(the result is shared by the later tests). This is the suite's one run of the notebooks: `make
test` does not run them a second time through nbval. How long each takes is `make bench`'s
business (`bench/notebooks.py`), never a test's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from PIL import Image

from harness.net import bind_loopback
from harness.paths import project_root

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = project_root() / "tests" / "artifacts"
NOTEBOOKS = sorted((project_root() / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]
WITH_CONSOLE = {n for n in NAMES if n[:2] in {"02", "03", "04", "05", "06", "07"}}
# per cell (nbclient); a test that executes a notebook gets its own, larger pytest timeout
NOTEBOOK_CELL_TIMEOUT_S = 240
EXECUTES = pytest.mark.timeout(600)
WIDGET_VIEW = re.compile(
    r'<script type="application/vnd\.jupyter\.widget-view\+json">\s*(\{.*?\})\s*</script>', re.S)
STATE_KEY = "application/vnd.jupyter.widget-state+json"


class Rendered:
    def __init__(self, nb: nbformat.NotebookNode | None, html: str, failure: str | None) -> None:
        self.nb, self.html, self.failure = nb, html, failure


def _execute(path: Path) -> Rendered:
    # its own lab directory: never attach to a lab a person runs, nor to another notebook's;
    # a scripted phone answers the pushes (the kernel inherits this environment)
    private = tempfile.mkdtemp(prefix=f"iia-render-{path.stem[:2]}-")
    env = {**os.environ, "IIA_LAB_DIR": private, "IIA_PHONE": "scripted"}
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=NOTEBOOK_CELL_TIMEOUT_S, kernel_name="python3",
                            allow_errors=True, store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        asyncio.run(client.async_execute(env=env))
    except Exception as exc:  # a timeout or a dead kernel: reported by that notebook's test
        return Rendered(None, "", f"{exc.__class__.__name__}: {exc}")
    finally:
        shutil.rmtree(private, ignore_errors=True)
    html, _ = HTMLExporter().from_notebook_node(nb)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{path.stem}.html").write_text(html)
    return Rendered(nb, html, None)


_EXECUTED: dict[str, Rendered] = {}


@pytest.fixture(scope="session")
def rendered() -> Callable[[str], Rendered]:
    """`rendered(name)`: the notebook executed once, on first use, inside the test that first
    asks for it (so each test's own timeout covers at most one notebook's run)."""
    def get(name: str) -> Rendered:
        if name not in _EXECUTED:
            _EXECUTED[name] = _execute(project_root() / "notebooks" / f"{name}.ipynb")
        return _EXECUTED[name]
    return get


def _errors(nb: nbformat.NotebookNode) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
            for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _tracebacks(nb: nbformat.NotebookNode) -> str:
    return "\n".join("\n".join(o.get("traceback", [])) for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "error")


def _widget_state(nb: nbformat.NotebookNode) -> dict[str, Any]:
    return nb.metadata.get("widgets", {}).get(STATE_KEY, {}).get("state", {})


@EXECUTES
@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_renders_without_errors(name: str,
                                              rendered: Callable[[str], Rendered]) -> None:
    result = rendered(name)
    assert result.failure is None, f"{name} did not finish: {result.failure}"
    assert result.nb is not None
    assert _errors(result.nb) == [], f"{name} has error outputs:\n" + _tracebacks(result.nb)
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


@EXECUTES
@pytest.mark.parametrize(("name", "pushes"), [("03_tier2_write", 1), ("04_tier3_sensitive", 3)])
def test_the_phone_card_kept_the_pushes_and_who_answered(
        name: str, pushes: int, rendered: Callable[[str], Rendered]) -> None:
    nb = rendered(name).nb
    assert nb is not None
    texts = [s["state"].get("value", "") for s in _widget_state(nb).values()
             if s["model_name"] == "HTMLModel"]
    phone = [t for t in texts if t.startswith("<div><b>Phone of alice@example.com</b>")]
    assert phone, "no phone card in the saved widget state"
    assert "no pending push" in phone[-1]
    assert phone[-1].count("<td>scripted phone</td>") == pushes


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed: run "
                    "`apt-get install chromium` (Debian) to enable this check; .ci/run does")
@EXECUTES
@pytest.mark.parametrize("name", ["03_tier2_write", "05_tier4_blocked"])
def test_screenshot_shows_the_panels(name: str, rendered: Callable[[str], Rendered],
                                     tmp_path: Path) -> None:
    body = rendered(name).html
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
    _chromium(tmp, "--window-size=1300,2600", f"--screenshot={png}", html_file.as_uri())


# -- in JupyterLab itself ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jupyterlab(rendered: Callable[[str], Rendered], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[str, str, Path]]:
    """A headless `jupyter lab` serving the executed notebooks (its token in memory only)."""
    root = tmp_path_factory.mktemp("jupyterlab")
    for name in ("03_tier2_write", "05_tier4_blocked"):
        nb = rendered(name).nb
        assert nb is not None
        nbformat.write(nb, root / f"{name}.ipynb")
    settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no network, no popup
    token = secrets.token_hex(16)
    sock = bind_loopback()
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--ServerApp.root_dir={root}", "--allow-root"],
        env={**os.environ, "JUPYTER_TOKEN": token, "IIA_PHONE": "scripted",
             "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/status", params={"token": token}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "jupyter lab exited"
            assert time.monotonic() < deadline, "jupyter lab did not answer in 60 s"
            time.sleep(0.2)
        yield url, token, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed: run "
                    "`apt-get install chromium` (Debian) to enable this check; .ci/run does")
@EXECUTES
@pytest.mark.parametrize("name", ["03_tier2_write", "05_tier4_blocked"])
def test_jupyterlab_opens_the_executed_notebook(name: str, jupyterlab: tuple[str, str, Path],
                                                tmp_path: Path) -> None:
    """What a person sees in JupyterLab: the app loads, the notebook opens, its outputs are
    there (the lab's panels) and none of them is an error."""
    url, token, _ = jupyterlab
    page = f"{url}/lab/tree/{name}.ipynb?token={token}"
    png = ARTIFACTS / f"jupyterlab-{name}.png"
    dom = _chromium(tmp_path, "--window-size=1300,2000", f"--screenshot={png}", "--dump-dom",
                    "--virtual-time-budget=30000", page)
    assert 'class="jp-Notebook' in dom or "jp-Notebook " in dom, "JupyterLab did not open it"
    for panel in ("Phone of alice@example.com", "On-behalf-of token", "Security events"):
        assert panel in dom, f"{panel!r} is not on the JupyterLab page"
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in dom
    assert "Traceback" not in dom
    image = Image.open(png).convert("RGB").resize((130, 200))
    assert len(set(image.get_flattened_data())) > 50, "JupyterLab's page looks blank"


def _chromium(tmp: Path, *args: str) -> str:
    assert CHROMIUM is not None
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-quic", "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp / 'chromium'}", "--hide-scrollbars", *args],
                          check=True, capture_output=True, text=True, timeout=120)
    return done.stdout
