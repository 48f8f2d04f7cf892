"""The architecture document stands on its own (issue #13, deliverable 5): `docs/architecture.md`
is in the repository, every module it names is in the tree, it describes the code as it is (no
"(moving, ...)" remark about code on its way), and no code points readers at a design document
outside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"

# a backticked repository path: `iia/...py`, `harness/...py`, `fixtures/...`
NAMED = re.compile(r"`((?:iia|harness)/[\w./-]+\.py|fixtures/[\w./-]+)`")


def named_paths(text: str) -> set[str]:
    """The repository paths the document names."""
    return {match.group(1) for match in NAMED.finditer(text)}


def missing_paths(text: str, root: Path = ROOT) -> list[str]:
    """The paths `text` names that are not in the tree under `root`."""
    return sorted(p for p in named_paths(text) if not (root / p).exists())


def test_the_architecture_document_is_in_the_repository() -> None:
    assert DOC.is_file(), "docs/architecture.md is missing"
    text = DOC.read_text(encoding="utf-8")
    for section in ("Zones and processes", "The per-call chain",
                    "Where each protocol step lives", "The bindings"):
        assert re.search(rf"^## (\d+\. )?{section}$", text, re.MULTILINE), \
            f"docs/architecture.md has no section {section!r}"


def test_every_module_the_document_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert len(named_paths(text)) > 50, "the document names too few modules to map the steps"
    missing = missing_paths(text)
    assert not missing, f"docs/architecture.md names paths that are not in the tree: {missing}"


def test_a_missing_path_is_caught() -> None:
    """The check above can fail: a path written like the document's, but not in the tree."""
    text = ("`iia/jwks.py` (the cache) and `harness/verify/nowhere.py`, "
            "`fixtures/policy/rar_types.json`; `iia/jwks` is no module path")
    assert named_paths(text) == {"iia/jwks.py", "harness/verify/nowhere.py",
                                 "fixtures/policy/rar_types.json"}
    assert missing_paths(text) == ["harness/verify/nowhere.py"]


def test_the_document_describes_what_is() -> None:
    """The issue #13 moves have landed: no remark says a step is still on its way."""
    text = DOC.read_text(encoding="utf-8")
    assert "(moving" not in text, "docs/architecture.md still marks code as moving"


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
