"""What the lab notebooks share: attach to a running lab or start one, and show events.

Notebooks stay thin: they call this, call `iia`, show the result and assert their point.

A notebook leaves nothing behind, even when an assertion fails half-way or the kernel is shut
down: the lab it started (and its temporary fixtures) is stopped at interpreter exit, and a policy
edited with `session.edited_policy(...)` is put back at the end of the block, at interpreter exit,
or (if the kernel was killed) by the next `attach_or_start()`.
"""

from __future__ import annotations

import atexit
import html
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.health import probe_all
from harness.lab_state import ENDPOINTS, process_alive, read_state
from harness.paths import fixtures_dir, lab_dir

if TYPE_CHECKING:  # the in-process lab (the whole simulated world) loads only to start one
    from harness.lab import Lab

__all__ = ["LabSession", "LabUnhealthyError", "attach_or_start", "events_html"]

# The original of a policy being edited (one per editing process), so a killed kernel's edit
# is undone next time.
POLICY_BACKUP = "policy-backup.{pid}.json"


class LabUnhealthyError(HarnessError):
    """`.lab/` says a lab runs, but some of its services do not answer: a notebook must not
    quietly use another lab instead."""


@dataclass
class LabSession:
    """Endpoints and `IIA_*` settings of the lab this notebook uses. `lab` is set when the
    notebook started the lab itself (then `close()` stops it)."""

    endpoints: dict[str, str]
    env: dict[str, str]
    lab: Lab | None = None
    attached: bool = False
    health: list[Any] = field(default_factory=list)
    fixtures: Path | None = None  # the fixtures the lab reads (its policy file lives there)
    _private: Path | None = None

    @property
    def policy_file(self) -> Path:
        """The Cedar policy the running lab's IdP evaluates (edit it: the next exchange
        follows it)."""
        assert self.fixtures is not None
        return self.fixtures / "policy" / "token_exchange.cedar"

    @contextmanager
    def edited_policy(self, text: str) -> Iterator[Path]:
        """Replace the lab's Cedar policy with `text` for the block, then restore the original,
        also when the block fails or the interpreter exits inside it. The original is kept in
        `.lab/policy-backup.json` meanwhile, so even a killed kernel's edit is undone by the
        next `attach_or_start()`."""
        policy = self.policy_file
        original = policy.read_text()
        backup = lab_dir() / POLICY_BACKUP.format(pid=os.getpid())
        backup.parent.mkdir(parents=True, exist_ok=True)
        backup.write_text(json.dumps({"path": str(policy), "text": original}))

        def restore() -> None:
            policy.write_text(original)
            backup.unlink(missing_ok=True)

        atexit.register(restore)
        try:
            policy.write_text(text)
            yield policy
        finally:
            atexit.unregister(restore)
            restore()

    def close(self) -> None:
        """Stop the lab this session started and remove its files (idempotent)."""
        atexit.unregister(self.close)
        if self.lab is not None:
            self.lab.stop()
            self.lab = None
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

    def describe(self) -> str:
        how = "attached to the running lab" if self.attached else "started a lab for this session"
        return f"{how}: " + ", ".join(f"{k}={v}" for k, v in sorted(self.endpoints.items()))


def attach_or_start() -> LabSession:
    """Use the lab `iia-lab up` runs, else start one in this kernel on a private copy of the
    fixtures (so what a notebook edits goes away with it); a lab started here is stopped at
    interpreter exit (kernel shutdown or restart) if the notebook does not close it first.

    Raises `LabUnhealthyError` when `.lab/` records a lab but some of its services are down:
    the notebook would otherwise pass against a lab the user never started."""
    directory = lab_dir()
    restore_policy_backup(directory)
    recorded = read_state(directory)
    if recorded is None and (directory / ENDPOINTS).exists():
        raise LabUnhealthyError(
            f"{directory} holds a partial lab state (no lab.json or iia.env): run `iia-lab down` "
            "to clear it, then `iia-lab up` (or just rerun this notebook to start its own lab)")
    if recorded is not None:
        endpoints, env, state = recorded
        health = probe_all(endpoints, timeout=1.0)
        sick = [h for h in health if not h.healthy]
        if sick:
            names = ", ".join(f"{h.service} ({h.detail})" for h in sick)
            raise LabUnhealthyError(
                f"the lab recorded in {directory} (mode {state.get('mode', '?')}) is unhealthy: "
                f"{names}. Run `iia-lab status` to see it, then `iia-lab down` and `iia-lab up` "
                "to restart it (or `iia-lab down` alone and this notebook starts its own lab).")
        fixtures = Path(state["fixtures"]) if state.get("fixtures") else fixtures_dir()
        return LabSession(endpoints=endpoints, env=env, attached=True, health=health,
                          fixtures=fixtures)
    from harness.lab import Lab, LabSettings  # attaching to `iia-lab up`'s lab needs none of it

    private = Path(tempfile.mkdtemp(prefix="iia-notebook-"))
    shutil.copytree(fixtures_dir(), private / "fixtures")
    lab = Lab(LabSettings.from_env(fixtures=private / "fixtures"))
    try:
        lab.start()
    except BaseException:
        lab.stop()
        shutil.rmtree(private, ignore_errors=True)
        raise
    session = LabSession(endpoints=dict(lab.endpoints), env=lab.iia_env(), lab=lab,
                         health=probe_all(lab.endpoints, timeout=1.0),
                         fixtures=private / "fixtures", _private=private)
    atexit.register(session.close)
    return session


def restore_policy_backup(directory: Path) -> list[Path]:
    """Undo the policy edits that kernels killed mid-edit left behind (a backup whose process
    is gone); returns the restored files."""
    restored = []
    for backup in directory.glob(POLICY_BACKUP.format(pid="*")):
        pid = backup.name.split(".")[1]
        if pid.isdigit() and process_alive(int(pid)):
            continue  # that kernel is still editing: its own `finally` restores it
        try:
            saved = json.loads(backup.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        policy = Path(saved["path"])
        if policy.parent.is_dir():
            policy.write_text(saved["text"])
            print(f"restored {policy}: a previous kernel exited while it was edited")
            restored.append(policy)
        backup.unlink(missing_ok=True)
    return restored


# background of an event row by its outcome (the notebooks' tables and the widgets' event table)
OUTCOME_COLORS = {"success": "#e8f5e9", "denied": "#ffebee", "error": "#ffebee",
                  "expired": "#ffebee", "retry": "#fff8e1", "pending": "#e3f2fd"}


def events_html(events: Iterable[Any], columns: tuple[str, ...] = (
        "type", "outcome", "durationMs", "spiffeId", "reason")) -> str:
    """An HTML table of events (their wire form), one colored row per event."""
    rows = []
    for event in events:
        wire = event.to_dict() if hasattr(event, "to_dict") else dict(event)
        extra = {k: v for k, v in wire.items()
                 if k not in columns and k not in ("eventId", "timestamp", "correlation")}
        cells = "".join(f"<td>{html.escape(str(wire.get(c, '')))}</td>" for c in columns)
        cells += f"<td><code>{html.escape(json.dumps(extra))}</code></td>"
        color = OUTCOME_COLORS.get(str(wire.get("outcome")), "#ffffff")
        rows.append(f'<tr style="background:{color}">{cells}</tr>')
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*columns, "details"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
