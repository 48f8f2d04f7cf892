"""The notebooks as a trainer runs them: 00 to 07 in order, in ONE running lab (the process
topology `iia-lab up` starts, recorded in a lab directory every kernel attaches to), with the
scripted phone answering the pushes. Each notebook must check only what its own calls did: the
tenant's audit trail, the events and the SET trail hold every earlier notebook's calls too. And
each must leave the tenant as the next one can run from (the policy it edits restored, the
delegation it withdraws granted again).

tests/test_notebook_render.py runs each notebook alone, in a lab of its own; this is the one test
that runs them in sequence. It may take a while; nothing here is timed."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import httpx
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from harness.lab_settings import LabSettings
from harness.paths import fixtures_dir, project_root
from harness.supervisor import Supervisor

NOTEBOOKS = sorted((project_root() / "notebooks").glob("0[0-7]_*.ipynb"))
CELL_TIMEOUT_S = 240


@pytest.mark.timeout(1800)
def test_notebooks_00_to_07_pass_in_sequence_in_one_lab(tmp_path: Path) -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == [f"0{i}" for i in range(8)]
    shutil.copytree(fixtures_dir(), tmp_path / "fixtures")
    policy = tmp_path / "fixtures" / "policy" / "token_exchange.cedar"
    original_policy = policy.read_text()
    lab_directory = tmp_path / "lab"
    env = {**os.environ, "IIA_LAB_DIR": str(lab_directory), "IIA_PHONE": "scripted"}
    with Supervisor(LabSettings.from_env(fixtures=tmp_path / "fixtures"),
                    directory=lab_directory) as supervisor:
        endpoints = supervisor.endpoints
        for path in NOTEBOOKS:
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                    resources={"metadata": {"path": str(path.parent)}})
            try:
                asyncio.run(client.async_execute(env=env))
            except CellExecutionError as exc:
                before = ", ".join(p.stem for p in NOTEBOOKS[:NOTEBOOKS.index(path)])
                pytest.fail(f"{path.stem} failed in the lab {before or 'nothing'} ran in "
                            f"before it:\n{exc}")
            first = "".join(o.get("text", "") for o in nb.cells[1].get("outputs", []))
            assert first.startswith("attached to the running lab"), (path.stem, first)
        # what the notebooks changed for a while is back: the next run starts from here
        assert policy.read_text() == original_policy
        delegations = httpx.get(endpoints["verify"] + "/lab/delegations", timeout=10).json()
        alice = next(d for d in delegations if d["user"] == "alice@example.com")
        assert alice["delegated"] is True
        pending = httpx.get(endpoints["verify"] + "/lab/phone/requests", timeout=10).json()
        assert pending == []
