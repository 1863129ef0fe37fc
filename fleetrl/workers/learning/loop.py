"""The learner's work inside its Ray Train worker: sample -> update -> publish -> checkpoint -> report.

``LearnerLoop`` owns the policy and holds the parts that do each step: the ``Sampler`` (replay batches or
fresh episodes), the ``AlgorithmSet`` (the current algorithm and those kept for switching back),
``DemoReplay`` (VLAC eq. 6 imitation steps), the ``Publisher`` (weight versions), ``Checkpoints`` (save and
restore) and the ``Reporter`` (status, commands, metrics, TensorBoard). Commands from the ``Learner``
actor (an algorithm switch, stop) apply at the next step boundary. A multi-worker learner runs this loop
on every worker; its ``WorkerGroup`` keeps them in step (``worker_group.py``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray
import torch

from fleetrl.algorithms.base import Algorithm, PolicySpec
from fleetrl.algorithms.batch import ChunkBatch, EpisodeBatch
from fleetrl.models.policies import build_policy
from fleetrl.workers.learning.algorithm_set import AlgorithmSet
from fleetrl.workers.learning.checkpoints import Checkpoints, registered_checkpoint
from fleetrl.workers.learning.demo_feed import DemoReplay
from fleetrl.workers.learning.publishing import Publisher, PublishSchedule
from fleetrl.workers.learning.reporting import Reporter
from fleetrl.workers.learning.sampling import Sampler
from fleetrl.workers.learning.worker_group import WorkerGroup
from fleetrl.workers.metrics_server import RemoteLogHandler
from fleetrl.workers.task import LearnerConfig, TaskConfig

log = logging.getLogger(__name__)


class Throttle:
    """At most ``per_s`` updates a second (None or 0: as fast as they come)."""

    def __init__(self, per_s: float | None):
        self.per_s, self._next_at = per_s, 0.0

    def wait(self) -> None:
        if self.per_s:
            wait = self._next_at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._next_at = time.monotonic() + 1.0 / self.per_s


class LearnerLoop:
    """The learner's work, inside the Ray Train worker. Owns the policy; algorithms own everything else."""

    POLL_S = 0.05  # wait between looks for fresh on-policy episodes (one cheap data-server call)

    def __init__(
        self,
        task: TaskConfig,
        learner: LearnerConfig,
        gamma: float,
        data: Any,
        weights: Any,
        control: Any,
        metrics: Any | None,
        tensorboard_dir: str | None,
        checkpoint_root: str,
        group: WorkerGroup | None = None,
    ):
        torch.set_num_threads(learner.torch_threads)
        self.task, self.cfg = task, learner
        device = ray.train.torch.get_device() if learner.num_gpus else torch.device("cpu")
        self.group = group = group or WorkerGroup(device=device)
        policy = build_policy(task.policy, task.observation_spec, task.action_spec, task.chunk_len).to(device)
        self.policy = policy
        spec = PolicySpec(task.observation_spec, task.action_spec, task.chunk_len, gamma)
        family, prefetch, offline_steps = task.policy.family, learner.prefetch_batches, learner.offline_steps
        self.algorithms = AlgorithmSet(policy, spec, family, device)
        self.checkpoints = Checkpoints(
            checkpoint_root, task.name, policy, self.algorithms, device, writes=group.leader
        )
        resumed = group.broadcast(self.checkpoints.restore(registered_checkpoint()) if group.leader else None)
        self.step = resumed.step if resumed else 0
        self.publisher = Publisher(weights, task.name, policy, resumed.version if resumed else None)
        self.sampler = Sampler(
            task.name, data, weights, prefetch, offline_steps, segments=learner.segment_steps > 0
        )
        self.demos = DemoReplay(data, task.name, learner.demo_replay, prefetch, offline_steps, family)
        lead = group.leader  # the others keep their numbers to themselves
        self.reporter = Reporter(
            task.name, learner.report_every_s, data, control, metrics if lead else None,
            tensorboard_dir if lead else None, learner.wandb if lead else None,
            learner.model_dump(mode="json", exclude={"wandb"}),
        )  # fmt: skip
        self.throttle = Throttle(learner.max_updates_per_s)
        self.schedule = PublishSchedule(learner.publish_every, learner.min_publish_interval_s)
        self.finished: str | None = None  # why the loop ended on its own (max_updates)
        self.activate(
            resumed.algorithm if resumed else learner.algorithm,
            resumed.algorithm_config if resumed else learner.config,
        )
        self.share_state()

    @property
    def algorithm(self) -> Algorithm:
        return self.algorithms.current

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> None:
        self.publish(initial=True)
        pending: ChunkBatch | EpisodeBatch | None = None  # sampled, waiting for the other workers' batches
        while not self.reached_max_updates():
            self.publish_if_due()
            batch = pending if pending is not None else self.sample()
            commands, everyone_has_one = self.group.turn(list(self.reporter.commands()), batch is not None)
            if commands:
                if not self.apply(commands):
                    break
                pending = None  # sampled for the previous algorithm (a switch)
                continue
            if not everyone_has_one:
                pending = batch
                self.report()
                time.sleep(self.POLL_S)
                continue
            pending = None
            self.update(batch)
            self.schedule.updated(self.step)
            self.publish_if_due()
            if self.step % self.cfg.checkpoint_every == 0:
                self.checkpoint()
            self.group.check_sync(self.step, self.policy)
            self.report()
        if self.schedule.due:  # a deferred version goes out before the loop ends (max_updates, stop)
            self.publish()
        self.checkpoint()
        self.report(force=True)
        self.reporter.scalars.close()

    # -- steps -----------------------------------------------------------------------------------------
    def sample(self) -> ChunkBatch | EpisodeBatch | None:
        """The next batch the algorithm asked for, or None while there is not enough data yet."""
        return self.sampler.next(self.algorithm.batch_request(), self.step, self.publisher.version)

    def update(self, batch: ChunkBatch | EpisodeBatch) -> None:
        """One learner step: the algorithm's update, then a demo step when one is due."""
        self.throttle.wait()
        started, cpu_started = time.perf_counter(), time.thread_time()
        metrics = self.algorithm.update(batch)
        metrics |= self.demos.after_update(self.algorithm, self.step + 1)
        self.step += 1
        took, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
        self.reporter.record(self.algorithm.name, metrics, took, cpu)

    def publish_if_due(self) -> None:
        """Publish a version that is due (``PublishSchedule``: off-policy learners at most so often)."""
        if self.schedule.publish_now(off_policy=self.algorithm.data == "chunks"):
            self.publish()

    def publish(self, initial: bool = False) -> None:
        """Give the fleet the current policy as a new version (replicas load it at a batch boundary); the
        leader of a multi-worker learner does it for all (they hold the same weights)."""
        if self.group.leader:
            self.algorithms.published(self.publisher.publish(initial))
        self.schedule.published()

    def checkpoint(self, wait: bool = False) -> None:
        self.checkpoints.save(self.step, self.publisher.version, wait)

    def report(self, force: bool = False) -> None:
        if self.group.leader:
            self.reporter.report(self.step, self.publisher.version, self.algorithm.name, self.status, force)

    def share_state(self) -> None:
        """A multi-worker learner's workers take the leader's state (after a start, restore or switch)."""
        if self.group.size > 1:
            state = self.checkpoints.state(self.step, self.publisher.version) if self.group.leader else None
            state = self.group.broadcast(state)
            if not self.group.leader:
                self.checkpoints.adopt(state)

    # -- commands --------------------------------------------------------------------------------------
    def apply(self, commands: list[dict[str, Any]]) -> bool:
        """Run the commands the ``Learner`` queued (every worker the same ones); False when told to stop."""
        for cmd in commands:
            if cmd["kind"] == "stop":
                return False
            if cmd["kind"] == "switch":
                self.switch(cmd["algorithm"], cmd["config"])
        return True

    def switch(self, name: str, config: dict[str, Any]) -> None:
        old = self.algorithm.name
        self.activate(name, config)
        self.share_state()
        log.info("learner %s: %s -> %s at step %d", self.task.name, old, name, self.step)
        self.checkpoint(wait=True)  # the switch survives a restart from the moment it shows
        self.report(force=True)

    def activate(self, name: str, config: dict[str, Any]) -> None:
        """Make ``name`` the current algorithm; what was sampled for the previous one is dropped."""
        self.algorithms.activate(name, config, self.publisher.version)
        self.sampler.reset()

    def reached_max_updates(self) -> bool:
        if self.cfg.max_updates is None or self.step < self.cfg.max_updates:
            return False
        self.finished = "max_updates reached"
        self.report(force=True)
        return True

    # -- reporting -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        reporter, sampler = self.reporter, self.sampler
        return {
            "algorithm": self.algorithm.name,
            "algorithm_config": self.algorithm.config.model_dump(),
            "step": self.step,
            "version": self.publisher.version,
            "phase": "offline" if self.step < self.cfg.offline_steps else "online",
            "waiting": self.finished or sampler.waiting,
            "losses": reporter.losses,
            "demo_replay": self.demos.status(self.step),
            "updates_per_s": reporter.updates_per_s,
            "update_s": reporter.update_s,
            "update_cpu_s": reporter.update_cpu_s,
            "restored_step": self.checkpoints.restored_step,
            "dropped_stale_episodes": sampler.dropped_stale_episodes,
            "partly_stale_episodes": sampler.partly_stale_episodes,
            "fleet_waits": sampler.fleet_waits,
            "data_server_waits": sampler.data_server_waits,
            "kept_algorithms": self.algorithms.names(),
            **self.group.status(),
            "rollout": reporter.rollout,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),  # where the updates run (placement)
            "time": time.time(),
        }


def learner_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker`` (every worker of a multi-worker learner runs it)."""
    if config.get("metrics") is not None:
        RemoteLogHandler.install(config["metrics"], f"learner {config['task'].name}")
    device = ray.train.torch.get_device() if config["learner"].num_gpus else torch.device("cpu")
    LearnerLoop(**config, group=WorkerGroup.of_this_worker(device)).run()
