"""Workload attestation by Unix peer credentials, like SPIRE's `unix` workload attestor.

The Workload API listens on a unix socket. For each connection the kernel tells us who is on the
other end (`SO_PEERCRED`: pid, uid, gid as of `connect()`); from the pid we read the executable
path (`/proc/<pid>/exe`). Those facts become selectors (`unix:uid:1000`, `unix:user:alice`,
`unix:gid:1000`, `unix:group:staff`, `unix:path:/usr/bin/python3.11`). A registration entry
matches when all of its selectors are among the caller's; the caller receives the SPIFFE IDs of
the entries it matches, and nothing when it matches none.

Registration entries live in `fixtures/spire/entries.json`. Selector values may use
`${LAB_UID}`, `${LAB_USER}`, `${LAB_GID}` and `${LAB_PYTHON}` (the uid/user/gid running the lab and
the real path of its Python interpreter), because a checked-in fixture cannot know them.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import string
import struct
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PeerCredentials",
    "RegistrationEntry",
    "Registry",
    "lab_substitutions",
    "load_registry",
    "peer_credentials",
]

_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int
    exe: str | None

    def selectors(self) -> frozenset[str]:
        out = {f"unix:uid:{self.uid}", f"unix:gid:{self.gid}"}
        with contextlib.suppress(KeyError):
            out.add(f"unix:user:{pwd.getpwuid(self.uid).pw_name}")
        with contextlib.suppress(KeyError):
            out.add(f"unix:group:{grp.getgrgid(self.gid).gr_name}")
        if self.exe:
            out.add(f"unix:path:{self.exe}")
        return frozenset(out)


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Read the connected peer's credentials from the kernel (Linux `SO_PEERCRED`)."""
    if not hasattr(socket, "SO_PEERCRED"):
        raise OSError("SO_PEERCRED is not available on this platform; cannot attest workloads")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    try:
        exe: str | None = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None  # the process is gone, or /proc is not readable: no path selector
    return PeerCredentials(pid=pid, uid=uid, gid=gid, exe=exe)


@dataclass(frozen=True)
class RegistrationEntry:
    spiffe_id: str
    selectors: frozenset[str]
    hint: str = ""

    def matches(self, selectors: Iterable[str]) -> bool:
        return bool(self.selectors) and self.selectors <= frozenset(selectors)


class Registry:
    """The registration entries the agent knows; entries can be added at run time (like
    `spire-server entry create`)."""

    def __init__(self, trust_domain: str, entries: Iterable[RegistrationEntry] = ()) -> None:
        self.trust_domain = trust_domain
        self._lock = threading.Lock()
        self._entries: list[RegistrationEntry] = []
        for entry in entries:
            self.add(entry)

    def add(self, entry: RegistrationEntry) -> RegistrationEntry:
        prefix = f"spiffe://{self.trust_domain}/"
        if not entry.spiffe_id.startswith(prefix):
            raise ValueError(f"{entry.spiffe_id} is not in trust domain {self.trust_domain}")
        if not entry.selectors:
            raise ValueError("a registration entry needs at least one selector")
        with self._lock:
            self._entries.append(entry)
        return entry

    def remove(self, entry: RegistrationEntry) -> None:
        with self._lock:
            self._entries.remove(entry)

    def entries(self) -> list[RegistrationEntry]:
        with self._lock:
            return list(self._entries)

    def match(self, peer: PeerCredentials) -> list[RegistrationEntry]:
        selectors = peer.selectors()
        return [e for e in self.entries() if e.matches(selectors)]


def lab_substitutions() -> dict[str, str]:
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {
        "LAB_UID": str(uid),
        "LAB_GID": str(gid),
        "LAB_USER": user,
        "LAB_PYTHON": os.path.realpath(sys.executable),
    }


def load_registry(path: Path, substitutions: Mapping[str, str] | None = None) -> Registry:
    """Load `entries.json` ({"trust_domain": ..., "entries": [{spiffe_id, selectors, hint}]})."""
    data = json.loads(path.read_text())
    subs = dict(lab_substitutions() if substitutions is None else substitutions)
    entries = []
    for raw in data["entries"]:
        selectors = frozenset(string.Template(s).substitute(subs) for s in raw["selectors"])
        entries.append(RegistrationEntry(raw["spiffe_id"], selectors, raw.get("hint", "")))
    return Registry(data["trust_domain"], entries)
