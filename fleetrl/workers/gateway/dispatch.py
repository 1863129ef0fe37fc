"""Task pools and replica dispatch, the gateway's inference part: every served task has a pool of
inference replicas in the scheduler; an accepted observation is submitted to its task's pool, a dispatch
becomes one batched ``infer`` on a replica (over the replica's ZeroMQ channel, ``replica_channel.py``, as a
Ray call with ``inference.transport: ray``, or in this process with ``inline``: inline.py), and each row
of the result goes back to its robot as an action chunk. A replica joins the scheduler once it answers
(its channel's address comes through Ray). One that dies or does not answer within ``batch_timeout_s``
has its batch re-queued, and is given back to the scheduler once Ray has restarted it. Tasks come and go
while the gateway runs (``add_task``, ``remove_task``).

Each row names the weight version its episode runs when anything pins versions (episode reload mode, a
canary trial, a rollback, an evaluation: ``rollout.py``); otherwise a batch takes the replica's newest.

It runs on the gateway's asyncio loop and knows the gateway only through what its constructor is given:
the scheduler, the robot table (open episodes and their assignments, who is under human control),
``send`` and ``refuse`` for frames to robots, the metrics buffer and the loop it starts its replica calls on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from fleetrl.robots import protocol as P
from fleetrl.robots.pending import PENDING_KEY, encode_pending
from fleetrl.workers.gateway.rollout import NEWEST, TaskRollout
from fleetrl.workers.gateway.scheduler import Dispatch, Scheduler
from fleetrl.workers.metrics_server import MetricsBuffer
from fleetrl.workers.replica_channel import ChannelClient, ReplicaLost
from fleetrl.workers.task import TaskConfig

if TYPE_CHECKING:
    from fleetrl.workers.gateway.session import RobotState

log = logging.getLogger(__name__)
REPLICA_GONE = (RayActorError, ActorDiedError, ActorUnavailableError, ReplicaLost)
RETRY_S = 0.5  # between attempts to reach a replica that is (re)starting


def stack_observations(messages: list[P.Obs], task: TaskConfig) -> dict[str, np.ndarray]:
    """The batch a replica's policy reads: the task's observation entries and, for a policy that reads
    them, the robots' pending actions (``fleetrl.robots.pending``)."""
    batch = {k: np.stack([m.observation[k] for m in messages]) for k in task.observation}
    if getattr(task.policy, "pending_actions", False):
        size = task.action_spec.size
        batch[PENDING_KEY] = np.stack([encode_pending(m.pending, task.chunk_len, size) for m in messages])
    return batch


