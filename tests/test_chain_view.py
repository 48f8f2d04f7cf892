"""The chain view's bookkeeping (iia.chat.chain_view): which of the seven steps of
docs/architecture.md §2 stopped a call, from its wire code and the steps the chain timed."""

from __future__ import annotations

from typing import Any

import pytest

from iia.chat.chain_view import chain_view


def view(tool: str, ok: bool, code: str | None, steps: dict[str, float]) -> dict[str, Any]:
    return chain_view({"callId": "c1", "tool": tool, "ok": ok, "code": code, "error": None,
                       "steps": steps, "obo": None})


def statuses(v: dict[str, Any]) -> list[str]:
    return [s["status"] for s in v["steps"]]


def test_a_read_that_went_through_needs_no_approval() -> None:
    v = view("list_users", True, None, {"svid": 1, "vault": 2, "exchange": 3, "admin_api": 4,
                                        "total": 11})
    assert v["stoppedAt"] is None and v["tier"] == 1
    assert statuses(v) == ["ok", "ok", "ok", "skipped", "ok", "ok", "ok"]
    assert [s["ms"] for s in v["steps"]] == [None, None, 3, None, 3, 4, None]


def test_a_write_that_went_through_shows_its_approval() -> None:
    v = view("create_user", True, None, {"svid": 1, "vault": 1, "approval": 900,
                                         "exchange": 3, "admin_api": 4})
    assert statuses(v) == ["ok"] * 7 and v["steps"][3]["ms"] == 900


@pytest.mark.parametrize(("tool", "code", "steps", "stopped"), [
    ("get_user", "invalid_arguments", {}, 2),
    ("list_users", "vault_unavailable", {}, 3),
    ("list_users", "workload_api_unavailable", {}, 3),
    ("deactivate_user", "approval_denied", {"svid": 1, "vault": 1}, 4),
    ("create_user", "approval_timeout", {"svid": 1, "vault": 1}, 4),
    ("delete_user", "access_denied", {"svid": 1, "vault": 1, "exchange": 5}, 5),
    ("list_users", "idp_unavailable", {"svid": 1, "vault": 1}, 5),
    ("create_user", "idp_unavailable", {"svid": 1, "vault": 1, "approval": 2}, 5),
    ("list_users", "admin_api_refused", {"svid": 1, "vault": 1, "exchange": 2,
                                         "admin_api": 3}, 6),
])
def test_the_step_that_stopped_a_call(tool: str, code: str, steps: dict[str, float],
                                      stopped: int) -> None:
    v = view(tool, False, code, steps)
    assert v["stoppedAt"] == stopped and v["code"] == code
    got = statuses(v)
    assert got[stopped - 1] == "stopped"
    assert all(s == "not_reached" for s in got[stopped:6])  # after it, up to the admin API
    assert got[6] == "ok"  # the refusal is an event too
    assert "stopped" not in got[:stopped - 1]
