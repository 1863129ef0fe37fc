"""Learners: one per task, running the task's algorithm inside Ray Train.

``Learner`` is the Ray actor the platform and the REST API talk to (``status``, ``switch``, ``stop``). It
hosts a ``TorchTrainer`` whose worker runs ``learner_loop`` (``loop.py``): sample -> update -> publish ->
checkpoint -> report, each one call; with ``learner.num_workers`` K > 1, K workers data-parallel
(``worker_group.py``). Ray Train restarts a failed worker and the loop resumes from
the newest checkpoint (policy, every algorithm's state, step, weight version; ``checkpoints.py``); a
restarted ``Learner`` actor re-runs the same named Ray Train run, which resumes the same way.

With ``learner.demo_replay.weight > 0`` every ``every``-th update is followed by one imitation step on a
batch of the task's demonstrations (VLAC eq. 6 offline demonstration replay; ``algorithms/demo_replay.py``).

The loop talks back to its ``Learner`` without blocking: every ``report_every_s`` it sends its status and
receives the commands queued since (an algorithm switch, stop), which it applies at the next step boundary.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray

from fleetrl.workers.learning.paths import learner_checkpoint_root
from fleetrl.workers.locations import filesystem, is_url, join
from fleetrl.workers.metrics_server import RemoteLogHandler
from fleetrl.workers.placement import on_this_node
from fleetrl.workers.task import TaskConfig

log = logging.getLogger(__name__)


class Learner:
    """Ray actor: ``ready``, ``status``, ``switch(algorithm, config)``, ``poll`` (from the loop), ``stop``."""

    SLOW_START_S = 5.0  # a learner still starting after this says what it waits for (status ``waiting``)

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
        self._created = time.monotonic()
        options = self.cfg.ray_options(f"learner {task.name}")
        self.worker_resources = {"CPU": options["num_cpus"], **options.get("resources", {})}
        if options["num_gpus"]:
            self.worker_resources["GPU"] = options["num_gpus"]
        if "memory" in options:
            self.worker_resources["memory"] = options["memory"]
        # TensorBoard writes local files: with an object-store storage they stay on the learner's node
        board = (
            Path(tempfile.gettempdir()) / "fleetrl-tensorboard"
            if is_url(storage_dir)
            else Path(storage_dir).expanduser() / "tensorboard"
        )
        self._loop_config = {
            "task": task,
            "learner": self.cfg,
            "gamma": gamma,
            "data": data,
            "weights": weights,
            "control": ray.get_runtime_context().current_actor,
            "metrics": metrics,
            "tensorboard_dir": str(board / task.name),
            "checkpoint_root": learner_checkpoint_root(storage_dir, task.name),
        }
        self._storage = join(storage_dir, "ray_train")
        self._thread = threading.Thread(target=self._fit, name=f"learner-{task.name}", daemon=True)
        self._thread.start()

    def _fit(self) -> None:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from fleetrl.workers.learning.loop import learner_loop

        resources = self.worker_resources
        storage_fs, storage_path = (
            filesystem(self._storage) if is_url(self._storage) else (None, self._storage)
        )
        trainer = TorchTrainer(
            learner_loop,
            train_loop_config=self._loop_config,
            scaling_config=ScalingConfig(
                num_workers=self.cfg.num_workers, use_gpu="GPU" in resources, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=f"learner-{self.task.name}",
                storage_path=storage_path,
                storage_filesystem=storage_fs,
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
        out = {
            **self.last,
            "state": self.state,
            "error": self.error,
            "pending_switch": pending[-1]["algorithm"] if pending else None,
        }
        if self.state == "starting" and time.monotonic() - self._created > self.SLOW_START_S:
            out["waiting"] = self.start_wait()
        return out

    def start_wait(self) -> str:
        """What a learner that is still starting waits for: the resources its Ray Train worker asks for that
        no node has free now (Ray Train waits for them, silently), else the worker's start itself."""
        waited = time.monotonic() - self._created
        free = ray.available_resources()
        short = {k: v for k, v in self.worker_resources.items() if v and free.get(k, 0.0) < v}
        if short:
            have = ", ".join(f"{k} {free.get(k, 0.0):g}" for k in short)
            want = ", ".join(f"{k} {v:g}" for k, v in short.items())
            return (
                f"starting for {waited:.0f} s: its Ray Train worker asks for {want}; free in the cluster now: "
                f"{have} (it starts when a node has them)"
            )
        return f"starting for {waited:.0f} s: Ray Train is starting its worker"

    def switch(self, algorithm: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue a switch (applied at the loop's next step boundary). Returns ``{"ok": False, "code": 404|409|
        422, "error": ...}`` when the algorithm is unknown, cannot train this policy, or its config is bad."""
        from fleetrl.algorithms.base import incompatibility, parse_config  # torch: imported where used

        try:
            problem = incompatibility(algorithm, self.task.policy.family)
        except KeyError as exc:
            return {"ok": False, "code": 404, "error": str(exc.args[0])}
        problem = problem or self.cfg.workers_problem(algorithm)
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
        """Ask the loop to stop after a last checkpoint, and wait for it. A learner still starting has no
        loop to ask (nor anything new to save): it answers at once (the caller kills it)."""
        with self._lock:
            self.commands.append({"kind": "stop"})
        if self.state != "starting":
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
