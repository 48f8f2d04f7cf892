"""What the lab notebooks share: attach to a running lab or start one, and show events.

Notebooks stay thin: they call this, call `iia`, show the result and assert their point.
"""

from __future__ import annotations

import html
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.health import probe_all
from harness.lab import Lab, LabSettings
from harness.lab_state import read_state
from harness.paths import fixtures_dir, lab_dir

__all__ = ["LabSession", "attach_or_start", "events_html"]


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

    def close(self) -> None:
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
    """Use the lab `iia-lab up` runs (if it is healthy), else start one in this kernel, on a
    private copy of the fixtures (so what a notebook edits goes away with it)."""
    directory = lab_dir()
    endpoints, env, state = read_state(directory) or ({}, {}, {})
    if endpoints:
        health = probe_all(endpoints, timeout=1.0)
        if all(h.healthy for h in health):
            fixtures = Path(state["fixtures"]) if state.get("fixtures") else fixtures_dir()
            return LabSession(endpoints=endpoints, env=env, attached=True, health=health,
                              fixtures=fixtures)
    private = Path(tempfile.mkdtemp(prefix="iia-notebook-"))
    shutil.copytree(fixtures_dir(), private / "fixtures")
    lab = Lab(LabSettings.from_env(fixtures=private / "fixtures"))
    try:
        lab.start()
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    return LabSession(endpoints=dict(lab.endpoints), env=lab.iia_env(), lab=lab,
                      health=probe_all(lab.endpoints, timeout=1.0),
                      fixtures=private / "fixtures", _private=private)


_COLORS = {"success": "#e8f5e9", "denied": "#ffebee", "error": "#ffebee", "retry": "#fff8e1",
           "pending": "#e3f2fd"}


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
        color = _COLORS.get(str(wire.get("outcome")), "#ffffff")
        rows.append(f'<tr style="background:{color}">{cells}</tr>')
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*columns, "details"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
