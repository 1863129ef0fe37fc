"""What a ``hello`` may cost before the peer is known: token buckets per connection and for everyone, and a
cache of verified credentials, so a flood of bad hellos neither reaches the registry nor starves the robots
that are already connected.

Every hello first spends a token of its connection's bucket (a robot reconnecting says hello a few times a
second at most). Hellos whose credentials the gateway has verified before are then checked locally
(SHA-256 of the token against the cached one, constant-time); only the rest — unknown robots, wrong
tokens of unknown robots, the first hello after a gateway start — spend a token of the shared bucket and
go to the registry. A connection or the whole gateway over its budget gets ``rate_limited``. A CURVE
handshake for a key not seen yet waits its turn for the shared budget instead (up to a bound), so a whole
fleet connecting at once (a gateway restart) is admitted at the budget's rate, not refused.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take()`` spends one if there is one."""

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.t = burst, now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def reserve(self, now: float, max_wait_s: float) -> float | None:
        """Spend a token that may not be there yet: the seconds until it is (0: now), or None when that
        would be more than ``max_wait_s`` (nothing spent). Reservations queue in order at ``rate``."""
        self._refill(now)
        if self.tokens - 1.0 < -self.rate * max_wait_s:
            return None
        self.tokens -= 1.0
        return max(0.0, -self.tokens / self.rate)

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now


@dataclass
class Verified:
    token_sha256: str
    record: dict[str, Any]
    until: float


class HelloLimits:
    """Per-connection and overall hello budgets, and the verified-credentials cache.

    ``admit(ident)`` says whether a hello from connection ``ident`` may be looked at; ``cached(robot_id,
    token)`` returns the robot's record when its credentials were verified before (None: ask the
    registry, after ``admit_registry_call()``), raising ``PermissionError`` for a token that does not
    match a verified robot's; ``remember`` stores a registry-verified record; ``forget`` drops a robot
    (deleted, revoked).
    """

    def __init__(
        self,
        per_peer_rate: float = 2.0,
        per_peer_burst: float = 5.0,
        registry_rate: float = 50.0,
        registry_burst: float = 100.0,
        cache_s: float = 300.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.per_peer_rate, self.per_peer_burst = per_peer_rate, per_peer_burst
        self.cache_s, self.max_peers = cache_s, max_peers
        self.clock = clock
        self._peers: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._registry = TokenBucket(registry_rate, registry_burst, clock())
        self._verified: dict[str, Verified] = {}

    def admit(self, ident: bytes) -> bool:
        now = self.clock()
        bucket = self._peers.get(ident)
        if bucket is None:
            bucket = self._peers[ident] = TokenBucket(self.per_peer_rate, self.per_peer_burst, now)
            while len(self._peers) > self.max_peers:  # a flood from many sockets: forget the oldest
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(ident)
        return bucket.take(now)

    def admit_registry_call(self) -> bool:
        return self._registry.take(self.clock())

    def reserve_registry_call(self, max_wait_s: float) -> float | None:
        """For a handshake, which cannot be answered "retry later" (libzmq does not re-dial a refused one):
        the seconds to wait for the shared budget, or None if it is booked beyond ``max_wait_s``."""
        return self._registry.reserve(self.clock(), max_wait_s)

    def cached(self, robot_id: str, token: str) -> dict[str, Any] | None:
        hit = self._verified.get(robot_id)
        if hit is None or hit.until < self.clock():
            return None
        if not hmac.compare_digest(hit.token_sha256, _sha256(token)):
            raise PermissionError("wrong token")
        return hit.record

    def remember(self, robot_id: str, token: str, record: dict[str, Any]) -> None:
        self._verified[robot_id] = Verified(_sha256(token), record, self.clock() + self.cache_s)

    def forget(self, robot_id: str) -> None:
        self._verified.pop(robot_id, None)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
