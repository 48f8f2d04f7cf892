"""The architecture document stands on its own (issue #13, deliverable 5): `docs/architecture.md`
is in the repository, every module it names is in the tree, and no code points readers at a
design document outside the repository.

A path the document names inside a "(moving, issue #13 ...)" remark is code being moved right now;
such a path may not exist yet. Every other path must.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
MOVING = "(moving, issue #13"

# a backticked repository path: `iia/...py`, `harness/...py`, `fixtures/...`
NAMED = re.compile(r"`((?:iia|harness)/[\w./-]+\.py|fixtures/[\w./-]+)`")


def _moving_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every "(moving, issue #13 ...)" remark, up to its matching parenthesis."""
    spans = []
    start = text.find(MOVING)
    while start != -1:
        depth, end = 0, start
        for end in range(start, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        spans.append((start, end))
        start = text.find(MOVING, end)
    return spans


def named_paths(text: str) -> tuple[set[str], set[str]]:
    """The paths the document names: (outside any moving remark, inside one)."""
    spans = _moving_spans(text)
    settled: set[str] = set()
    moving: set[str] = set()
    for match in NAMED.finditer(text):
        inside = any(a <= match.start() <= b for a, b in spans)
        (moving if inside else settled).add(match.group(1))
    return settled, moving


def test_the_architecture_document_is_in_the_repository() -> None:
    assert DOC.is_file(), "docs/architecture.md is missing"
    text = DOC.read_text(encoding="utf-8")
    for section in ("Zones and processes", "The per-call chain",
                    "Where each protocol step lives", "The bindings"):
        assert re.search(rf"^## (\d+\. )?{section}$", text, re.MULTILINE), \
            f"docs/architecture.md has no section {section!r}"


def test_every_module_the_document_names_exists() -> None:
    settled, _moving = named_paths(DOC.read_text(encoding="utf-8"))
    assert len(settled) > 50, "the document names too few modules to map the protocol steps"
    missing = sorted(p for p in settled if not (ROOT / p).exists())
    assert not missing, (f"docs/architecture.md names paths that are not in the tree: {missing}; "
                         f"fix the document, or mark a move in progress with {MOVING}: ...)")


def test_the_moving_marker_is_recognised() -> None:
    text = ("`iia/jwks.py` (moving, issue #13: into `iia/new (part).py` and\n`harness/x.py`) "
            "then `harness/lab.py`")
    settled, moving = named_paths(text)
    assert settled == {"iia/jwks.py", "harness/lab.py"}
    assert moving == {"harness/x.py"}


def test_no_code_points_at_a_design_document_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("iia", "harness")
        for path in sorted((ROOT / package).rglob("*"))
        if path.is_file() and path.suffix in {".py", ".md", ".html", ".toml", ".json", ".txt"}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "DESIGN.md" in line
    ]
    assert not offenders, ("these lines point at DESIGN.md, which is not in the repository; "
                           f"point them at docs/architecture.md: {offenders}")