class ReplicaDispatch:
    """The tasks served, their replicas, and the batched calls that turn observations into action chunks."""

    def __init__(
        self,
        scheduler: Scheduler,
        robots: dict[str, RobotState],
        send: Callable[[bytes, P.Message], None],
        refuse: Callable[..., None],
        metrics: MetricsBuffer,
        loop: asyncio.AbstractEventLoop,
        share: Callable[[int], list[int]] | None = None,
    ):
        """``refuse(ident, code, message, robot_id, step)`` answers a frame with an ``error`` and counts it;
        ``share(n)``: the indices of a task's n replicas this gateway dispatches to (None: all of them)."""
        self.share = share or (lambda n: list(range(n)))
        self.scheduler = scheduler
        self.robots = robots
        self.send = send
        self.refuse = refuse
        self.metrics = metrics
        self.loop = loop
        self.tasks: dict[str, TaskConfig] = {}
        self.replicas: dict[str, Any] = {}  # replica id ("task/i") -> actor handle
        self.channels: dict[str, ChannelClient] = {}  # replica id -> its channel (transport: zmq)
        self.ctx = zmq.Context()
        self.replica_pool: dict[str, str] = {}  # replica id -> its task's pool
        self.inline: set[str] = set()  # replica ids that are this process's own copies (inline.py)
        self.rollouts: dict[str, TaskRollout] = {}  # task -> which version its episodes run
        self.held: dict[str, asyncio.TimerHandle] = {}  # pool -> the timer that sends what it holds back

    # -- task pools ----------------------------------------------------------------------------------
    def add_task(self, task: TaskConfig, replicas: list[Any], inline: Any | None = None) -> None:
        """Serve ``task`` with its replicas, or with ``inline``, this gateway's own copy of its policy
        (``transport: inline``, inline.py: the pool's one replica); ValueError if it is served already."""
        if task.name in self.tasks:
            raise ValueError(f"task {task.name!r} is already served")
        if (inline is None) == (task.inference.transport == "inline"):
            raise ValueError(
                f"task {task.name!r}: an inline copy goes with transport inline, and only with it"
            )
        self.tasks[task.name] = task
        self.rollouts[task.name] = TaskRollout(task.name, task.rollout)
        self.scheduler.add_pool(
            task.name, task.inference.max_batch, task.inference.dispatch_interval_ms / 1e3
        )
        if inline is not None:
            self.replicas[inline.name], self.replica_pool[inline.name] = inline, task.name
            self.inline.add(inline.name)
            self.scheduler.add_replica(task.name, inline.name)
            return
        for i in self.share(len(replicas)):
            rid, handle = f"{task.name}/{i}", replicas[i]
            self.replicas[rid] = handle
            self.replica_pool[rid] = task.name
            if task.inference.transport == "ray":
                self.scheduler.add_replica(task.name, rid)  # Ray queues the calls until the actor is up
            else:
                self.loop.create_task(self._connect(rid, back=False))

    def close(self) -> None:
        """Close every replica channel (the gateway's loop is stopping)."""
        for client in self.channels.values():
            client.close()
        self.channels.clear()
        self.ctx.destroy(linger=0)  # term() would wait forever on a socket left open

    def remove_task(self, name: str) -> None:
        """Forget a served task's pool and replicas; what waited for them is dropped, and a batch still
        running on one of them is ignored when it returns."""
        dropped = self.scheduler.remove_pool(name)
        if (timer := self.held.pop(name, None)) is not None:
            timer.cancel()
        for rid in [rid for rid, pool in self.replica_pool.items() if pool == name]:
            del self.replicas[rid], self.replica_pool[rid]
            self.inline.discard(rid)
            self._disconnect(rid)
        del self.tasks[name], self.rollouts[name]
        log.info("gateway: task %s removed (%d observations dropped)", name, len(dropped))

    # -- dispatch ------------------------------------------------------------------------------------
    def submit(self, task: TaskConfig, robot_id: str, ident: bytes, msg: P.Obs) -> None:
        """Route one accepted observation to its task's pool."""
        self._start(task.name, self.scheduler.submit(task.name, robot_id, (ident, msg, time.time())))

    def drop_pending(self, state: RobotState) -> None:
        """Forget the robot's observations still waiting for a replica (it left, or an operator took over)."""
        self.scheduler.drop(state.task.name, lambda item: item.key == state.robot_id)

    def _start(self, pool: str, dispatches: list[Dispatch]) -> None:
        """Run the batches the scheduler made; if it held observations back (the pool's dispatch interval),
        make sure a timer sends them when the interval ends."""
        for d in dispatches:
            if d.replica in self.inline:  # a plain callback: the forward pass never awaits (no task to make)
                self.loop.call_soon(self._run_inline, d)
            else:
                self.loop.create_task(self._run_batch(d))
        if pool not in self.held and (due := self.scheduler.due(pool)) is not None:
            self.held[pool] = self.loop.call_later(max(0.0, due - time.monotonic()), self._send_held, pool)

    def _send_held(self, pool: str) -> None:
        del self.held[pool]
        if pool in self.tasks:
            self._start(pool, self.scheduler.poll(pool))

    def _batch(self, d: Dispatch) -> tuple[TaskConfig, list[P.Obs], tuple[Any, ...]]:
        """The dispatch's task, its observations and the ``infer`` arguments (batch, pins, deterministic)."""
        task = self.tasks[d.pool]
        messages = [item.payload[1] for item in d.items]
        return task, messages, (stack_observations(messages, task), *self._pins(task, messages))

    def _run_inline(self, d: Dispatch) -> None:
        """A batch for this process's own copy (transport inline): the forward pass runs here, on the loop."""
        task, messages, args = self._batch(d)
        handle = self.replicas[d.replica]
        result, failure = None, None
        try:
            result = handle.infer(*args)
        except Exception as exc:  # noqa: BLE001 - a failing forward pass must not take the gateway down
            failure = exc
        self._finish(d, task, handle, messages, result, failure)

    async def _run_batch(self, d: Dispatch) -> None:
        """A batch for a replica: over its channel (transport zmq) or as a Ray call (ray)."""
        task, messages, args = self._batch(d)
        handle, client = self.replicas[d.replica], self.channels.get(d.replica)
        result, failure = None, None
        try:
            answer = (
                client.infer(*args)
                if client is not None
                else asyncio.wrap_future(handle.infer.remote(*args).future())
            )
            result = await asyncio.wait_for(answer, task.inference.batch_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a failing forward pass must not take the gateway down
            failure = exc
        self._finish(d, task, handle, messages, result, failure)

    def _finish(
        self,
        d: Dispatch,
        task: TaskConfig,
        handle: Any,
        messages: list[P.Obs],
        result: dict[str, Any] | None,
        failure: Exception | None,
    ) -> None:
        """A batch ended: its rows go to their robots, or its replica is handled as failed or gone."""
        if self.replicas.get(d.replica) is not handle:
            return  # the task was deleted while this batch ran (its robots went with it)
        if isinstance(failure, (*REPLICA_GONE, TimeoutError)):
            self._replica_gone(d, task, failure)
        elif failure is not None:
            log.error("gateway: inference failed on %s", d.replica, exc_info=failure)
            _, more = self.scheduler.complete(d.replica)
            self._start(d.pool, more)
            for item in d.items:
                ident, msg, _ = item.payload
                self.refuse(ident, "inference_failed", type(failure).__name__, msg.robot_id, msg.step)
        else:
            self._deliver(d, messages, result, task.inference.reload == "episode")

    def _replica_gone(self, d: Dispatch, task: TaskConfig, failure: Exception) -> None:
        """The replica died or timed out: its batch goes back to the queue and it is watched until back."""
        self.metrics.inc("replica_failures_total", (d.pool,))
        timed_out = isinstance(failure, TimeoutError)
        why = f"no answer in {task.inference.batch_timeout_s} s" if timed_out else failure
        log.warning(
            "gateway: replica %s gone (%s); re-queueing %d observations", d.replica, why, len(d.items)
        )
        self._disconnect(d.replica)
        self._start(d.pool, self.scheduler.remove_replica(d.replica))
        self.loop.create_task(self._connect(d.replica, back=True))

    def _deliver(self, d: Dispatch, messages: list[P.Obs], result: dict[str, Any], pinning: bool) -> None:
        """A batch came back: the replica takes more work and every row goes to its robot."""
        done, more = self.scheduler.complete(d.replica)
        self._start(d.pool, more)
        pool = (d.pool,)
        self.metrics.observe("service_seconds", pool, done.service_time)
        self.observe_result(d.pool, result, len(d.items))
        rollout = self.rollouts.get(d.pool)
        if rollout is not None:
            rollout.saw_version(int(result["version"]))
        if pinning:
            self._pin(messages, result["versions"])
        for i, item in enumerate(d.items):
            ident, msg, arrived = item.payload
            self.metrics.observe("queue_wait_seconds", pool, item.queue_wait)
            self.reply(ident, msg, result, i, arrived, {"queue_ms": item.queue_wait * 1e3})

    def _pins(self, task: TaskConfig, messages: list[P.Obs]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per row, the weight version its episode runs (-1: the newest) and whether it takes the policy's
        mode; (None, None) when nothing pins (every row takes the newest: the fast path)."""
        rollout = self.rollouts[task.name]
        episode_mode = task.inference.reload == "episode"
        if not (episode_mode or rollout.pins_rows):
            return None, None
        pins = np.full(len(messages), NEWEST, dtype=np.int64)
        deterministic = np.zeros(len(messages), dtype=bool)
        for i, msg in enumerate(messages):
            state = self.robots.get(msg.robot_id)
            if state is None:
                continue
            asm = state.assemblies.get(msg.episode_id)
            if asm is not None and asm.assignment.version != NEWEST:
                pins[i], deterministic[i] = asm.assignment.version, asm.assignment.deterministic
            elif episode_mode and state.pinned is not None and state.pinned[0] == msg.episode_id:
                pins[i] = state.pinned[1]  # the version the episode started with
        return pins, deterministic if deterministic.any() else None

    def _pin(self, messages: list[P.Obs], versions: np.ndarray) -> None:
        """Episode reload mode: an episode keeps the version its first chunk came from."""
        for msg, version in zip(messages, versions, strict=True):
            state = self.robots.get(msg.robot_id)
            if state is not None and (state.pinned is None or state.pinned[0] != msg.episode_id):
                state.pinned = (msg.episode_id, int(version))

    def observe_result(self, pool: str, result: dict[str, Any], batch: int) -> None:
        """Record a replica result's forward-pass time and batch size."""
        self.metrics.observe("inference_seconds", (pool,), result["compute_s"])
        self.metrics.observe("batch_size", (pool,), batch)

    def reply(
        self,
        ident: bytes,
        msg: P.Obs,
        result: dict[str, Any],
        i: int,
        arrived: float,
        timings: dict[str, float],
    ) -> None:
        """Send row ``i`` of a replica result to the robot. Timings: ``to_replica_ms`` arrival → forward pass
        start, ``compute_ms`` the forward pass, ``gateway_ms`` arrival → reply handed to the socket (what is
        left of a robot's round trip is its own side and the network)."""
        state = self.robots.get(msg.robot_id)
        if state is not None and state.chunk_is_stale(msg.episode_id, msg.step):
            self.metrics.inc("stale_chunks_dropped_total", (state.task.name,))
            return
        if state is not None:
            state.policy_version = int(result["versions"][i])
        timings["compute_ms"] = result["compute_s"] * 1e3
        timings["to_replica_ms"] = (result["t_start"] - arrived) * 1e3
        timings["gateway_ms"] = (time.time() - arrived) * 1e3
        self.send(
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

    def _disconnect(self, replica: str) -> None:
        client = self.channels.pop(replica, None)
        if client is not None:
            client.close()

    async def _connect(self, replica: str, back: bool) -> None:
        """Wait until Ray has the replica up (started, or restarted after it died), open its channel and
        give it to the scheduler. Keeps trying while its task is served (a warning every 60 attempts)."""
        attempt = 0
        while (handle := self.replicas.get(replica)) is not None:
            attempt += 1
            zmq_transport = self.tasks[self.replica_pool[replica]].inference.transport == "zmq"
            probe = handle.channel.remote() if zmq_transport else handle.ready.remote()
            try:
                address = await asyncio.wait_for(asyncio.wrap_future(probe.future()), 5)
            except Exception:  # noqa: BLE001 - still (re)starting, or gone for good
                if attempt % 60 == 0:
                    log.warning("gateway: replica %s has not answered for %d attempts", replica, attempt)
                await asyncio.sleep(RETRY_S)
                continue
            if self.replicas.get(replica) is not handle:
                return  # its task was deleted (or re-created) meanwhile
            if zmq_transport:
                self.channels[replica] = ChannelClient(self.ctx, address, self.loop)
            pool = self.replica_pool[replica]
            self._start(pool, self.scheduler.add_replica(pool, replica))
            if back:
                log.info("gateway: replica %s is back", replica)
            return
