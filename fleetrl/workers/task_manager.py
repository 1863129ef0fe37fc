"""The task manager: the one place a task's actors are started and looked up.

The platform hands it the tasks from the config at boot (their replicas already wired into the gateway);
``POST /v1/tasks`` creates one at runtime: its inference pool, its replay on the data server, its pool on
the gateway, its registry row (with the config that re-creates it at the next start) and its learner.
``DELETE /v1/tasks/{task}`` takes all of that down again, keeping the task's stored episodes.
``switch`` and ``describe`` serve the REST task routes.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from fleetrl.workers.inference import start_replicas
from fleetrl.workers.lifecycle import stop_actors
from fleetrl.workers.replay import ReplayConfig
from fleetrl.workers.task import TaskConfig, saved_task
from fleetrl.workers.trainer import start_learner

log = logging.getLogger(__name__)


def root_cause(exc: BaseException) -> str:
    """The last line of a Ray error's text: the exception an actor raised (``ValueError: ...``), without
    the remote traceback around it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class TaskManager:
    """Ray actor: ``ready``, ``adopt``, ``create``, ``delete``, ``config``, ``describe``, ``switch``, ``stop``."""

    def __init__(
        self, registry: Any, gateway: Any, data: Any, weights: Any, metrics: Any | None, learner_dir: str
    ):
        self.registry, self.gateway, self.data = registry, gateway, data
        self.weights, self.metrics, self.learner_dir = weights, metrics, learner_dir
        self.tasks: dict[str, TaskConfig] = {}
        self.replicas: dict[str, list[Any]] = {}
        self.learners: dict[str, Any] = {}

    def ready(self) -> list[str]:
        return sorted(self.tasks)

    def adopt(self, task: TaskConfig, replicas: list[Any]) -> None:
        """Take over a task the platform started from its config, and start its learner."""
        self.tasks[task.name], self.replicas[task.name] = task, replicas
        self._start_learner(task)

    def create(self, task: TaskConfig, replay: ReplayConfig | None = None, timeout: float = 120.0) -> dict:
        """Start a new task's actors. ``{"ok": False, "code", "error"}`` if refused: 409 when the name is
        taken, 422 when its replicas cannot build the policy, 503 when they do not start within
        ``timeout`` (no node has the resources they ask for); nothing of the task is left behind then."""
        if task.name in self.tasks:
            return {"ok": False, "code": 409, "error": f"task {task.name!r} already exists"}
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
        ray.get(self.weights.register.remote(task.name, replicas))
        ray.get(self.data.add_task.remote(task, replay))
        ray.get(self.gateway.add_task.remote(task, replicas))
        ray.get(self.registry.upsert_task.remote(task.name, task.public(), saved_task(task, replay)))
        self.tasks[task.name], self.replicas[task.name] = task, replicas
        self._start_learner(task)
        log.info(
            "task %s created (%d replicas, learner %s)", task.name, len(replicas), task.public()["algorithm"]
        )
        return {"ok": True, **self.describe(task.name)}

    def delete(self, name: str) -> dict[str, Any]:
        """Take a task down: refused (409) while robots are registered for it, 404 if unknown. The gateway
        stops serving it first, then its learner stops (a last checkpoint), its replicas go, and the data
        server stops replaying it; its stored episodes stay (a task created again under the name replays
        them). A task from the config file comes back at the next start unless the file drops it."""
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
        ray.get(self.gateway.remove_task.remote(name))
        learner = self.learners.pop(name, None)
        final = ray.get(learner.status.remote()) if learner is not None else None
        stop_actors([learner], timeout=60, what="learner")
        for r in self.replicas.pop(name, []):
            ray.kill(r, no_restart=True)
        ray.get(self.weights.unregister.remote(name))
        kept = ray.get(self.data.remove_task.remote(name))
        self.tasks.pop(name, None)
        log.info("task %s deleted (%d stored episodes kept)", name, kept)
        return {"ok": True, "task": name, "episodes_kept": kept, "learner": final}

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

    def describe(self, name: str) -> dict[str, Any]:
        """The task's public spec, its learner's status and the weight version the fleet serves."""
        task = self.tasks[name]
        learner = self.learners.get(name)
        newest = ray.get(self.weights.latest.remote(name))
        status = ray.get(learner.status.remote()) if learner is not None else None
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
        return ray.get(learner.switch.remote(algorithm, config))

    def learners_status(self) -> dict[str, dict[str, Any]]:
        """Every learner's status (for the live view), by task."""
        names = list(self.learners)
        return dict(zip(names, ray.get([self.learners[n].status.remote() for n in names]), strict=True))

    def learner(self, name: str) -> Any:
        return self.learners.get(name)

    def stop(self) -> None:
        """Every learner winds down at once (each ends its Ray Train run), then the replicas go."""
        stop_actors(self.learners.values(), timeout=60, what="learner")
        for replicas in self.replicas.values():
            for r in replicas:
                ray.kill(r, no_restart=True)
