"""What the lab notebooks share: attach to a running lab or start one, and show events.

Notebooks stay thin: they call this, call `iia`, show the result and assert their point. They
reach the lab only through `session.endpoints`, `session.env` and the lab's HTTP APIs.

A lab a notebook starts is the process topology `iia-lab up` runs (`harness.supervisor`: one
OS process per zone), on a private copy of the fixtures and in a private lab directory
(`$TMPDIR/iia-notebook-*/lab`), so it never touches the `.lab/` of a person's `iia-lab up` and
what the notebook edits goes away with it. Its logs are in `session.lab_directory / "logs"`.

A notebook leaves nothing behind, even when an assertion fails half-way or the kernel is shut
down: the lab it started is stopped by `session.close()` or else at interpreter exit; if the
kernel is killed, its children die with it (the supervisor's parent-death signal) and the next
`attach_or_start()` removes the files it left (`remove_abandoned_labs`). A policy edited with
`session.edited_policy(...)` is put back at the end of the block, at interpreter exit, or (if
the kernel was killed while editing the policy of an attached lab) by the next
`attach_or_start()`.
"""

from __future__ import annotations

import atexit
import html
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.health import probe_all
from harness.lab_state import ENDPOINTS, STATE, process_alive, read_json, read_state
from harness.paths import fixtures_dir, lab_dir

if TYPE_CHECKING:  # the supervisor (and OpenBao's client) load only to start a lab
    from harness.supervisor import ServiceStatus, Supervisor

__all__ = ["LabSession", "LabUnhealthyError", "attach_or_start", "events_html",
           "remove_abandoned_labs", "start_lab"]

# The original of a policy being edited (one per editing process), so a killed kernel's edit
# is undone next time.
POLICY_BACKUP = "policy-backup.{pid}.json"
# A notebook's private directory (fixtures/, lab/) and the file naming the kernel that owns it.
PRIVATE_PREFIX = "iia-notebook-"
OWNER = "owner.json"


class LabUnhealthyError(HarnessError):
    """`.lab/` says a lab runs, but some of its services do not answer: a notebook must not
    quietly use another lab instead."""


@dataclass
class LabSession:
    """Endpoints and `IIA_*` settings of the lab this notebook uses. `supervisor` is set when
    the notebook started the lab itself (then `close()` stops it)."""

    endpoints: dict[str, str]
    env: dict[str, str]
    supervisor: Supervisor | None = None
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

    @property
    def lab_directory(self) -> Path:
        """The lab directory of the lab in use: `.lab/` when attached, the private one (its
        `logs/` hold each service's output) when this session started it."""
        return self._private / "lab" if self._private is not None else lab_dir()

    def status(self) -> list[ServiceStatus]:
        """Service, pid, state, uptime and restarts of the lab this session started (an
        attached lab: `iia-lab status`)."""
        if self.supervisor is None:
            raise HarnessError("this session attached to a lab it did not start: run "
                               "`iia-lab status`")
        return self.supervisor.status()

    @contextmanager
    def edited_policy(self, text: str) -> Iterator[Path]:
        """Replace the lab's Cedar policy with `text` for the block, then restore the original,
        also when the block fails or the interpreter exits inside it. The original is kept in
        `policy-backup.<pid>.json` of the lab directory meanwhile, so even a killed kernel's
        edit of an attached lab's policy is undone by the next `attach_or_start()` (a private
        lab's policy goes away with its directory)."""
        policy = self.policy_file
        original = policy.read_text()
        backup = self.lab_directory / POLICY_BACKUP.format(pid=os.getpid())
        backup.parent.mkdir(parents=True, exist_ok=True)
        backup.write_text(json.dumps({"path": str(policy), "text": original}))

        def restore() -> None:
            if policy.parent.is_dir():  # a private lab's fixtures may be gone already
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
        """Stop the lab this session started (every child process gone) and remove its files
        (idempotent)."""
        _OPEN[:] = [(pid, s) for pid, s in _OPEN if s is not self]
        supervisor, self.supervisor = self.supervisor, None
        runtime_dir = supervisor.runtime_dir if supervisor is not None else None
        try:
            if supervisor is not None:
                supervisor.stop()
        finally:  # even when stop() failed half-way: its children die with this process
            if runtime_dir is not None:
                shutil.rmtree(runtime_dir, ignore_errors=True)
            if self._private is not None:
                shutil.rmtree(self._private, ignore_errors=True)
                self._private = None

    def describe(self) -> str:
        how = ("attached to the running lab" if self.attached else
               "started a lab for this session (one process per zone)")
        return f"{how}: " + ", ".join(f"{k}={v}" for k, v in sorted(self.endpoints.items()))


