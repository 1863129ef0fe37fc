"""Hello budgets and the verified-credentials cache on a fake clock."""

from __future__ import annotations

import pytest

from fleetrl.workers.gateway.hello_limits import HelloLimits, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.25) is False and bucket.take(0.5) is True  # half a second refills one token
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never above the burst


def test_reservations_queue_at_the_rate_up_to_the_bound():
    bucket = TokenBucket(rate=10.0, burst=2.0, now=0.0)
    waits = [bucket.reserve(0.0, max_wait_s=0.35) for _ in range(7)]
    # two tokens there, then one every 0.1 s; a fourth beyond 0.35 s is refused and spends nothing
    assert waits[:5] == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3]) and waits[5:] == [None, None]
    assert bucket.take(0.0) is False
    assert bucket.reserve(0.5, max_wait_s=0.35) == pytest.approx(0.0)  # 0.5 s later: all earned back


def test_each_connection_has_its_own_hello_budget():
    clock = Clock()
    limits = HelloLimits(per_peer_rate=1.0, per_peer_burst=2.0, clock=clock)
    assert [limits.admit(b"flood") for _ in range(5)] == [True, True, False, False, False]
    assert limits.admit(b"robot") and limits.admit(b"robot")  # another connection is not starved
    clock.t += 1.0
    assert limits.admit(b"flood") and not limits.admit(b"flood")


def test_registry_calls_share_one_budget():
    clock = Clock()
    limits = HelloLimits(registry_rate=10.0, registry_burst=3.0, clock=clock)
    assert sum(limits.admit_registry_call() for _ in range(100)) == 3
    clock.t += 0.5
    assert sum(limits.admit_registry_call() for _ in range(100)) == 3  # 5 refilled, capped at the burst


def test_verified_credentials_are_checked_locally_until_they_expire_or_are_forgotten():
    clock = Clock()
    limits = HelloLimits(cache_s=10.0, clock=clock)
    assert limits.cached("rbt_1", "secret") is None  # never verified: ask the registry
    limits.remember("rbt_1", "secret", {"task": "reach"})
    assert limits.cached("rbt_1", "secret") == {"task": "reach"}
    with pytest.raises(PermissionError):
        limits.cached("rbt_1", "guess")  # refused without a registry call
    clock.t += 11.0
    assert limits.cached("rbt_1", "secret") is None  # expired: verified again
    limits.remember("rbt_1", "secret", {"task": "reach"})
    limits.forget("rbt_1")  # deleted robot
    assert limits.cached("rbt_1", "secret") is None


def test_the_table_of_connections_is_bounded():
    limits = HelloLimits(max_peers=100, clock=Clock())
    for i in range(1000):
        limits.admit(f"peer-{i}".encode())
    assert len(limits._peers) == 100
