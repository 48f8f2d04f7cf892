"""The token-exchange access policy, in Cedar (cedarpy), reloaded whenever its file changes.

The tenant asks one question per exchange: may this user, through this actor, get a token for
this RAR type, given the tier, target and approval state? A `forbid` names the rule that refused
(`@id`) and the sentence the agent will read (`@reason`). When nothing permits, the answer is a
default deny. When the file does not parse (a trainer mid-edit), every exchange is refused with
the parse error: a broken policy never fails open.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from harness.verify.rar import RarRegistry

__all__ = ["PolicyDecision", "TokenExchangePolicy"]

RESOURCE = {"type": "Verify::AdminApi", "id": "v2.0"}


@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool
    policy_id: str
    reason: str


@dataclass
class _Loaded:
    stamp: tuple[int, int]
    policies: Any  # cedarpy.PolicySet, or None when the file does not parse
    annotations: dict[str, dict[str, str]]  # parser id -> annotations
    error: str | None


class TokenExchangePolicy:
    def __init__(self, path: Path, registry: RarRegistry) -> None:
        self.path = path
        self.registry = registry
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self.reloads = 0
        self._actions = self._action_entities()

    def _action_entities(self) -> dict[str, list[dict[str, Any]]]:
        """For each RAR type, the action entities a request for it needs: the action and its
        tier (`action in Verify::Action::"tierN"` reads the request's action's ancestors
        only), built once. Sending every type's entities with every request would make Cedar
        parse them all, each time, to the same decision."""
        return {spec.name: [
            {"uid": {"type": "Verify::Action", "id": spec.name}, "attrs": {},
             "parents": [{"type": "Verify::Action", "id": f"tier{spec.tier}"}]},
            {"uid": {"type": "Verify::Action", "id": f"tier{spec.tier}"}, "attrs": {},
             "parents": []}] for spec in self.registry.types.values()}

    def _current(self) -> _Loaded:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError as exc:
            return _Loaded((0, 0), None, {}, f"policy file {self.path} is unreadable: {exc}")
        with self._lock:
            if self._loaded is not None and self._loaded.stamp == stamp:
                return self._loaded
            text = self.path.read_text()
            try:
                annotations = {pid: p.get("annotations", {}) for pid, p in
                               json.loads(cedarpy.policies_to_json_str(text))
                               ["staticPolicies"].items()}
                policies = cedarpy.PolicySet.from_str(text)
                loaded = _Loaded(stamp, policies, annotations, None)
            except Exception as exc:  # cedarpy raises plain exceptions on parse errors
                loaded = _Loaded(stamp, None, {}, f"the tenant policy does not parse: {exc}")
            self._loaded = loaded
            self.reloads += 1
            return loaded

    def evaluate(self, *, user_id: str, user_email: str, groups: Iterable[str], rar_type: str,
                 context: Mapping[str, Any]) -> PolicyDecision:
        loaded = self._current()
        if loaded.policies is None:
            return PolicyDecision(False, "policy-unavailable", loaded.error or "no policy")
        group_names = sorted(set(groups))
        entities = [
            *self._actions.get(rar_type, ()),
            {"uid": {"type": "Verify::User", "id": user_id}, "attrs": {"email": user_email},
             "parents": [{"type": "Verify::Group", "id": g} for g in group_names]},
            *({"uid": {"type": "Verify::Group", "id": g}, "attrs": {}, "parents": []}
              for g in group_names),
            {"uid": RESOURCE, "attrs": {}, "parents": []},
        ]
        request = {"principal": {"type": "Verify::User", "id": user_id},
                   "action": {"type": "Verify::Action", "id": rar_type},
                   "resource": RESOURCE, "context": dict(context)}
        result = cedarpy.is_authorized(request, loaded.policies, entities)
        if result.diagnostics.errors:
            return PolicyDecision(False, "policy-error",
                                  "policy evaluation failed: "
                                  + "; ".join(map(str, result.diagnostics.errors)))
        reasons = result.diagnostics.reasons
        if not reasons:
            return PolicyDecision(False, "default-deny",
                                  f"no tenant policy permits {rar_type} for this user")
        first = loaded.annotations.get(reasons[0], {})
        policy_id = first.get("id", reasons[0])
        reason = first.get("reason", f"decided by policy {policy_id}")
        return PolicyDecision(result.allowed, policy_id, reason)