def attach_or_start() -> LabSession:
    """Use the lab `iia-lab up` runs (recorded in `.lab/` and healthy), else start one for this
    kernel: the process topology under a `Supervisor`, on a private copy of the fixtures and in
    a private lab directory. A lab started here is stopped by `close()`, else at interpreter
    exit (kernel shutdown or restart); a killed kernel's children die with it.

    Raises `LabUnhealthyError` when `.lab/` records a lab but some of its services are down:
    the notebook would otherwise pass against a lab the user never started; and
    `ServiceStartError` (naming the service, with its log tail) when the lab it starts fails."""
    directory = lab_dir()
    restore_policy_backup(directory)
    remove_abandoned_labs()
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
    return _start_private_lab()


def start_lab() -> LabSession:
    """Start a lab of this process's own, never attaching to a running one: the process topology
    under a `Supervisor`, on a private copy of the fixtures and in a private lab directory, so
    whatever is done in it leaves a lab a person runs untouched. Stopped by `close()`, else at
    interpreter exit."""
    return _start_private_lab()


def _start_private_lab() -> LabSession:
    from harness.lab_settings import LabSettings  # attaching to `iia-lab up`'s lab needs none
    from harness.supervisor import Supervisor

    private = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))
    (private / OWNER).write_text(json.dumps(_owner(os.getpid())))  # first: see the sweeper
    try:
        shutil.copytree(fixtures_dir(), private / "fixtures")
        supervisor = Supervisor(LabSettings.from_env(fixtures=private / "fixtures"),
                                directory=private / "lab")
        try:
            endpoints = supervisor.start()  # no budget: fails when a service fails, naming it
        except BaseException:
            supervisor.stop()
            raise
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    session = LabSession(endpoints=endpoints, env=dict(supervisor.env), supervisor=supervisor,
                         health=probe_all(endpoints, timeout=1.0),
                         fixtures=private / "fixtures", _private=private)
    _close_at_exit(session)
    return session


# The labs this process started and has not closed yet: closed at interpreter exit (by this
# process only: a forked child that exits does not stop its parent's labs).
_OPEN: list[tuple[int, LabSession]] = []
_hooked = False


def _close_open_sessions() -> None:
    for pid, session in list(_OPEN):
        if pid != os.getpid():
            continue
        with suppress(Exception):  # one that fails must not keep the others running
            session.close()


def _close_at_exit(session: LabSession) -> None:
    """Close `session` at interpreter exit if the notebook does not. The hook runs before the
    interpreter shuts its thread pools down (threading's pre-shutdown hook, where CPython has
    one): the supervisor stops OpenBao through one of its pools, which `atexit` is too late
    for ("cannot schedule new futures after shutdown")."""
    global _hooked
    if not _hooked:
        register = getattr(threading, "_register_atexit", None) or atexit.register
        register(_close_open_sessions)
        _hooked = True
    _OPEN.append((os.getpid(), session))


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22), which
    tells a process from a later one given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner(pid: int) -> dict[str, Any]:
    return {"pid": pid, "start_time": _start_time(pid)}


def _owner_alive(owner: dict[str, Any]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    return process_alive(pid) and _start_time(pid) == owner.get("start_time")


def remove_abandoned_labs(root: Path | None = None) -> list[Path]:
    """Remove what killed kernels' labs left in `root` (default: the temp directory): each
    private directory whose owning process is gone, with its supervisor's runtime directory.
    (Its children are gone already: they die with the kernel.) Returns the removed
    directories."""
    removed: list[Path] = []
    for private in sorted((root or Path(tempfile.gettempdir())).glob(PRIVATE_PREFIX + "*")):
        owner = read_json(private, OWNER)
        try:
            mine = private.is_dir() and private.stat().st_uid == os.getuid()
        except OSError:
            continue
        if owner is None or not mine or _owner_alive(owner):
            continue  # not a notebook's, someone else's, being created, or still in use
        runtime_dir = (read_json(private / "lab", STATE) or {}).get("runtime_dir")
        if isinstance(runtime_dir, str) and Path(runtime_dir).name.startswith("iia-lab-") \
                and Path(runtime_dir).is_dir():
            shutil.rmtree(runtime_dir, ignore_errors=True)
            removed.append(Path(runtime_dir))
        shutil.rmtree(private, ignore_errors=True)
        removed.append(private)
    return removed


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
        with suppress(OSError):
            backup.unlink()
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
