"""The learner's side of the weight board: each publish gives the fleet the policy as a new version, on a
schedule (``PublishSchedule``).

Versions only grow: a learner that restarts, from a checkpoint or from nothing while the board still holds
a version, continues above anything the fleet may have seen. Only a fresh start keeps version 0: the
replicas already serve those seeded initial weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import ray
from torch import nn

from fleetrl.workers.weights import to_numpy_state

log = logging.getLogger(__name__)


def first_version(resumed_version: int | None, board_version: int) -> int:
    """The version of a learner's first publish, given its checkpoint's version (None: no checkpoint) and
    the board's newest for the task (-1: none)."""
    if resumed_version is None and board_version < 0:
        return 0
    return max(resumed_version or 0, board_version) + 1


class PublishSchedule:
    """When the learner publishes: every ``every`` updates; a learner that samples replay (off-policy) at
    most once per ``min_interval_s``: a version due sooner waits for a later step, it is never dropped.
    On-policy learners publish when due (their next batch must come from the new weights)."""

    def __init__(self, every: int, min_interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.every, self.min_interval_s, self._clock = every, min_interval_s, clock
        self.due, self._last = False, -math.inf

    def updated(self, step: int) -> None:
        """Learner step ``step`` is done."""
        if step % self.every == 0:
            self.due = True

    def publish_now(self, off_policy: bool) -> bool:
        if not self.due:
            return False
        return not off_policy or self._clock() - self._last >= self.min_interval_s

    def published(self) -> None:
        self.due, self._last = False, self._clock()


class Publisher:
    """``publish()``: the policy's current weights to the board as ``version`` + 1 (the first one as
    ``first_version``). Replicas load a version at a batch boundary."""

    def __init__(
        self,
        weights: Any,
        task: str,
        policy: nn.Module,
        resumed_version: int | None,
        get: Callable[[Any], Any] = ray.get,
    ):
        self.weights, self.task, self.policy, self._get = weights, task, policy, get
        self._resumed_version = resumed_version
        self.version = resumed_version or 0
        self._ack: Any = None  # the board's ack of the last publish, awaited only before the next

    def publish(self, initial: bool = False) -> int:
        """Publish and return the new version. The ``initial`` publish waits for the board: replicas
        starting now must find it."""
        if initial:
            newest = self._get(self.weights.latest.remote(self.task))
            self.version = first_version(self._resumed_version, newest[0] if newest else -1)
        else:
            self.version += 1
        state = to_numpy_state(self.policy.state_dict())
        if self._ack is not None:
            try:
                self._get(self._ack)  # back-pressure (usually long done) and surfaces a failed publish
            except ray.exceptions.RayActorError:  # the board died with it; this publish supersedes it
                log.warning("weights: the board lost %s version %d; publishing %d", self.task,
                            self.version - 1, self.version)  # fmt: skip
        self._ack = self.weights.publish.remote(self.task, self.version, state)
        if initial:
            self._get(self._ack)
        return self.version
