"""Pending actions: what a robot will still execute between the observation it sends and the first action
of the chunk that observation asks for.

Why: a robot on the platform asks for its next chunk before the current one runs out (the SDK prefetches
by the round trip), so a chunk starts ``k`` steps after its observation, and the actions of those ``k``
steps are already decided. A policy that sees only the observation must guess where the robot will be;
one that also sees the pending actions has the whole state again (the augmented state of a constant-delay
MDP). On Hopper-v5 PPO kept 64 % of its no-lag return at a lag of 2 steps with the observation alone and
87 % with the pending actions (``benchmarks/ppo_lag.py``).

A policy reads them as one more observation entry, ``PENDING_KEY``: ``chunk_len`` rows of
``action_size + 1`` numbers, right-aligned so the last row is always the action right before the chunk
(a row is the flat action and a 1; rows before the pending ones are all 0). No pending actions (a
lockstep robot, a chunk's first request, a demonstration) is all zeros. Numpy only: the robot SDK, the
gateway and the learners build it the same way.
"""

from __future__ import annotations

import numpy as np

from fleetrl.robots.episode import Episode
from fleetrl.robots.protocol import ArraySpec, ProtocolError, check_finite

PENDING_KEY = "pending_actions"


def pending_spec(action_spec: ArraySpec, chunk_len: int) -> ArraySpec:
    """The observation entry a pending-conditioned policy reads."""
    return ArraySpec(shape=(chunk_len, action_spec.size + 1), dtype="float32")


def encode_pending(pending: np.ndarray | None, chunk_len: int, action_size: int) -> np.ndarray:
    """[k, *action_shape] pending actions (k <= chunk_len; None = none) -> [chunk_len, action_size + 1]."""
    out = np.zeros((chunk_len, action_size + 1), np.float32)
    k = 0 if pending is None else len(pending)
    if k:
        out[chunk_len - k :, :action_size] = np.asarray(pending, np.float32).reshape(k, action_size)
        out[chunk_len - k :, action_size] = 1.0
    return out


def check_pending(pending: np.ndarray | None, action_spec: ArraySpec, chunk_len: int) -> None:
    """Raise ProtocolError('bad_observation') unless ``pending`` is None or [k <= chunk_len, *action_shape]."""
    if pending is None:
        return
    if not isinstance(pending, np.ndarray) or pending.dtype.kind != "f":
        raise ProtocolError("bad_observation", "pending: expected a float array of actions")
    if pending.ndim != 1 + len(action_spec.shape) or tuple(pending.shape[1:]) != tuple(action_spec.shape):
        raise ProtocolError(
            "bad_observation",
            f"pending: expected shape [k, {', '.join(map(str, action_spec.shape))}], got {list(pending.shape)}",
        )
    if len(pending) > chunk_len:
        raise ProtocolError("bad_observation", f"pending: {len(pending)} actions, at most {chunk_len}")
    check_finite("pending", pending)


def episode_pending(ep: Episode, obs_step: int, first_row: int, chunk_len: int) -> np.ndarray:
    """The pending actions of a chunk conditioned on ``observations[obs_step]`` whose first executed row is
    ``first_row``, rebuilt from the episode: the robot's non-held actions in between (the tail of the
    chunk it was executing), the last ``chunk_len`` of them, as [k, *action_shape]."""
    held = ep.columns["held"][obs_step:first_row].astype(bool)
    rows = ep.actions[obs_step:first_row][~held]
    return rows[len(rows) - min(len(rows), chunk_len) :]
