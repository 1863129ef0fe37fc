"""The learner's supply of demonstration batches for demo replay (VLAC eq. 6; ``algorithms/demo_replay.py``).

Demonstrations are the task's offline replay partition (demos, play and imported data, and the human
demonstrations recorded through the robot client), sampled with ``offline_fraction=1.0``. The feed never
blocks the learner while there are none: it polls the replay sizes in the background and says why it waits.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import ray

from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.demo_replay import DemoReplayConfig


class DemoFeed:
    """``next()``: a demonstration batch, or None with the reason in ``waiting``."""

    def __init__(self, data: Any, task: str, cfg: DemoReplayConfig, prefetch: int):
        self.data, self.task, self.cfg, self.prefetch = data, task, cfg, prefetch
        self.waiting: str | None = "waiting for demos"
        self._episodes = 0  # offline episodes last seen (the offline partition is never evicted)
        self._sizes: Any = None  # ref of the replay sizes, while waiting for min_demos
        self._batches: deque[ChunkBatch] = deque()
        self._prefetch: Any = None  # ref of the next batches

    def next(self) -> ChunkBatch | None:
        """Batches come ``prefetch`` per data-server call with the next call in flight, as replay batches
        do for off-policy learners; none until the offline partition holds ``min_demos`` episodes."""
        if self._episodes < self.cfg.min_demos and not self._enough_demos():
            return None
        if not self._batches:
            args = (self.task, self.cfg.batch_size, self.prefetch, 1.0)
            fetch = self.data.sample_chunk_batches.remote
            ref, self._prefetch = self._prefetch or fetch(*args), fetch(*args)
            try:
                self._batches = deque(ray.get(ref))
            except ray.exceptions.RayTaskError as exc:  # replay emptied (a data server rebuilding it)
                return self._reset(f"waiting for demos: {exc.cause}")
        batch = self._batches.popleft()
        if not batch.offline.all():  # with the offline partition empty the replay fills in online rows
            return self._reset("waiting for demos: the offline partition is empty")
        self.waiting = None
        return batch

    def _enough_demos(self) -> bool:
        if self._sizes is None:
            self._sizes = self.data.stats.remote(self.task)
        if not ray.wait([self._sizes], timeout=0)[0]:
            return False
        self._episodes, self._sizes = ray.get(self._sizes)["replay"]["offline_episodes"], None
        if self._episodes < self.cfg.min_demos:
            self.waiting = f"waiting for demos: {self._episodes}/{self.cfg.min_demos} episodes"
            return False
        return True

    def _reset(self, why: str) -> None:
        self._episodes, self._batches, self._prefetch, self.waiting = 0, deque(), None, why
        return None
