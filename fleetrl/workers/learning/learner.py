"""Learners: one per task, running the task's algorithm inside Ray Train.

``Learner`` is the Ray actor the platform and the REST API talk to (``status``, ``switch``, ``stop``). It
hosts a ``TorchTrainer`` whose single worker runs ``LearnerLoop``: sample -> update -> publish ->
checkpoint -> report, each one call. Ray Train restarts a failed worker and ``LearnerLoop`` resumes from
the newest checkpoint (policy, every algorithm's state, step, weight version); a restarted ``Learner``
actor re-runs the same named Ray Train run, which resumes the same way.

With ``learner.demo_replay.weight > 0`` every ``every``-th update is followed by one imitation step on a
batch of the task's demonstrations (VLAC eq. 6 offline demonstration replay; ``algorithms/demo_replay.py``).

The loop talks back to its ``Learner`` without blocking: every ``report_every_s`` it sends its status and
receives the commands queued since (an algorithm switch, stop), which it applies at the next step boundary.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from fleetrl.algorithms.base import Algorithm, PolicySpec, build_algorithm, incompatibility, parse_config
from fleetrl.algorithms.batch import EpisodeBatch
from fleetrl.models.policies import build_policy
from fleetrl.workers.learning.demo_feed import DemoFeed
from fleetrl.workers.metrics_server import MetricsBuffer, RemoteLogHandler
from fleetrl.workers.placement import on_this_node
from fleetrl.workers.task import LearnerConfig, TaskConfig
from fleetrl.workers.weights import to_numpy_state

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "learner.pt"


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
    ):
        torch.set_num_threads(learner.torch_threads)
        self.checkpoint_root = checkpoint_root
        self.task, self.cfg, self.data, self.weights, self.control = task, learner, data, weights, control
        self.metrics_server, self.metrics = metrics, MetricsBuffer()
        self.device = ray.train.torch.get_device() if learner.num_gpus else torch.device("cpu")
        self.policy = build_policy(task.policy, task.observation_spec, task.action_spec, task.chunk_len)
        self.policy.to(self.device)
        self.spec = PolicySpec(task.observation_spec, task.action_spec, task.chunk_len, gamma)
        self.algorithms: dict[str, Algorithm] = {}
        self._saved_algorithms: dict[str, Any] = {}  # algorithm states from the checkpoint, until activated
        self.step, self.version, self.restored_step = 0, 0, None
        self.losses: dict[str, float] = {}
        self.commands: deque[dict[str, Any]] = deque()
        self.waiting: str | None = None
        self.dropped_stale_episodes = 0
        self.fleet_waits = 0  # looks that found a replica still on an older version (stale: wait)
        self._fleet_serving = -1  # newest version every replica was seen serving
        self.update_s = 0.0  # seconds in ``update`` + demo steps (the rest is waiting, I/O, publishing)
        self._fresh: list[Any] = []  # on-policy episodes collected for the next update
        self._seen_snapshot = 0
        self._prefetch: tuple[tuple, Any] | None = None  # ((size, offline), ref of the next replay batches)
        self._batches: deque[Any] = deque()  # replay batches fetched, not yet used ...
        self._batches_key: tuple | None = None  # ... and the (size, offline) they were drawn for
        self._publishing: Any = None  # the board's ack of the last publish, awaited only before the next
        self._poll: Any = None
        self._rollout_ref: Any = None
        self.rollout: dict[str, float] = {}
        self._last_report, self._steps_at_report, self.updates_per_s = 0.0, 0, 0.0
        self._next_update_at = 0.0
        self.demos = DemoFeed(data, task.name, learner.demo_replay, learner.prefetch_batches)
        self._demo_metrics: dict[str, float] = {}  # of the latest demo step, reported between demo steps
        saved = self._restore()
        self.algorithm = self._activate(
            saved["algorithm"] if saved else learner.algorithm,
            saved["algorithm_config"] if saved else learner.config,
        )
        self.writer = None
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir)

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> None:
        self.publish(initial=True)
        while self.apply_commands():
            if self.cfg.max_updates is not None and self.step >= self.cfg.max_updates:
                self.waiting = "max_updates reached"
                self.report(force=True)
                break
            batch = self.sample()
            if batch is None:
                self.report()
                time.sleep(self.POLL_S)
                continue
            self._throttle()
            started = time.perf_counter()
            metrics = self.algorithm.update(batch)
            metrics |= self.replay_demos()
            self.update_s += time.perf_counter() - started
            self.record(metrics)
            if self.step % self.cfg.publish_every == 0:
                self.publish()
            if self.step % self.cfg.checkpoint_every == 0:
                self.checkpoint()
            self.report()
        self.checkpoint()
        self.report(force=True)

    # -- steps -----------------------------------------------------------------------------------------
    def sample(self) -> Any | None:
        """The next batch the algorithm asked for, or None while there is not enough data yet."""
        request = self.algorithm.batch_request()
        if request.kind == "chunks":
            return self._replay_batch(request.size, 1.0 if self.step < self.cfg.offline_steps else None)
        if request.wait_for_fleet and not self._fleet_serves_newest():
            return None
        return self._fresh_episodes(request.size, request.max_version_lag)

    def replay_demos(self) -> dict[str, float]:
        """VLAC eq. 6, offline demonstration replay: after every ``every``-th online update, one optimizer
        step of ``weight * L_demo`` on the policy (``Algorithm.imitation_step``) on a batch drawn from the
        task's offline partition only. Returns the latest demo step's metrics (``demo_loss``, ...), also
        between demo steps, so every report and TensorBoard point carries them."""
        cfg = self.cfg.demo_replay
        if not cfg.due(self.step + 1, self.cfg.offline_steps):
            return self._demo_metrics
        batch = self.demos.next()
        if batch is not None:
            self._demo_metrics = self.algorithm.imitation_step(batch, self.task.policy.family, cfg)
        return self._demo_metrics

    def _fleet_serves_newest(self) -> bool:
        """Asks the replicas (through the board) only until they are seen serving the current version, not
        on every poll: replicas answer robots between these calls."""
        if self._fleet_serving >= self.version:
            return True
        serving = ray.get(self.weights.serving.remote(self.task.name))
        if serving is not None and serving < self.version:
            self.waiting = f"waiting for the fleet to serve v{self.version} (slowest replica on v{serving})"
            self.fleet_waits += 1
            return False
        self._fleet_serving = self.version
        return True

    def _replay_batch(self, size: int, offline: float | None) -> Any | None:
        """Replay batches come ``prefetch_batches`` per data-server call, and the next call is in flight
        while the learner works through the current ones; a change of size or mix drops what was fetched."""
        key, n = (size, offline), self.cfg.prefetch_batches
        if self._batches_key != key:
            self._batches.clear()
        if not self._batches:
            ref = self._prefetch[1] if self._prefetch and self._prefetch[0] == key else None
            ref = ref or self.data.sample_chunk_batches.remote(self.task.name, size, n, offline)
            self._prefetch = (key, self.data.sample_chunk_batches.remote(self.task.name, size, n, offline))
            try:
                self._batches, self._batches_key = deque(ray.get(ref)), key
            except ray.exceptions.RayTaskError as exc:  # replay still empty
                self.waiting, self._prefetch = f"no data: {exc.cause}", None
                time.sleep(0.5)
                return None
        self.waiting = None
        return self._batches.popleft()

    def _fresh_episodes(self, steps: int, max_lag: int | None) -> EpisodeBatch | None:
        """Collect online episodes not used before; drop those with steps from versions older than
        ``max_lag`` behind the current one (counted). Returns a batch once ``steps`` steps are in."""
        new = ray.get(self.data.sample_episodes.remote(self.task.name, 1024, None, self._seen_snapshot))
        for episode, snapshot in zip(new.episodes, new.snapshots, strict=True):
            self._seen_snapshot = max(self._seen_snapshot, snapshot)
            versions = episode.columns["policy_version"]
            versions = versions[versions >= 0]
            if versions.size == 0:
                continue  # nothing the policy chose (an operator drove the whole episode)
            if max_lag is not None and int(versions.min()) < self.version - max_lag:
                self.dropped_stale_episodes += 1
                continue
            self._fresh.append((snapshot, episode))
        have = sum(len(e) for _, e in self._fresh)
        if have < steps:
            self.waiting = f"collecting fresh on-policy steps: {have}/{steps}"
            return None
        self.waiting = None
        batch = EpisodeBatch(
            episodes=[e for _, e in self._fresh], snapshots=[s for s, _ in self._fresh], snapshot=new.snapshot
        )
        self._fresh = []
        return batch

    def _throttle(self) -> None:
        if self.cfg.max_updates_per_s:
            wait = self._next_update_at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._next_update_at = time.monotonic() + 1.0 / self.cfg.max_updates_per_s

    def record(self, metrics: dict[str, float]) -> None:
        self.step += 1
        self.losses = {k: float(v) for k, v in metrics.items()}
        self.metrics.inc("learner_steps_total", (self.task.name, self.algorithm.name))

    def publish(self, initial: bool = False) -> None:
        """Give the fleet the current policy as a new version (replicas load it at a batch boundary)."""
        if initial:
            newest = ray.get(self.weights.latest.remote(self.task.name))
            board_version = newest[0] if newest else -1
            if self.restored_step is None and board_version < 0:
                self.version = 0  # fresh start: replicas already serve these seeded initial weights
            else:  # continue above anything the fleet may have seen
                self.version = max(self.version, board_version) + 1
        else:
            self.version += 1
        state = to_numpy_state(self.policy.state_dict())
        if self._publishing is not None:
            ray.get(self._publishing)  # back-pressure (usually long done) and surfaces a failed publish
        self._publishing = self.weights.publish.remote(self.task.name, self.version, state)
        if initial:
            ray.get(self._publishing)  # replicas starting now must find this version
        for algorithm in self.algorithms.values():
            algorithm.published(self.version)

    def checkpoint(self, wait: bool = False) -> None:
        state = {
            "policy": self.policy.state_dict(),
            "step": self.step,
            "version": self.version,
            "algorithm": self.algorithm.name,
            "algorithm_config": self.algorithm.config.model_dump(),
            "algorithms": {
                name: {"config": a.config.model_dump(), "state": a.state_dict()}
                for name, a in self.algorithms.items()
            },
        }
        # Saved to a fresh local folder; Ray Train copies it into the run folder and deletes the local
        # copy, on a background thread (ASYNC) unless the caller must know it is on disk (``wait``).
        d = tempfile.mkdtemp(prefix=f"fleetrl-{self.task.name}-ckpt-")
        torch.save(state, os.path.join(d, CHECKPOINT_FILE))
        ray.train.report(
            {"step": self.step, "version": self.version},
            checkpoint=ray.train.Checkpoint.from_directory(d),
            checkpoint_dir_name=f"checkpoint_{self.step:010d}_{time.time_ns()}",  # sorts in report order
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.SYNC
            if wait
            else ray.train.CheckpointUploadMode.ASYNC,
            delete_local_checkpoint_after_upload=True,
        )

    def _restore(self) -> dict[str, Any] | None:
        """Load the newest checkpoint. Ray Train registers a reported checkpoint only when its controller
        next polls the worker, so one written just before a crash (e.g. right after an algorithm switch)
        may be unregistered; the files are on disk all the same, so the newest readable one wins. Folder
        names order them (step, then report time): background uploads may finish out of order."""
        candidates = set(Path(self.checkpoint_root).glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            candidates.add(Path(ckpt.path) / CHECKPOINT_FILE)
        saved = None
        for path in sorted((p for p in candidates if p.exists()), key=lambda p: p.parent.name, reverse=True):
            try:
                saved = torch.load(path, map_location=self.device, weights_only=False)
                break
            except (OSError, RuntimeError, EOFError) as exc:
                log.warning("learner %s: unreadable checkpoint %s (%s)", self.task.name, path, exc)
        if saved is None:
            return None
        self.policy.load_state_dict(saved["policy"])
        self.step, self.version, self.restored_step = saved["step"], saved["version"], saved["step"]
        self._saved_algorithms = saved["algorithms"]
        log.info("learner %s: resumed at step %d, version %d", self.task.name, self.step, self.version)
        return saved

    def _activate(self, name: str, config: dict[str, Any]) -> Algorithm:
        """Make ``name`` the current algorithm. One it ran before keeps its critics and optimizers."""
        parsed = parse_config(name, config)
        previous = self.algorithms.get(name)
        saved = self._saved_algorithms.pop(name, None)
        algorithm = build_algorithm(
            name, parsed, self.policy, self.spec, self.task.policy.family, str(self.device)
        )
        if previous is not None:
            algorithm.load_state_dict(previous.state_dict())
        elif saved is not None:
            algorithm.load_state_dict(saved["state"])
        algorithm.published(self.version)
        self.algorithms[name] = algorithm
        self._fresh, self._prefetch, self._batches = [], None, deque()
        return algorithm

    def apply_commands(self) -> bool:
        """Run the commands queued by the ``Learner``; False when told to stop."""
        self._exchange()
        while self.commands:
            cmd = self.commands.popleft()
            if cmd["kind"] == "stop":
                return False
            if cmd["kind"] == "switch":
                old = self.algorithm.name
                self.algorithm = self._activate(cmd["algorithm"], cmd["config"])
                log.info("learner %s: %s -> %s at step %d", self.task.name, old, cmd["algorithm"], self.step)
                self.checkpoint(wait=True)  # the switch survives a restart from the moment it shows
                self.report(force=True)
        return True

    # -- reporting -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm.name,
            "algorithm_config": self.algorithm.config.model_dump(),
            "step": self.step,
            "version": self.version,
            "phase": "offline" if self.step < self.cfg.offline_steps else "online",
            "waiting": self.waiting,
            "losses": self.losses,
            "demo_replay": self._demo_status(),
            "updates_per_s": self.updates_per_s,
            "update_s": self.update_s,
            "restored_step": self.restored_step,
            "dropped_stale_episodes": self.dropped_stale_episodes,
            "fleet_waits": self.fleet_waits,
            "kept_algorithms": sorted(self.algorithms),
            "rollout": self.rollout,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),  # where the updates run (placement)
            "time": time.time(),
        }

    def _demo_status(self) -> str:
        if self.cfg.demo_replay.weight <= 0:
            return "off"
        if self.step < self.cfg.offline_steps:
            return "starts after the offline pretraining steps"
        return self.demos.waiting or "active"

    def _exchange(self) -> None:
        if self._poll is not None and ray.wait([self._poll], timeout=0)[0]:
            self.commands.extend(ray.get(self._poll))
            self._poll = None

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.cfg.report_every_s:
            return
        if self._last_report:
            self.updates_per_s = (self.step - self._steps_at_report) / max(now - self._last_report, 1e-9)
        self._last_report, self._steps_at_report = now, self.step
        if self._rollout_ref is not None and ray.wait([self._rollout_ref], timeout=0)[0]:
            self.rollout = ray.get(self._rollout_ref)
            self._rollout_ref = None
        if self._rollout_ref is None:
            self._rollout_ref = self.data.rollout_stats.remote(self.task.name)
        self._exchange()
        if self._poll is None or force:
            self._poll = self.control.poll.remote(self.status())
        self._log_scalars()

    def _log_scalars(self) -> None:
        name = self.task.name
        self.metrics.set("learner_updates_per_second", (name,), self.updates_per_s)
        for loss, value in self.losses.items():
            if np.isfinite(value):
                self.metrics.set("learner_loss", (name, loss), value)
        if self.metrics_server is not None:
            self.metrics_server.ingest.remote(*self.metrics.drain())
        if self.writer is None:
            return
        for key, value in self.losses.items():
            self.writer.add_scalar(f"{self.algorithm.name}/{key}", value, self.step)
        self.writer.add_scalar("learner/version", self.version, self.step)
        self.writer.add_scalar("learner/updates_per_s", self.updates_per_s, self.step)
        for key in ("success_rate", "mean_return", "mean_length"):
            if key in self.rollout:
                self.writer.add_scalar(f"rollout/{key}", self.rollout[key], self.step)
        self.writer.flush()


def learner_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``."""
    if config.get("metrics") is not None:
        RemoteLogHandler.install(config["metrics"], f"learner {config['task'].name}")
    LearnerLoop(**config).run()


