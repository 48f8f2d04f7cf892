"""The harness's expiring set (spent OBO jtis, revoked jtis, rotated secrets in grace)."""

from __future__ import annotations

import threading

from harness.expiring import ExpiringSet


def test_members_expire_and_only_one_racing_add_wins() -> None:
    now = [100.0]
    spent = ExpiringSet(lambda: now[0])
    assert spent.add("jti-1", until=160.0) and "jti-1" in spent
    assert not spent.add("jti-1", until=200.0)  # a second use is refused
    now[0] = 161.0
    assert "jti-1" not in spent  # expired, even before it is pruned
    assert spent.add("jti-1", until=300.0)

    winners: list[bool] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        winners.append(spent.add("jti-2", until=500.0))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(winners) == [False] * 7 + [True]
