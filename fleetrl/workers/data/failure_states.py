"""Where episodes fail: the states return-and-explore sends robots back to (VLAC §3.2.3).

For every failed or timed-out online episode we keep one *failure point*: the step where the episode's
progress peaked before it stopped improving, i.e. the last good state before things went wrong.
Progress is the cumulative reward when a learned progress critic gave the rewards (its rewards are
progress deltas), else the per-step environment reward (dense rewards such as Reacher's negative
distance rate each state). A reward that never changes (sparse) says nothing; then the point is a
quarter of the episode before its end. Only episodes a simulator can replay to are kept: their robot
reported a reset seed and they did not themselves start from a restored state.

``histogram`` says where along their episodes failures happen (step / length, ten bins), ``sample``
draws a recorded point for a reset. Pure Python and numpy; the data server owns one per task.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import numpy as np

from fleetrl.robots.episode import Episode

FAILED = ("failure", "timeout")


def failure_step(rewards: np.ndarray, cumulative: bool) -> int:
    """The step whose state had the most progress (the last such step on ties); see the module doc."""
    progress = np.cumsum(rewards) if cumulative else np.asarray(rewards, dtype=np.float64)
    if len(progress) == 0:
        return 0
    if np.ptp(progress) == 0:
        return max(0, len(progress) - 1 - len(progress) // 4)
    return int(len(progress) - 1 - np.argmax(progress[::-1]))


def replayable(episode: Episode) -> bool:
    return "reset_seed" in episode.meta and not episode.meta.get("reset_from_episode")


class FailureStates:
    """The recent failure points of one task."""

    def __init__(self, progress_rewards: bool, keep: int = 512, seed: int = 0):
        self.progress_rewards = progress_rewards
        self.points: deque[dict[str, Any]] = deque(maxlen=keep)
        self._rng = random.Random(seed)

    def add(self, episode: Episode) -> dict[str, Any] | None:
        if episode.source != "online" or episode.outcome not in FAILED or not replayable(episode):
            return None
        step = failure_step(episode.columns["reward"], self.progress_rewards)
        point = {
            "episode_id": episode.episode_id,
            "robot_id": episode.robot_id,
            "step": step,
            "length": len(episode),
            "outcome": episode.outcome,
        }
        self.points.append(point)
        return point

    def histogram(self, bins: int = 10) -> list[int]:
        fractions = [p["step"] / max(1, p["length"]) for p in self.points]
        return np.histogram(fractions, bins=bins, range=(0.0, 1.0))[0].tolist()

    def sample(self) -> dict[str, Any] | None:
        return self._rng.choice(self.points) if self.points else None

    def summary(self, last: int = 20) -> dict[str, Any]:
        return {"count": len(self.points), "histogram": self.histogram(), "recent": list(self.points)[-last:]}