class Learner:
    """Ray actor: ``ready``, ``status``, ``switch(algorithm, config)``, ``poll`` (from the loop), ``stop``."""

    def __init__(
        self,
        task: TaskConfig,
        gamma: float,
        data: Any,
        weights: Any,
        metrics: Any | None,
        storage_dir: str,
    ):
        if task.learner is None:
            raise ValueError(f"task {task.name!r} has no learner config")
        self.task, self.cfg = task, task.learner
        if metrics is not None:
            RemoteLogHandler.install(metrics, f"learner {task.name}")
        self.commands: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # the actor is threaded: stop() waits while poll() still runs
        self.last: dict[str, Any] = {"algorithm": self.cfg.algorithm, "step": 0, "version": 0}
        self.state = "starting"
        self.error: str | None = None
        storage = Path(storage_dir).expanduser()
        self._loop_config = {
            "task": task,
            "learner": self.cfg,
            "gamma": gamma,
            "data": data,
            "weights": weights,
            "control": ray.get_runtime_context().current_actor,
            "metrics": metrics,
            "tensorboard_dir": str(storage / "tensorboard" / task.name),
            "checkpoint_root": str(storage / "ray_train" / f"learner-{task.name}"),
        }
        self._storage = str(storage / "ray_train")
        self._thread = threading.Thread(target=self._fit, name=f"learner-{task.name}", daemon=True)
        self._thread.start()

    def _fit(self) -> None:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        options = self.cfg.ray_options(f"learner {self.task.name}")
        resources = {"CPU": options["num_cpus"], **options.get("resources", {})}
        if options["num_gpus"]:
            resources["GPU"] = options["num_gpus"]
        if "memory" in options:
            resources["memory"] = options["memory"]
        trainer = TorchTrainer(
            learner_loop,
            train_loop_config=self._loop_config,
            scaling_config=ScalingConfig(
                num_workers=1, use_gpu=bool(options["num_gpus"]), resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=f"learner-{self.task.name}",
                storage_path=self._storage,
                failure_config=FailureConfig(max_failures=self.cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=self.cfg.keep_checkpoints),
            ),
        )
        try:
            trainer.fit()
            self.state = "stopped"
        except Exception as exc:  # noqa: BLE001 - reported through status(), the platform keeps serving
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("learner %s failed: %s", self.task.name, self.error)

    def ready(self) -> str:
        return self.task.name

    def poll(self, status: dict[str, Any]) -> list[dict[str, Any]]:
        """The loop's report; returns the commands queued since the last one."""
        self.last = status
        if self.state == "starting":
            self.state = "running"
        with self._lock:
            commands, self.commands = self.commands, []
        return commands

    def status(self) -> dict[str, Any]:
        pending = [c for c in self.commands if c["kind"] == "switch"]
        return {
            **self.last,
            "state": self.state,
            "error": self.error,
            "pending_switch": pending[-1]["algorithm"] if pending else None,
        }

    def switch(self, algorithm: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue a switch (applied at the loop's next step boundary). Returns ``{"ok": False, "code": 404|409|
        422, "error": ...}`` when the algorithm is unknown, cannot train this policy, or its config is bad."""
        try:
            problem = incompatibility(algorithm, self.task.policy.family)
        except KeyError as exc:
            return {"ok": False, "code": 404, "error": str(exc.args[0])}
        if problem:
            return {"ok": False, "code": 409, "error": problem}
        try:
            parsed = parse_config(algorithm, config)
        except ValueError as exc:
            return {"ok": False, "code": 422, "error": str(exc)}
        with self._lock:
            self.commands.append({"kind": "switch", "algorithm": algorithm, "config": parsed.model_dump()})
        return {
            "ok": True,
            "algorithm": algorithm,
            "config": parsed.model_dump(),
            "applies": "next learner step",
        }

    def stop(self, timeout: float = 30.0) -> str:
        with self._lock:
            self.commands.append({"kind": "stop"})
        self._thread.join(timeout)
        return self.state


def start_learner(
    task: TaskConfig, gamma: float, data: Any, weights: Any, metrics: Any | None, storage_dir: str
) -> Any:
    """The learner's control actor runs next to the caller (on the head: it only drives Ray Train and holds
    the command queue); the Ray Train worker that does the updates goes where ``task.learner`` asks."""
    return (
        ray.remote(Learner)
        .options(
            num_cpus=0,
            max_restarts=task.learner.max_restarts,
            max_concurrency=4,
            scheduling_strategy=on_this_node(),
        )
        .remote(task, gamma, data, weights, metrics, storage_dir)
    )
