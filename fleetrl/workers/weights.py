"""Versioned weight publication, shared by learners and inference replicas.

A learner publishes ``(version, state)`` for its task; the board puts the state into the Ray object store
once (the board owns that object, so it outlives a restarted learner worker), pushes the reference to
every replica of the task, and keeps the newest version so a replica that (re)starts loads it before
serving. Weights travel as numpy arrays (zero-copy reads from the object store).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import ray
import torch

log = logging.getLogger(__name__)


def to_numpy_state(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}


def to_torch_state(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


class WeightBoard:
    """Ray actor: ``register(task, replicas)``, ``unregister(task)``, ``pools()``, ``publish(task, version,
    state)``, ``latest(task)``."""

    def __init__(self) -> None:
        self.replicas: dict[str, list[Any]] = {}
        self.newest: dict[str, tuple[int, ray.ObjectRef, float]] = {}

    def ready(self) -> bool:
        return True

    def register(self, task: str, replicas: list[Any]) -> None:
        self.replicas[task] = list(replicas)

    def pools(self) -> dict[str, list[Any]]:
        """Every task's replicas (a restarted gateway finds the pools of tasks created since boot here)."""
        return self.replicas

    def unregister(self, task: str) -> None:
        """A deleted task: forget its replicas and weights (a task created again under the name may have
        another architecture; its learner publishes anew)."""
        self.replicas.pop(task, None)
        self.newest.pop(task, None)

    def publish(self, task: str, version: int, state: dict[str, np.ndarray]) -> int:
        """Keep ``version`` as the task's newest and push it to the task's replicas (not waiting for them)."""
        current = self.newest.get(task)
        if current is not None and version <= current[0]:
            log.warning("weights: %s version %d not newer than %d; ignored", task, version, current[0])
            return current[0]
        ref = ray.put(state)
        published_at = time.time()
        self.newest[task] = (version, ref, published_at)
        for replica in self.replicas.get(task, []):
            replica.load_weights.remote(ref, version, published_at)
        return version

    def serving(self, task: str, timeout: float = 5.0) -> int | None:
        """The oldest version any live replica of ``task`` serves (None: no replica answered). A replica
        that is restarting is left out; it loads the newest version before it serves again."""
        refs = [replica.served_version.remote() for replica in self.replicas.get(task, [])]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        versions = []
        for ref in ready:
            try:
                versions.append(ray.get(ref))
            except ray.exceptions.RayError:
                continue
        return min(versions) if versions else None

    def latest(self, task: str) -> tuple[int, list[ray.ObjectRef], float] | None:
        """``(version, [ref], published_at)`` of the newest version (the ref wrapped so Ray passes it on)."""
        entry = self.newest.get(task)
        return None if entry is None else (entry[0], [entry[1]], entry[2])

    def stop(self) -> None:
        self.newest.clear()
