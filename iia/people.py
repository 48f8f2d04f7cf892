"""Who a tool call names: SCIM ids (RFC 7643 §3.1 `id`) shown to a person as
"Display Name <user@example.com>" (a user) or the group's display name, never as bare ids.

The names come from the directory only: what the admin API answered to this session's own reads
(`learn`: a SCIM resource with its `id`, its `userName` and `displayName`, raw as the admin API
sends it or compacted as the model reads it), never from text the model wrote. The model names
its target by id; the id was in a read result before, or it is shown as not read (`user`,
`group`): the summary then says so with the id, rather than the id alone, and the phone shows
what the IdP's own directory says of it.

    names = Names()
    names.learn(admin_api_answer)              # users and groups, by their ids
    names.summary(tool, arguments)             # "Deactivate user Ivan Ivanov <ivan@example.com>"
    SessionNames().of(sid)                     # one Names per user session (bounded)

What is shown is bounded and plain text: control characters and line breaks become spaces, a
display name is cut at 40 characters and an address at 64, so a summary fits an OpenID CIBA
binding message (the tenant takes 200 characters) and no directory entry can forge lines on a
phone.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iia.catalog import Tool

__all__ = ["GROUP_ARGS", "USER_ARGS", "Names", "SessionNames", "plain"]

USER_ARGS = ("user_id",)
GROUP_ARGS = ("group_id",)
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
NAME_MAX = 40
EMAIL_MAX = 64
TTL = 900.0  # a name read 15 minutes ago is read again before it is shown
MAX_NAMES = 10_000
MAX_SESSIONS = 1_000
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e]+")


def plain(text: str, most: int) -> str:
    """`text` as one short line of plain text: no control or direction characters, single
    spaces, at most `most` characters (cut with an ellipsis)."""
    if len(text) <= most and text.isprintable() and text == text.strip() and "  " not in text:
        return text  # the common case, and str.isprintable refuses every control character
    line = " ".join(_UNPRINTABLE.sub(" ", text).split())
    return line if len(line) <= most else line[:most - 1] + "…"


def _person(resource: Mapping[str, Any]) -> str | None:
    email = resource.get("userName")
    if not isinstance(email, str) or not email:
        return None
    shown = resource.get("displayName")
    address = plain(email, EMAIL_MAX)
    if isinstance(shown, str) and plain(shown, NAME_MAX):
        return f"{plain(shown, NAME_MAX)} <{address}>"
    return address


def _kind(resource: Mapping[str, Any]) -> str | None:
    """"user", "group" or None: by the resource's SCIM schema when it names one (the admin
    API's raw answer), else by its shape (the compacted answer the model reads)."""
    schemas = resource.get("schemas")
    if isinstance(schemas, list) and schemas:
        return "user" if USER_SCHEMA in schemas else "group" if GROUP_SCHEMA in schemas else None
    if "userName" in resource:
        return "user"
    if isinstance(resource.get("displayName"), str) and "members" in resource:
        return "group"
    return None


class Names:
    """Users and groups by id, as this conversation's reads returned them (thread-safe,
    bounded: the oldest names go first, and a name older than `ttl` is not shown)."""

    def __init__(self, *, ttl: float = TTL, max_names: int = MAX_NAMES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_names, self._clock = ttl, max_names, clock
        self._lock = threading.Lock()
        self._names: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    # -- learning, from the directory's answers ---------------------------------------------------

    def learn(self, body: Any) -> None:
        """Remember every user and group in `body`: a SCIM resource, a list response's
        `Resources` (RFC 7644 §3.4.2), or the compacted forms the model reads (`users`,
        `groups`, a `user`); JSON text accepted. Only those places are read, so learning from
        a 100-user page costs one pass over it."""
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                return
        if not isinstance(body, dict):
            return
        resources: list[Any] = [body]
        for key in ("Resources", "users", "groups"):
            if isinstance(body.get(key), list):
                resources.extend(body[key][:self.max_names])
        if isinstance(body.get("user"), dict):
            resources.append(body["user"])
        now = self._clock()
        learned: list[tuple[tuple[str, str], str]] = []
        for item in resources:
            if not isinstance(item, dict):
                continue
            ident, kind = item.get("id"), _kind(item)
            if not isinstance(ident, str) or not ident:
                continue
            if kind == "user":
                person = _person(item)
                if person:
                    learned.append((("user", ident), person))
            elif kind == "group":
                learned.append((("group", ident), plain(str(item["displayName"]), NAME_MAX)))
        if learned:
            with self._lock:
                for found, name in learned:
                    self._put(found, name, now)

    def absent(self, kind: str, ident: str) -> None:
        """The directory answered that there is no such user (or group) `ident`."""
        self._remember(kind, ident, "")

    def _remember(self, kind: str, ident: str, name: str) -> None:
        with self._lock:
            self._put((kind, ident), name, self._clock())

    def _put(self, key: tuple[str, str], name: str, now: float) -> None:
        """The caller holds the lock."""
        self._names.pop(key, None)
        self._names[key] = (name, now)
        while len(self._names) > self.max_names:
            self._names.popitem(last=False)

    # -- showing ---------------------------------------------------------------------------------

    def known(self, kind: str, ident: str) -> str | None:
        """The name of user or group `ident` ("" when the directory said there is none), or
        None when this conversation has not read it lately."""
        with self._lock:
            found = self._names.get((kind, ident))
        if found is None or self._clock() - found[1] > self.ttl:
            return None
        return found[0]

    def _shown(self, kind: str, ident: str) -> str:
        name = self.known(kind, ident)
        if name:
            return name
        shown = plain(ident, 64)
        if name == "":
            return f"{shown} (no such {kind} in the directory)"
        return f"{shown} (name unknown: not read in this session)"

    def user(self, ident: str) -> str:
        """"Ivan Ivanov <ivan@example.com>", or the id and why it is not named."""
        return self._shown("user", ident)

    def group(self, ident: str) -> str:
        """"Engineering", or the id and why it is not named."""
        return self._shown("group", ident)

    def arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """`arguments` with each user and group id replaced by what a person reads."""
        out = dict(arguments)
        for key in USER_ARGS:
            if isinstance(out.get(key), str):
                out[key] = self.user(out[key])
        for key in GROUP_ARGS:
            if isinstance(out.get(key), str):
                out[key] = self.group(out[key])
        return out

    def summary(self, tool: Tool, arguments: Mapping[str, Any]) -> str:
        """The tool's one-line summary naming people, not ids (the catalog's template)."""
        return tool.summary(self.arguments(arguments))

    def readable(self, text: str) -> str:
        """`text` with every id this conversation has named replaced by its name."""
        with self._lock:
            named = [(ident, name) for (_, ident), (name, _) in self._names.items() if name]
        for ident, name in named:
            if ident in text:
                text = text.replace(ident, name)
        return text


class SessionNames:
    """One `Names` per user session (the IdP's `sid`): what one session read never names
    people for another. At most `max_sessions`, the least recently used dropped first."""

    def __init__(self, *, max_sessions: int = MAX_SESSIONS,
                 factory: Callable[[], Names] = Names) -> None:
        self.max_sessions, self._factory = max_sessions, factory
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Names] = OrderedDict()

    def of(self, sid: str) -> Names:
        with self._lock:
            names = self._sessions.pop(sid, None) or self._factory()
            self._sessions[sid] = names
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return names
