"""Simulated robots the platform starts for one evaluation (``POST /v1/tasks/{task}/evaluations`` with
``sim``): a Ray actor builds them, registers them as the REST route does, starts the evaluation on them
alone, runs them until it is done (or ``timeout_s``), then deregisters them and ends itself.

Why an actor: the robots' simulation then runs in its own process on whichever node has the CPU, and the
API replica stays light. It is detached, so it outlives the request that started it; it ends itself. If
it dies early (its node lost), the evaluation keeps waiting for episodes like one whose robots left.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from typing import Any

import ray

log = logging.getLogger(__name__)

POLL_S = 0.5


@ray.remote(max_restarts=0)
class SimEvaluationRobots:
    """One evaluation's sim robots: ``start`` returns the evaluation's record; the rest runs on its own."""

    def __init__(self, services: Any, task: str, request: dict[str, Any]):
        self.svc, self.task, self.request = services, task, request
        self.sim: dict[str, Any] = request["sim"]
        self.stop = threading.Event()
        self.clients: list[Any] = []
        self.tag = secrets.token_hex(3)  # names of their own: two evaluations never re-register each other's
        self.gateway: int | None = None

    async def start(self) -> dict[str, Any]:
        """Build and register the robots, start the evaluation on them; the robots run from here on."""
        from fastapi import HTTPException

        from fleetrl.robots.client import RobotClient

        try:
            robots = await asyncio.to_thread(self._build_robots)
            for i, robot in enumerate(robots):
                credentials = await self._register(robot, i)
                self.clients.append(RobotClient.from_registration(robot, credentials.model_dump()))
            ids = [c.robot_id for c in self.clients]
            r = self.request
            record = await self.svc.gateway.evaluate.remote(
                self.task, r.get("version"), ids, r["episodes"], r["deterministic"], exclusive=True
            )
        except HTTPException as exc:  # the task refused a robot: the route answers with the same refusal
            record = {"ok": False, "code": exc.status_code, "error": exc.detail}
        except BaseException:
            await self._deregister()
            raise
        if not record.get("ok", True):
            await self._deregister()
            return record
        self._runner = threading.Thread(target=self._run, name="sim-evaluation-robots", daemon=True)
        self._runner.start()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(record["evaluation_id"]))
        log.info("evaluation %s: %d %s robots started", record["evaluation_id"], len(ids), self.sim["env"])
        return record

    def _build_robots(self) -> list[Any]:
        from fleetrl.robots.sim import SimRobot

        s = self.sim
        return [
            SimRobot(
                s["env"],
                seed=s["seed"] + i,
                success=s.get("success"),
                control_hz=s.get("control_hz"),
                env_kwargs=s.get("env_kwargs") or None,
                wrappers=s.get("wrappers") or (),
            )
            for i in range(s["count"])
        ]

    async def _register(self, robot: Any, index: int) -> Any:
        from fleetrl.robots.protocol import specs_to_dict

        from .models import RobotRegistration
        from .routes.robots import issue_credentials

        body = RobotRegistration(
            name=f"eval-{self.task}-{self.tag}-{index}",
            task=self.task,
            observation_spec=specs_to_dict(robot.observation_spec),
            action_spec=robot.action_spec.to_dict(),
            gateway=self.gateway,  # the first robot's: one gateway runs the evaluation
        )
        credentials = await issue_credentials(self.svc, body)
        self.gateway = credentials.gateway
        return credentials

    def _run(self) -> None:
        from fleetrl.robots.client.runner import FleetRunner

        runner = FleetRunner(self.clients)
        try:
            runner.run(duration=self.sim["timeout_s"], stop=self.stop)
        except Exception:  # noqa: BLE001 - the robots stop; the watcher deregisters them
            log.exception("sim evaluation robots failed")
        finally:
            runner.close()
            for c in self.clients:
                c.robot.close()
            self.stop.set()

    async def _watch(self, evaluation_id: str) -> None:
        """Stop the robots once the evaluation is no longer running (or they stopped), deregister them, end."""
        try:
            while not self.stop.is_set():
                running = await self.svc.gateway.running_evaluations.remote(self.task)
                mine = next((e for e in running if e["evaluation_id"] == evaluation_id), None)
                if mine is None or mine["status"] != "running":
                    break
                await asyncio.sleep(POLL_S)
        except Exception:  # noqa: BLE001 - the task was deleted or the gateway is gone: stop anyway
            log.exception("evaluation %s: watching it failed; stopping its robots", evaluation_id)
        self.stop.set()
        await asyncio.to_thread(self._runner.join)
        await self._deregister()
        log.info("evaluation %s: its sim robots left", evaluation_id)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def _deregister(self) -> None:
        for c in self.clients:
            try:
                await self.svc.registry.delete_robot.remote(c.robot_id)
                await self.svc.gateway.revoke.remote(c.robot_id)
            except Exception:  # noqa: BLE001 - best effort, like a sim fleet's shutdown
                log.warning("could not deregister sim robot %s", c.robot_id)


async def start_sim_evaluation(services: Any, task: str, request: dict[str, Any]) -> dict[str, Any]:
    """Start the actor and its evaluation; returns the evaluation's record, or the refusal (``ok`` False)
    of a robot the task does not accept; an env that cannot be built raises. Either way the actor is gone."""
    actor = SimEvaluationRobots.options(  # type: ignore[attr-defined]
        lifetime="detached", num_cpus=request["sim"]["num_cpus"]
    ).remote(services, task, request)
    try:
        record = await actor.start.remote()
    except BaseException:
        ray.kill(actor, no_restart=True)
        raise
    if not record.get("ok", True):
        ray.kill(actor, no_restart=True)
    return record
