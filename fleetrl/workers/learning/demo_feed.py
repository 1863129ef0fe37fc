"""Demo replay for the learner (VLAC eq. 6; ``algorithms/demo_replay.py``): when to take an imitation step
and where its demonstration batches come from.

Demonstrations are the task's offline replay partition (demos, play and imported data, and the human
demonstrations recorded through the robot client), sampled with ``offline_fraction=1.0``. The feed never
blocks the learner while there are none: it polls the replay sizes in the background and says why it waits.
"""

from __future__ import annotations

from typing import Any

import ray

from fleetrl.algorithms.base import Algorithm
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.demo_replay import DemoReplayConfig
from fleetrl.workers.learning.sampling import UNAVAILABLE, ReplayBatches


class DemoFeed:
    """``next()``: a demonstration batch, or None with the reason in ``waiting``."""

    def __init__(self, data: Any, task: str, cfg: DemoReplayConfig, prefetch: int):
        self.data, self.task, self.cfg = data, task, cfg
        self.waiting: str | None = "waiting for demos"
        self._episodes = 0  # offline episodes last seen (the offline partition is never evicted)
        self._sizes: Any = None  # ref of the replay sizes, while waiting for min_demos
        self._batches = ReplayBatches(data, task, prefetch)

    def next(self) -> ChunkBatch | None:
        """Batches come ``prefetch`` per data-server call with the next call in flight, as replay batches
        do for off-policy learners; none until the offline partition holds ``min_demos`` episodes."""
        if self._episodes < self.cfg.min_demos and not self._enough_demos():
            return None
        try:
            batch = self._batches.next(self.cfg.batch_size, 1.0)
        except ray.exceptions.RayTaskError as exc:  # replay emptied (a data server rebuilding it)
            return self._reset(f"waiting for demos: {exc.cause}")
        except UNAVAILABLE as exc:  # the data server is restarting
            return self._reset(f"waiting for the data server ({type(exc).__name__})")
        if not batch.offline.all():  # with the offline partition empty the replay fills in online rows
            return self._reset("waiting for demos: the offline partition is empty")
        self.waiting = None
        return batch

    def _enough_demos(self) -> bool:
        if self._sizes is None:
            self._sizes = self.data.stats.remote(self.task)
        if not ray.wait([self._sizes], timeout=0)[0]:
            return False
        try:
            self._episodes, self._sizes = ray.get(self._sizes)["replay"]["offline_episodes"], None
        except UNAVAILABLE:  # the data server is restarting: ask the new one
            self._sizes = None
            return False
        if self._episodes < self.cfg.min_demos:
            self.waiting = f"waiting for demos: {self._episodes}/{self.cfg.min_demos} episodes"
            return False
        return True

    def _reset(self, why: str) -> None:
        self._episodes, self.waiting = 0, why
        self._batches.clear()
        return None


class DemoReplay:
    """VLAC eq. 6, offline demonstration replay: after every ``every``-th online update, one optimizer step
    of ``weight * L_demo`` on the policy (``Algorithm.imitation_step``) on a batch drawn from the task's
    offline partition only. Keeps the latest demo step's metrics (``demo_loss``, ...) to report them also
    between demo steps, so every report and TensorBoard point carries them."""

    def __init__(
        self, data: Any, task: str, cfg: DemoReplayConfig, prefetch: int, offline_steps: int, family: str
    ):
        self.cfg, self.offline_steps, self.family = cfg, offline_steps, family
        self.feed = DemoFeed(data, task, cfg, prefetch)
        self.metrics: dict[str, float] = {}

    def after_update(self, algorithm: Algorithm, step: int) -> dict[str, float]:
        """Called after the update that makes learner step ``step``; takes a demo step when one is due."""
        if not self.cfg.due(step, self.offline_steps):
            return self.metrics
        batch = self.feed.next()
        # without a batch the step still runs: a multi-worker learner's workers step together (idle_step)
        self.metrics = algorithm.imitation_step(batch, self.family, self.cfg) or self.metrics
        return self.metrics

    def status(self, step: int) -> str:
        """The learner status' ``demo_replay``: off, not started yet, waiting (why) or active."""
        if self.cfg.weight <= 0:
            return "off"
        if step < self.offline_steps:
            return "starts after the offline pretraining steps"
        return self.feed.waiting or "active"
