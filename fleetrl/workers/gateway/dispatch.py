"""Task pools and replica dispatch, for the gateway: every task has a pool of inference replicas
in the scheduler; an accepted observation is submitted to its task's pool, a dispatch becomes one batched
``infer`` call on a replica, and each row of the result goes back to its robot as an action chunk. A replica
that dies or does not answer within ``batch_timeout_s`` has its batch re-queued, and is given back to the
scheduler once Ray has restarted it. Tasks come and go while the gateway runs (``add_task``,
``remove_task``). Mixed into ``Gateway``: it runs on the gateway's asyncio loop, with its scheduler, robots
and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from fleetrl.robots import protocol as P
from fleetrl.workers.gateway.scheduler import Dispatch
from fleetrl.workers.task import TaskConfig

log = logging.getLogger(__name__)
REPLICA_GONE = (RayActorError, ActorDiedError, ActorUnavailableError)


def stack_observations(messages: list[P.Obs], keys: list[str]) -> dict[str, np.ndarray]:
    return {k: np.stack([m.observation[k] for m in messages]) for k in keys}


class ReplicaDispatch:
    """Task pools and replica calls (mixed into ``Gateway``)."""

    def add_task(self, task: TaskConfig, replicas: list[Any]) -> None:
        """Serve a task created at runtime (POST /v1/tasks)."""

        async def add() -> None:
            if task.name in self.tasks:
                raise ValueError(f"task {task.name!r} is already served")
            self.tasks[task.name] = task
            self._add_pool(task, replicas)

        self._call(add())

    def _add_pool(self, task: TaskConfig, replicas: list[Any]) -> None:
        self.scheduler.add_pool(task.name, task.inference.max_batch)
        for i, handle in enumerate(replicas):
            rid = f"{task.name}/{i}"
            self.replicas[rid] = handle
            self.replica_pool[rid] = task.name
            self.scheduler.add_replica(task.name, rid)

    def served_tasks(self) -> list[str]:
        """The tasks robots can connect to now."""

        async def names() -> list[str]:
            return sorted(self.tasks)

        return self._call(names())

    def remove_task(self, name: str) -> bool:
        """Stop serving a deleted task: its robots' sessions end (open episodes aborted), what waits for
        its replicas is dropped, and its pool and replicas are forgotten. False if it was not served."""

        async def remove() -> bool:
            if name not in self.tasks:
                return False
            for state in [s for s in self.robots.values() if s.task.name == name]:
                del self.robots[state.robot_id]
                self._go_offline(state)
            dropped = self.scheduler.remove_pool(name)
            for rid in [rid for rid, pool in self.replica_pool.items() if pool == name]:
                del self.replicas[rid], self.replica_pool[rid]
            del self.tasks[name]
            log.info("gateway: task %s removed (%d observations dropped)", name, len(dropped))
            return True

        return self._call(remove())

    def _submit(self, task: TaskConfig, robot_id: str, ident: bytes, msg: P.Obs) -> None:
        """Route one accepted observation to a replica (a subclass may route differently, e.g. for a baseline)."""
        self._start(self.scheduler.submit(task.name, robot_id, (ident, msg, time.time())))

    # -- dispatch ------------------------------------------------------------------------------------
    def _start(self, dispatches: list[Dispatch]) -> None:
        for d in dispatches:
            self._loop.create_task(self._run_batch(d))

    async def _run_batch(self, d: Dispatch) -> None:
        task = self.tasks[d.pool]
        keys = list(task.observation)
        messages = [item.payload[1] for item in d.items]
        batch = stack_observations(messages, keys)
        pins = self._pins(messages) if task.inference.reload == "episode" else None
        handle = self.replicas[d.replica]
        call = handle.infer.remote(batch, pins)
        result, failure = None, None
        try:
            result = await asyncio.wait_for(
                asyncio.wrap_future(call.future()), task.inference.batch_timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - a failing forward pass must not take the gateway down
            failure = exc
        if self.replicas.get(d.replica) is not handle:
            return  # the task was deleted while this batch ran (its robots went with it)
        if isinstance(failure, (*REPLICA_GONE, TimeoutError)):
            self.metrics.inc("replica_failures_total", (d.pool,))
            timed_out = isinstance(failure, TimeoutError)
            why = f"no answer in {task.inference.batch_timeout_s} s" if timed_out else failure
            log.warning(
                "gateway: replica %s gone (%s); re-queueing %d observations", d.replica, why, len(d.items)
            )
            self._start(self.scheduler.remove_replica(d.replica))
            self._loop.create_task(self._recover(d.replica))
            return
        if failure is not None:
            log.error("gateway: inference failed on %s", d.replica, exc_info=failure)
            _, more = self.scheduler.complete(d.replica)
            self._start(more)
            for item in d.items:
                ident, msg, _ = item.payload
                self._refuse(ident, "inference_failed", type(failure).__name__, msg.robot_id, msg.step)
            return
        done, more = self.scheduler.complete(d.replica)
        self._start(more)
        pool = (d.pool,)
        self.metrics.observe("service_seconds", pool, done.service_time)
        self._observe_result(d.pool, result, len(d.items))
        if pins is not None:
            self._pin(messages, result["versions"])
        for i, item in enumerate(d.items):
            ident, msg, arrived = item.payload
            self.metrics.observe("queue_wait_seconds", pool, item.queue_wait)
            self._reply(ident, msg, result, i, arrived, {"queue_ms": item.queue_wait * 1e3})

    def _pins(self, messages: list[P.Obs]) -> np.ndarray:
        """Per row, the weight version its episode started with (-1: a new episode takes the newest)."""
        pins = np.full(len(messages), -1, dtype=np.int64)
        for i, msg in enumerate(messages):
            state = self.robots.get(msg.robot_id)
            if state is not None and state.pinned is not None and state.pinned[0] == msg.episode_id:
                pins[i] = state.pinned[1]
        return pins

    def _pin(self, messages: list[P.Obs], versions: np.ndarray) -> None:
        for msg, version in zip(messages, versions, strict=True):
            state = self.robots.get(msg.robot_id)
            if state is not None and (state.pinned is None or state.pinned[0] != msg.episode_id):
                state.pinned = (msg.episode_id, int(version))

    def _observe_result(self, pool: str, result: dict[str, Any], batch: int) -> None:
        self.metrics.observe("inference_seconds", (pool,), result["compute_s"])
        self.metrics.observe("batch_size", (pool,), batch)

    def _reply(
        self,
        ident: bytes,
        msg: P.Obs,
        result: dict[str, Any],
        i: int,
        arrived: float,
        timings: dict[str, float],
    ) -> None:
        """Send row ``i`` of a replica result to the robot; ``to_replica_ms`` is arrival → forward pass start."""
        state = self.robots.get(msg.robot_id)
        if state is not None and self._stale(state, msg):
            self.metrics.inc("stale_chunks_dropped_total", (state.task.name,))
            return
        timings["compute_ms"] = result["compute_s"] * 1e3
        timings["to_replica_ms"] = (result["t_start"] - arrived) * 1e3
        self._send(
            ident,
            P.Action(
                robot_id=msg.robot_id,
                episode_id=msg.episode_id,
                step=msg.step,
                actions=result["actions"][i],
                log_prob=float(result["log_probs"][i]),
                policy_version=int(result["versions"][i]),
                replica=result["replica"],
                timings=timings,
            ),
        )

    async def _recover(self, replica: str, attempts: int = 60) -> None:
        """Wait for Ray to restart a dead replica, then give it back to the scheduler."""
        for _ in range(attempts):
            handle = self.replicas.get(replica)
            if handle is None:
                return  # its task was deleted meanwhile
            try:
                await asyncio.wait_for(asyncio.wrap_future(handle.ready.remote().future()), 5)
            except Exception:  # noqa: BLE001 - still restarting (or gone for good)
                await asyncio.sleep(0.5)
                continue
            if self.replicas.get(replica) is not handle:
                return
            self._start(self.scheduler.add_replica(self.replica_pool[replica], replica))
            log.info("gateway: replica %s is back", replica)
            return
        log.error("gateway: replica %s did not come back; its pool continues without it", replica)
