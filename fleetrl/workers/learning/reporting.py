"""What the learner tells the platform: its status to its ``Learner`` actor (whose answer carries the
commands queued since), Prometheus metrics to the metrics server, and TensorBoard (and, if configured,
Weights & Biases) scalars.

Reports go out every ``report_every_s`` without blocking the loop: the status goes with a ``poll`` whose
answer is picked up at a later report, and the fleet's rollout statistics are asked for one report ahead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray

from fleetrl.extras import require
from fleetrl.workers.metrics_server import MetricsBuffer
from fleetrl.workers.task import WandbConfig

ROLLOUT_SCALARS = ("success_rate", "mean_return", "mean_length", "hold_fraction")


class Scalars:
    """The learner's metrics (``learner_steps_total``, ``learner_updates_per_second``, ``learner_loss``),
    shipped to the metrics server at each report, and its TensorBoard scalars (``<algorithm>/<loss>``,
    ``learner/version``, ``learner/updates_per_s``, ``rollout/<stat>``)."""

    def __init__(
        self,
        task: str,
        metrics_server: Any | None,
        tensorboard_dir: str | None,
        wandb: WandbConfig | None = None,
        config: dict[str, Any] | None = None,
    ):
        """``wandb``: also log to a W&B run (its files under ``tensorboard_dir``'s parent's ``wandb``),
        with ``config`` (the task's learner config) as the run's config."""
        self.task, self.server, self.buffer = task, metrics_server, MetricsBuffer()
        self.writer = self.run = None
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir)
        if wandb is not None:
            wandb_module = require("wandb", f"learner.wandb of task {task!r}")
            folder = Path(tensorboard_dir or ".").parent.parent / "wandb"
            folder.mkdir(parents=True, exist_ok=True)
            self.run = wandb_module.init(
                project=wandb.project, entity=wandb.entity, group=wandb.group, mode=wandb.mode, name=task,
                dir=str(folder), config=config or {},
            )  # fmt: skip

    def count_step(self, algorithm: str) -> None:
        self.buffer.inc("learner_steps_total", (self.task, algorithm))

    def log(
        self,
        step: int,
        version: int,
        algorithm: str,
        losses: dict[str, float],
        updates_per_s: float,
        rollout: dict[str, float],
    ) -> None:
        self.buffer.set("learner_updates_per_second", (self.task,), updates_per_s)
        for loss, value in losses.items():
            if np.isfinite(value):
                self.buffer.set("learner_loss", (self.task, loss), value)
        if self.server is not None:
            self.server.ingest.remote(*self.buffer.drain())
        scalars = {f"{algorithm}/{key}": value for key, value in losses.items()}
        scalars.update({"learner/version": version, "learner/updates_per_s": updates_per_s})
        scalars.update({f"rollout/{key}": rollout[key] for key in ROLLOUT_SCALARS if key in rollout})
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        if self.run is not None:
            self.run.log(scalars, step=step, commit=True)  # now, not when a later step arrives

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.run is not None:
            self.run.finish()
            self.run = None
            # W&B's service process outlives the run and kept 2/3 of a core busy afterwards (wandb 0.31);
            # a learner process has one run, so it ends with it
            require("wandb", f"learner.wandb of task {self.task!r}").teardown()


class Reporter:
    """Keeps the latest losses and timings, reports them, and hands out the commands that came back."""

    def __init__(
        self,
        task: str,
        report_every_s: float,
        data: Any,
        control: Any,
        metrics_server: Any | None,
        tensorboard_dir: str | None,
        wandb: WandbConfig | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.task, self.every_s, self.data, self.control = task, report_every_s, data, control
        self.scalars = Scalars(task, metrics_server, tensorboard_dir, wandb, config)
        self.losses: dict[str, float] = {}
        self.update_s = 0.0  # seconds in ``update`` + demo steps (the rest is waiting, I/O, publishing)
        # ... and the learner thread's CPU seconds in them: below update_s when other work takes the core
        self.update_cpu_s = 0.0
        self.updates_per_s = 0.0
        self.rollout: dict[str, float] = {}
        self._last_report, self._steps_at_report = 0.0, 0
        self._poll: Any = None  # the control actor's answer (queued commands) to the last status sent
        self._rollout_ref: Any = None
        self._commands: deque[dict[str, Any]] = deque()

    def record(self, algorithm: str, metrics: dict[str, float], seconds: float, cpu_seconds: float) -> None:
        """One learner step of ``algorithm`` that took ``seconds`` (``cpu_seconds`` of this thread's CPU
        time) and returned ``metrics``."""
        self.update_s += seconds
        self.update_cpu_s += cpu_seconds
        self.losses = {k: float(v) for k, v in metrics.items()}
        self.scalars.count_step(algorithm)

    def commands(self) -> Iterator[dict[str, Any]]:
        """The commands received so far, oldest first, including any a report made meanwhile brings."""
        self._exchange()
        while self._commands:
            yield self._commands.popleft()

    def report(
        self,
        step: int,
        version: int,
        algorithm: str,
        status: Callable[[], dict[str, Any]],
        force: bool = False,
    ) -> None:
        """Report if ``report_every_s`` passed since the last report (or ``force``): ``status()`` goes to
        the control actor unless the previous one is still unanswered."""
        now = time.monotonic()
        if not force and now - self._last_report < self.every_s:
            return
        if self._last_report:
            self.updates_per_s = (step - self._steps_at_report) / max(now - self._last_report, 1e-9)
        self._last_report, self._steps_at_report = now, step
        if self._rollout_ref is not None and ray.wait([self._rollout_ref], timeout=0)[0]:
            try:
                self.rollout = ray.get(self._rollout_ref)
            except ray.exceptions.RayActorError:  # the data server restarted: ask the new one next time
                pass
            self._rollout_ref = None
        if self._rollout_ref is None:
            self._rollout_ref = self.data.rollout_stats.remote(self.task)
        self._exchange()
        if self._poll is None or force:
            self._poll = self.control.poll.remote(status())
        self.scalars.log(step, version, algorithm, self.losses, self.updates_per_s, self.rollout)

    def _exchange(self) -> None:
        if self._poll is not None and ray.wait([self._poll], timeout=0)[0]:
            self._commands.extend(ray.get(self._poll))
            self._poll = None
