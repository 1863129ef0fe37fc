"""Inference replicas: Ray actors that run one task's policy on batches of observations."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import ray

from fleetrl.workers.inference.backends import build_backend
from fleetrl.workers.metrics_server import MetricsBuffer, RemoteLogHandler
from fleetrl.workers.replica_channel import ChannelServer
from fleetrl.workers.task import TaskConfig
from fleetrl.workers.weights import replica_actor_name

log = logging.getLogger(__name__)


class InferenceReplica:
    """One replica of a task's policy. Built from the task config; every replica of a pool starts with the
    same weights (version 0) and answers ``infer`` with action chunks, log-probs and the version used:
    over its ZeroMQ channel (``inference.transport: zmq``, the gateway's hot path) or as a Ray call. The
    channel's thread and Ray's method thread share the backend under one lock, so new weights land between
    batches."""

    def __init__(
        self,
        task: TaskConfig,
        index: int,
        metrics: Any | None = None,
        weights: Any | None = None,
        name: str | None = None,
    ):
        """``name``: given for a copy that runs inside a gateway (``transport: inline``, gateway/inline.py),
        whose process already sends its logs; a replica actor is named ``task/index``."""
        self.name = name or f"{task.name}/{index}"
        self.task_name = task.name
        self.metrics_server = metrics
        self.metrics = MetricsBuffer()
        if metrics is not None and name is None:
            RemoteLogHandler.install(metrics, f"replica {self.name}")
        self.backend = build_backend(
            task.inference.backend,
            policy=task.policy,
            observation_spec=task.observation_spec,
            action_spec=task.action_spec,
            chunk_len=task.chunk_len,
            threads=task.inference.torch_threads,
            seed=index,
            keep_versions=2 if task.inference.reload == "episode" else 1,
            fast_numerics=task.inference.fast_numerics,
        )
        self.calls = 0
        self._lock = threading.Lock()
        newest = None if weights is None else ray.get(weights.latest.remote(task.name))
        if newest is not None:  # a (re)started replica serves the newest published weights
            version, (ref,), published_at = newest
            self.load_weights(ray.get(ref), version, published_at)
        if weights is not None:  # and the versions the gateway holds (canary, rollback, evaluation)
            self.hold(ray.get(weights.held.remote(task.name)))
        self._channel = None
        if task.inference.transport == "zmq":
            host = ray.util.get_node_ip_address()
            self._channel = ChannelServer(self.infer, host, self.name)
        log.info(
            "replica %s ready (%s backend, policy %s)", self.name, task.inference.backend, task.policy.family
        )

    def ready(self) -> str:
        return self.name

    def channel(self) -> dict[str, Any] | None:
        """The channel's ``{endpoint, token}`` (None with ``transport: ray``): how the gateway reaches it."""
        return None if self._channel is None else self._channel.address()

    def node_id(self) -> str:
        """The Ray node this replica runs on (where placement put it)."""
        return ray.get_runtime_context().get_node_id()

    def infer(
        self,
        batch: dict[str, np.ndarray],
        pins: np.ndarray | None = None,
        deterministic: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """One forward pass. ``pins[i]`` asks for the version row i's episode runs (episode reload mode, a
        canary, a rollback, an evaluation), ``deterministic[i]`` for the policy's mode (evaluation);
        ``versions[i]`` says which version produced row i."""
        t_start = time.time()
        t0 = time.perf_counter()
        with self._lock:
            actions, log_probs, versions = self.backend.infer(batch, pins, deterministic)
            version = self.backend.version
            self.calls += 1
        return {
            "actions": actions,
            "log_probs": log_probs,
            "versions": versions,
            "version": version,
            "replica": self.name,
            "compute_s": time.perf_counter() - t0,
            "t_start": t_start,
        }

    def load_weights(self, state_dict: dict, version: int, published_at: float | None = None) -> int:
        """Take a published version: built (and traced) while batches go on, then it lands between batches
        (the backend's lock)."""
        prepared = self.backend.prepare(state_dict, version)
        with self._lock:
            self.backend.install(prepared)
        if published_at is not None:
            self.metrics.observe(
                "model_to_actor_seconds", (self.task_name,), max(0.0, time.time() - published_at)
            )
        self.metrics.set("weight_version", (self.name,), self.backend.version)
        if self.metrics_server is not None:
            self.metrics_server.ingest.remote(*self.metrics.drain())
        return self.backend.version

    def hold(self, versions: dict[int, list[ray.ObjectRef] | None]) -> list[int]:
        """Keep serving ``versions`` (``{version: [ref]}``, None for the initial weights) besides the newest:
        what the weight board's ``hold`` asks of every replica. Returns the versions held now."""
        with self._lock:
            kept = set(self.backend.kept_versions())  # not fetched again
        states = {v: None if refs is None or v in kept else ray.get(refs[0]) for v, refs in versions.items()}
        with self._lock:
            return self.backend.hold(states)

    def served_version(self) -> int:
        return self.backend.version

    def served_state(self) -> dict[str, np.ndarray]:
        """The weights of the version served now (a restarted weight board takes its newest from here)."""
        with self._lock:
            return self.backend.served_state()

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()


def start_replicas(
    task: TaskConfig, metrics: Any | None = None, weights: Any | None = None
) -> list[ray.actor.ActorHandle]:
    """Start a task's pool; Ray restarts a replica that dies (up to ``max_restarts``). Empty for a task whose
    gateways run its policy themselves (``transport: inline``)."""
    cfg = task.inference
    if cfg.transport == "inline":
        return []
    options = cfg.ray_options(f"inference pool {task.name}")
    if cfg.spread:
        options["scheduling_strategy"] = "SPREAD"
    board_id = ray.get(weights.identity.remote()) if weights is not None else ""
    cls = ray.remote(InferenceReplica)

    def replica(i: int) -> ray.actor.ActorHandle:
        named = {"name": replica_actor_name(board_id, task.name, i)} if board_id else {}
        return cls.options(**options, **named).remote(task, i, metrics, weights)

    return [replica(i) for i in range(cfg.replicas)]
