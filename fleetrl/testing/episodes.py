"""Synthetic episodes for tests and benchmarks of the store and the replay (numpy only)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from fleetrl.robots.episode import Episode, empty_columns


def synthetic_episode(
    n: int = 5,
    *,
    episode_id: str | None = None,
    task: str = "reach",
    robot_id: str = "robot-0",
    outcome: str = "success",
    source: str = "online",
    terminated: bool | None = None,
    truncated: bool | None = None,
    obs_spec: dict[str, tuple[tuple[int, ...], str]] | None = None,
    action_shape: tuple[int, ...] = (2,),
    rewards: np.ndarray | list[float] | None = None,
    control_hz: float = 10.0,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> Episode:
    """An episode of ``n`` steps with random observations and actions.

    Action ``t`` is filled with the value ``t`` (so tests can recognise which step a chunk came from);
    ``terminated`` defaults to success/failure, ``truncated`` to timeout.
    """
    rng = np.random.default_rng(seed)
    obs_spec = obs_spec or {"state": ((4,), "float32")}

    def sample(shape: tuple[int, ...], dtype: str) -> np.ndarray:
        if np.issubdtype(np.dtype(dtype), np.integer):
            return rng.integers(0, 255, size=shape).astype(dtype)
        if np.dtype(dtype) == bool:
            return rng.random(shape) < 0.5
        return rng.standard_normal(shape).astype(dtype)

    observations = {k: sample((n, *shape), dtype) for k, (shape, dtype) in obs_spec.items()}
    final = {k: sample(shape, dtype) for k, (shape, dtype) in obs_spec.items()}
    actions = np.broadcast_to(
        np.arange(n, dtype=np.float32).reshape(n, *[1] * len(action_shape)), (n, *action_shape)
    )
    columns = empty_columns(n)
    columns["obs_time"] = np.arange(n, dtype=np.float64) / control_hz
    columns["action_start"] = columns["obs_time"] + 0.5 / control_hz
    if rewards is not None:
        columns["reward"] = np.asarray(rewards, dtype=np.float32)
    return Episode(
        episode_id=episode_id or uuid.uuid4().hex,
        task=task,
        robot_id=robot_id,
        outcome=outcome,
        observations=observations,
        actions=np.ascontiguousarray(actions),
        columns=columns,
        final_observation=final,
        source=source,
        terminated=outcome in ("success", "failure") if terminated is None else terminated,
        truncated=outcome == "timeout" if truncated is None else truncated,
        meta=dict(meta or {}),
    )
