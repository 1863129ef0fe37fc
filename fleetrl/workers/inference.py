"""Inference replicas: Ray actors that run one task's policy on batches of observations."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import ray

from fleetrl.workers.backends import build_backend
from fleetrl.workers.logs import RemoteLogHandler
from fleetrl.workers.task import TaskConfig

log = logging.getLogger(__name__)


class InferenceReplica:
    """One replica of a task's policy. Built from the task config; every replica of a pool starts with the
    same weights (version 0) and answers ``infer`` with action chunks, log-probs and the version used."""

    def __init__(self, task: TaskConfig, index: int, metrics: Any | None = None):
        self.name = f"{task.name}/{index}"
        if metrics is not None:
            RemoteLogHandler.install(metrics, f"replica {self.name}")
        self.backend = build_backend(
            task.inference.backend,
            policy=task.policy,
            observation_spec=task.observation_spec,
            action_spec=task.action_spec,
            chunk_len=task.chunk_len,
            threads=task.inference.torch_threads,
            seed=index,
        )
        self.calls = 0
        log.info(
            "replica %s ready (%s backend, policy %s)", self.name, task.inference.backend, task.policy.family
        )

    def ready(self) -> str:
        return self.name

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        t_start = time.time()
        t0 = time.perf_counter()
        actions, log_probs = self.backend.infer(batch)
        self.calls += 1
        return {
            "actions": actions,
            "log_probs": log_probs,
            "version": self.backend.version,
            "replica": self.name,
            "compute_s": time.perf_counter() - t0,
            "t_start": t_start,
        }

    def load_weights(self, state_dict: dict, version: int) -> int:
        self.backend.load_weights(state_dict, version)
        return version

    def stop(self) -> None:
        pass


def start_replicas(task: TaskConfig, metrics: Any | None = None) -> list[ray.actor.ActorHandle]:
    """Start a task's pool; Ray restarts a replica that dies (up to ``max_restarts``)."""
    cfg = task.inference
    cls = ray.remote(InferenceReplica)
    return [
        cls.options(
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            max_restarts=cfg.max_restarts,
        ).remote(task, i, metrics)
        for i in range(cfg.replicas)
    ]
