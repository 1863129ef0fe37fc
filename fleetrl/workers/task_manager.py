"""The task manager: the one place a task's actors are started and looked up.

The platform hands it the tasks from the config at boot (their replicas already wired into the gateway);
``POST /v1/tasks`` creates one at runtime: its inference pool, its replay on the data server, its pool on
the gateway, its registry row (with the config that re-creates it at the next start) and its learner.
``DELETE /v1/tasks/{task}`` takes all of that down again, keeping the task's stored episodes.
``switch`` and ``describe`` serve the REST task routes.

The actor is threaded (``MAX_CONCURRENCY``): a creation waits for its replicas and a deletion for its
learner's last checkpoint, and neither should hold up the other tasks' calls. A name being created or
deleted is reserved (a second call on it is refused with 409), and a task becomes visible only once all of
its actors run.

Ray restarts it when it dies (``max_restarts=-1``). Its learners and the replicas of tasks created over
REST die with it (Ray ties an actor's children to their owner), so the new incarnation rebuilds its tables
from what outlives it: the config file's tasks still in the registry get their learners again (they resume
from their last checkpoint; their replicas, the driver's, kept serving), and the tasks created over REST are
created again from their saved configs, as at a platform start. While it is away, the REST API answers 503.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from fleetrl.robots.protocol import DEFAULT_LIMITS
from fleetrl.workers.inference.replica import start_replicas
from fleetrl.workers.learning.learner import start_learner
from fleetrl.workers.learning.paths import learner_checkpoint_root
from fleetrl.workers.learning.served_checkpoint import serve_newest_checkpoint
from fleetrl.workers.lifecycle import stop_actors
from fleetrl.workers.task import (
    ReplayConfig,
    TaskConfig,
    frame_fit_problem,
    gateways_problem,
    restore_saved,
    saved_task,
)

log = logging.getLogger(__name__)


def root_cause(exc: BaseException) -> str:
    """The last line of a Ray error's text: the exception an actor raised (``ValueError: ...``), without
    the remote traceback around it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class TaskManager:
    """Ray actor: ``ready``, ``adopt``, ``start_learners``, ``create``, ``delete``, ``config``, ``describe``,
    ``switch``, ``stop``."""

    MAX_CONCURRENCY = 8

    def __init__(
        self,
        registry: Any,
        gateway: Any,
        data: Any,
        weights: Any,
        metrics: Any | None,
        learner_dir: str,
        config_tasks: list[TaskConfig] | None = None,
        max_frame_bytes: int = DEFAULT_LIMITS.max_frame_bytes,
        gateways: int = 1,
    ):
        """``config_tasks``: the config file's tasks (what a restarted task manager adopts again);
        ``max_frame_bytes``: the gateway's frame limit, which a created task's step must fit; ``gateways``:
        how many gateways serve it (``gateway.replicas``)."""
        self.registry, self.gateway, self.data = registry, gateway, data
        self.max_frame_bytes, self.gateway_count = max_frame_bytes, gateways
        self.config_tasks = list(config_tasks or [])
        self.weights, self.metrics, self.learner_dir = weights, metrics, learner_dir
        self.tasks: dict[str, TaskConfig] = {}
        self.replicas: dict[str, list[Any]] = {}
        self.learners: dict[str, Any] = {}
        self._lock = threading.Lock()  # guards the name reservations and the check-then-act on the tables
        self._busy: set[str] = set()  # names being created or deleted
        if ray.get_runtime_context().was_current_actor_reconstructed:
            self._recover()

    def _recover(self) -> None:
        """A restart after a crash: adopt the config tasks still registered (with the replicas the weight
        board knows), drop the gateway pools of the rest (their replicas died), re-create those from their
        saved configs."""
        registered = ray.get(self.registry.task_configs.remote())
        pools = ray.get(self.weights.pools.remote())
        configured = {t.name for t in self.config_tasks}
        for task in self.config_tasks:
            if task.name in registered:
                self.adopt(task, pools.get(task.name, []))
        for name in ray.get(self.gateway.served_tasks.remote()):
            if name not in configured:
                ray.get(self.gateway.remove_task.remote(name))
        restored = self.restore_runtime_tasks()
        log.warning("task manager restarted: %d config tasks adopted, %d created over REST restored",
                    len(self.tasks) - len(restored), len(restored))  # fmt: skip

    def restore_runtime_tasks(self) -> list[str]:
        """Start the tasks created over REST (in an earlier run, or before this task manager restarted) as
        ``POST /v1/tasks`` made them; a config-file task of the same name wins. One that cannot start is
        logged and stays listed, so its robots keep their records. Returns the names restored."""
        restored = []
        for name, saved in ray.get(self.registry.task_configs.remote()).items():
            if saved is None or name in self.tasks:
                continue  # the config file's
            try:
                task, replay = restore_saved(saved)
            except ValueError as exc:
                log.error(
                    "task %s (created over REST) not restored: its stored config is invalid: %s", name, exc
                )
                continue
            result = self.create(task, replay)
            if result["ok"]:
                restored.append(name)
                log.info("task %s (created over REST) restored", name)
            else:
                log.error("task %s (created over REST) not restored: %s", name, result["error"])
        return restored

    def _reserve(self, name: str, creating: bool) -> dict[str, Any] | None:
        """Claim ``name`` for one creation or deletion; the refusal if it cannot be claimed."""
        with self._lock:
            if name in self._busy:
                return {"ok": False, "code": 409, "error": f"task {name!r} is being created or deleted"}
            if creating and name in self.tasks:
                return {"ok": False, "code": 409, "error": f"task {name!r} already exists"}
            self._busy.add(name)
        return None

    def ready(self) -> list[str]:
        return sorted(self.tasks)

    def adopt(self, task: TaskConfig, replicas: list[Any], learner: bool = True) -> None:
        """Take over a task the platform started from its config, and start its learner (``learner=False``:
        later, with ``start_learners``)."""
        self.tasks[task.name], self.replicas[task.name] = task, replicas
        self._serve_checkpoint(task)
        if learner:
            self._start_learner(task)

    def start_learners(self) -> None:
        """Start the learners of the adopted tasks that have none yet (the platform's start does this once
        REST answers: robots register and act meanwhile)."""
        for name, task in list(self.tasks.items()):
            if name not in self.learners:
                self._start_learner(task)

    def create(self, task: TaskConfig, replay: ReplayConfig | None = None, timeout: float = 120.0) -> dict:
        """Start a new task's actors. ``{"ok": False, "code", "error"}`` if refused: 409 when the name is
        taken, 422 when its replicas cannot build the policy, 503 when they do not start within
        ``timeout`` (no node has the resources they ask for); nothing of the task is left behind then."""
        refused = self._reserve(task.name, creating=True)
        if refused:
            return refused
        try:
            return self._create(task, replay, timeout)
        finally:
            with self._lock:
                self._busy.discard(task.name)

    def _create(self, task: TaskConfig, replay: ReplayConfig | None, timeout: float) -> dict[str, Any]:
        problem = frame_fit_problem(task, self.max_frame_bytes) or gateways_problem(task, self.gateway_count)
        if problem:
            return {"ok": False, "code": 422, "error": problem}
        replicas = start_replicas(task, self.metrics, self.weights)
        try:
            ray.get([r.ready.remote() for r in replicas], timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - the cause goes back to the caller
            for r in replicas:
                ray.kill(r, no_restart=True)
            if isinstance(exc, ray.exceptions.GetTimeoutError):
                options = task.inference.ray_options(f"inference pool {task.name}")
                asked = {k: v for k, v in options.items() if k != "max_restarts"}
                return {
                    "ok": False,
                    "code": 503,
                    "error": f"the inference replicas did not start within {timeout:.0f} s: no node has "
                    f"the resources they ask for? ({asked})",
                }
            return {"ok": False, "code": 422, "error": f"the inference replicas failed: {root_cause(exc)}"}
        ray.get(self.weights.register.remote(task.name, replicas, task.rollout.keep_versions))
        self._serve_checkpoint(task)
        ray.get(self.data.add_task.remote(task, replay))
        ray.get(self.gateway.add_task.remote(task, replicas))
        ray.get(self.registry.upsert_task.remote(task.name, task.public(), saved_task(task, replay)))
        self._start_learner(task)
        self.replicas[task.name] = replicas
        self.tasks[task.name] = task  # last: from here on the task manager's callers see the task
        log.info(
            "task %s created (%d replicas, learner %s)", task.name, len(replicas), task.public()["algorithm"]
        )
        return {"ok": True, **self.describe(task.name)}

    def delete(self, name: str) -> dict[str, Any]:
        """Take a task down: refused (409) while robots are registered for it, 404 if unknown. The gateway
        stops serving it first, then its learner stops (a last checkpoint), its replicas go, and the data
        server stops replaying it; its stored episodes stay (a task created again under the name replays
        them). A task from the config file comes back at the next start unless the file drops it."""
        refused = self._reserve(name, creating=False)
        if refused:
            return refused
        try:
            return self._delete(name)
        finally:
            with self._lock:
                self._busy.discard(name)

    def _delete(self, name: str) -> dict[str, Any]:
        try:
            robots = ray.get(self.registry.delete_task.remote(name))  # checks for robots, deletes: one step
        except KeyError:  # not in the registry (a Ray error that is also the registry's NotFound)
            if name not in self.tasks:
                return {"ok": False, "code": 404, "error": f"no task named {name!r}; tasks: {self.names()}"}
            robots = []
        if robots:
            listed = ", ".join(robots[:10]) + (", ..." if len(robots) > 10 else "")
            return {
                "ok": False,
                "code": 409,
                "error": f"task {name!r} has {len(robots)} registered robot(s) ({listed}): delete them "
                "first (DELETE /v1/robots/{id})",
            }
        with self._lock:  # first: from here on the task manager's callers no longer see the task
            self.tasks.pop(name, None)
            learner, replicas = self.learners.pop(name, None), self.replicas.pop(name, [])
        ray.get(self.gateway.remove_task.remote(name))
        final = ray.get(learner.status.remote()) if learner is not None else None
        stop_actors([learner], timeout=60, what="learner")
        for r in replicas:
            ray.kill(r, no_restart=True)
        ray.get(self.weights.unregister.remote(name))
        kept = ray.get(self.data.remove_task.remote(name))
        log.info("task %s deleted (%d stored episodes kept)", name, kept)
        return {"ok": True, "task": name, "episodes_kept": kept, "learner": final}

    def _serve_checkpoint(self, task: TaskConfig) -> None:
        """A task resumed from learner checkpoints serves the newest one before its learner starts."""
        if task.learner is not None:
            serve_newest_checkpoint(self.weights, task, learner_checkpoint_root(self.learner_dir, task.name))

    def _start_learner(self, task: TaskConfig) -> None:
        if task.learner is None:
            return
        gamma = ray.get(self.data.replay_config.remote(task.name)).gamma
        self.learners[task.name] = start_learner(
            task, gamma, self.data, self.weights, self.metrics, self.learner_dir
        )

    def config(self, name: str) -> TaskConfig | None:
        return self.tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self.tasks)

    def describe(self, name: str) -> dict[str, Any] | None:
        """The task's public spec, its learner's status and the weight version the fleet serves (None for
        an unknown task, or one deleted meanwhile)."""
        task, learner = self.tasks.get(name), self.learners.get(name)
        if task is None:
            return None
        newest = ray.get(self.weights.latest.remote(name))
        try:
            status = ray.get(learner.status.remote()) if learner is not None else None
        except ray.exceptions.RayActorError:
            if name in self._busy or name not in self.tasks:
                return None  # its task is being deleted
            raise  # its learner is restarting: the REST layer answers 503, not "no such task"
        return {
            **task.public(),
            "algorithm": status["algorithm"] if status else None,
            "replicas": len(self.replicas.get(name, [])),
            "weight_version": newest[0] if newest else 0,
            "learner": status,
        }

    def switch(self, name: str, algorithm: str, config: dict[str, Any] | None) -> dict[str, Any]:
        """Queue an algorithm switch on the task's learner; ``{"ok": False, "code", "error"}`` if refused."""
        if name not in self.tasks:
            return {"ok": False, "code": 404, "error": f"no task named {name!r}; tasks: {sorted(self.tasks)}"}
        learner = self.learners.get(name)
        if learner is None:
            return {"ok": False, "code": 409, "error": f"task {name!r} has no learner (its config has none)"}
        try:
            return ray.get(learner.switch.remote(algorithm, config))
        except ray.exceptions.RayActorError:
            return {"ok": False, "code": 404, "error": f"task {name!r} was deleted meanwhile"}

    def learners_status(self) -> dict[str, dict[str, Any]]:
        """Every learner's status (for the live view), by task; one being deleted meanwhile is left out."""
        learners = dict(self.learners)
        refs = {name: learner.status.remote() for name, learner in learners.items()}
        statuses = {}
        for name, ref in refs.items():
            try:
                statuses[name] = ray.get(ref)
            except ray.exceptions.RayActorError:
                continue
        return statuses

    def learner(self, name: str) -> Any:
        return self.learners.get(name)

    def stop(self) -> None:
        """Every learner winds down at once (each ends its Ray Train run), then the replicas go."""
        stop_actors(list(self.learners.values()), timeout=60, what="learner")
        for replicas in list(self.replicas.values()):
            for r in replicas:
                ray.kill(r, no_restart=True)
