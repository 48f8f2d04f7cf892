"""Where the lab keeps its fixtures and its run-time state (`.lab/`)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fixtures_dir", "lab_dir", "project_root"]


def project_root() -> Path:
    """The source checkout that holds this package, or the working directory otherwise."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def lab_dir() -> Path:
    """`IIA_LAB_DIR`, else `<project>/.lab`."""
    env = os.environ.get("IIA_LAB_DIR")
    return Path(env) if env else project_root() / ".lab"


def fixtures_dir() -> Path:
    """`IIA_FIXTURES_DIR`, else `<project>/fixtures`."""
    env = os.environ.get("IIA_FIXTURES_DIR")
    return Path(env) if env else project_root() / "fixtures"
