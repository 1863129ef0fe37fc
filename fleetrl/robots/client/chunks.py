"""What the control loop keeps between the policy and the robot: an action chunk the gateway sent (and
how far the robot has executed it), and the request for the next one that is still unanswered."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Chunk:
    """Actions computed from the observation of ``obs_step``; ``index`` is the next one to execute."""

    actions: np.ndarray
    obs_step: int
    obs_time: float
    version: int
    replica: str
    log_prob: float
    index: int = 0

    @property
    def remaining(self) -> int:
        return len(self.actions) - self.index


@dataclass
class Request:
    """An observation sent for a chunk, not answered yet (the watchdog re-sends it past the deadline)."""

    step: int
    t_sent: float
    obs_time: float
