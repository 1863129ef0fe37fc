"""Inline inference (``inference.transport: inline``): the gateway runs a task's policy in its own process,
as the only replica of that task's pool.

Why: with a small CPU policy a replica's forward pass costs less than the hop to it. On the 128-robot
benchmark (2 cores) a batch's round trip to a replica process, its ZeroMQ frames and the replica's
wake-ups cost more CPU than the forward pass itself; running the same ``InferenceReplica`` object in the
gateway removes them (benchmarks/results/scheduler_latency.json compares both). The forward pass then
runs on the gateway's loop, so the gateway answers nothing else meanwhile: a policy that takes more than
a millisecond or so a batch belongs in replicas (the default ``zmq``), and so does any GPU policy.

The weight board still owns the versions: each gateway joins its copy to the task's pool
(``WeightBoard.join``), so a publish, a hold and the learner's "is the fleet serving v" reach it like any
replica. ``GatewayCopy`` is the pool member the board holds: it answers the replica methods the board calls
by calling the gateway (``Gateway.inline_call``). A gateway joins again every ``REJOIN_S`` and loads what it
missed, so a restarted board (which forgets its members) reaches the copies again within that time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import ray

from fleetrl.workers.task import TaskConfig

log = logging.getLogger(__name__)
REJOIN_S = 5.0
# What the weight board (and the learner, through it) may ask of a pool member.
REPLICA_METHODS = frozenset({"load_weights", "hold", "served_version", "served_state", "ready", "node_id"})


class _Method:
    def __init__(self, gateway: Any, task: str, method: str):
        self.gateway, self.task, self.method = gateway, task, method

    def remote(self, *args: Any) -> ray.ObjectRef:
        return self.gateway.inline_call.remote(self.task, self.method, *args)


class GatewayCopy:
    """A gateway's copy of a task's policy, as the weight board sees it: ``member.load_weights.remote(...)``
    and the other replica methods (``REPLICA_METHODS``) go to the gateway; ``key`` names the gateway, so
    a restarted gateway's copy replaces its predecessor's."""

    def __init__(self, gateway: Any, task: str, key: str):
        self.gateway, self.task, self.key = gateway, task, key

    def __getattr__(self, method: str) -> _Method:
        if method not in REPLICA_METHODS:
            raise AttributeError(method)
        return _Method(self.gateway, self.task, method)


# (task, index, metrics server, name) -> a replica object run in this process: ``InferenceReplica``,
# which the platform hands the gateway (a role package does not import another).
CopyFactory = Callable[..., Any]


class InlinePolicies:
    """The gateway's own copies of its inline tasks' policies (task name -> replica object), joined to the
    weight board's pools and kept current by a thread that joins again every ``REJOIN_S``."""

    def __init__(
        self,
        build: CopyFactory | None,
        gateway_name: str,
        gateway_index: int,
        weights: Any | None,
        metrics: Any | None,
    ):
        """``build``: makes a copy (None: this gateway cannot run policies inline); ``gateway_index`` seeds
        the copies' sampling noise (gateways share weights, not noise)."""
        self.build, self.gateway_name, self.gateway_index = build, gateway_name, gateway_index
        self.weights, self.metrics = weights, metrics
        self.copies: dict[str, Any] = {}
        self._handle: Any | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, task: TaskConfig) -> Any:
        """Build the task's copy (version 0), join it to the board's pool and load the newest and held
        versions. Blocks on Ray: call it off the gateway's loop."""
        if self.build is None:
            raise ValueError(f"task {task.name!r}: this gateway was given no way to run a policy inline")
        copy = self.build(task, self.gateway_index, self.metrics, name=f"{task.name}/{self.gateway_name}")
        self.copies[task.name] = copy
        self._join(task.name, copy)
        if self._thread is None and self.weights is not None:
            self._thread = threading.Thread(
                target=self._rejoin_loop, name="fleetrl-inline-weights", daemon=True
            )
            self._thread.start()
        return copy

    def remove(self, task: str) -> None:
        self.copies.pop(task, None)

    def call(self, task: str, method: str, *args: Any) -> Any:
        """A replica method the weight board called on this gateway's copy of ``task``."""
        if method not in REPLICA_METHODS:
            raise ValueError(f"{method!r} is not a replica method")
        copy = self.copies.get(task)
        if copy is None:
            raise KeyError(f"this gateway runs no inline copy of task {task!r}")
        return getattr(copy, method)(*args)

    def close(self) -> None:
        self._stop.set()

    def _join(self, task: str, copy: Any) -> None:
        """Be a member of the task's pool and load what the board has that this copy lacks."""
        if self.weights is None:
            return
        if self._handle is None:
            self._handle = ray.get_runtime_context().current_actor
        joined = ray.get(self.weights.join.remote(task, GatewayCopy(self._handle, task, self.gateway_name)))
        if joined is not None:  # None: the board does not know the task (deleted meanwhile)
            catch_up(copy, *joined, fetch=ray.get)

    def _rejoin_loop(self) -> None:
        while not self._stop.wait(REJOIN_S):
            for task, copy in list(self.copies.items()):
                try:
                    self._join(task, copy)
                except Exception as exc:  # noqa: BLE001 - the board may be restarting: try again later
                    log.debug("gateway: inline copy of %s could not join the weight board: %s", task, exc)


def catch_up(copy: Any, newest: tuple | None, held: dict, fetch: Callable[[Any], Any]) -> None:
    """Load into ``copy`` what the board has that it lacks (``WeightBoard.join``'s answer): a newer version
    (``fetch`` reads its weights), and held versions it does not keep. Holds are only added here, never
    released: a release is pushed by the board, and a hold pushed since the board answered must not be
    undone by this older answer."""
    if newest is not None and newest[0] > copy.served_version():
        version, (ref,), published_at = newest
        copy.load_weights(fetch(ref), version, published_at)
    kept = set(copy.backend.kept_versions())
    if any(v not in kept for v in held):
        copy.hold({**dict.fromkeys(getattr(copy.backend, "held", ())), **held})
