"""A robot with one decision per episode for rollout tests: an episode is ``steps`` control periods, and it
succeeds if the policy's last action is above a threshold. A trained version (``good_weights``) succeeds nearly always, a version with its
weights zeroed (``broken_weights``) about 29 % of the time when sampling and never in its mode, so a canary
trial, a rollback and an evaluation each have a clear right answer within a few dozen episodes."""

from __future__ import annotations

import numpy as np

from fleetrl.robots.client.robot import StepResult
from fleetrl.robots.protocol import ArraySpec

THRESHOLD = 0.5


def threshold_task(name: str, **fields) -> dict:
    """A ``POST /v1/tasks`` body for ``ThresholdRobot``s: chunks of one action, one replica."""
    task = {
        "name": name,
        "observation": {"state": {"shape": [2], "dtype": "float32"}},
        "action": {"shape": [1], "dtype": "float32", "low": -1.0, "high": 1.0},
        "chunk_len": 1,
        "inference": {"replicas": 1, "num_cpus": 0},
    }
    return {"task": {**task, **fields}}


class ThresholdRobot:
    observation_spec = {"state": ArraySpec((2,), "float32")}
    action_spec = ArraySpec((1,), "float32", -1.0, 1.0)

    def __init__(self, control_hz: float = 10.0, steps: int = 5):
        self.control_hz, self.steps = control_hz, steps
        self.obs = {"state": np.array([1.0, 0.0], np.float32)}
        self.t = 0

    def reset(self) -> dict[str, np.ndarray]:
        self.t = 0
        return self.obs

    def act(self, action: np.ndarray) -> StepResult:
        self.t += 1
        if self.t < self.steps:
            return StepResult(self.obs, 0.0, terminated=False, truncated=False, success=False)
        success = float(action[0]) > THRESHOLD
        return StepResult(self.obs, float(success), terminated=True, truncated=False, success=success)

    def hold(self) -> StepResult:
        return StepResult(self.obs, 0.0, terminated=False, truncated=False, success=False)


def good_weights(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` (a gaussian_mlp policy's) made to push: its last layer's bias drives tanh to ~1, tiny noise."""
    out = {k: v.copy() for k, v in state.items()}
    last = max(k for k in out if k.startswith("body.") and k.endswith(".bias"))
    out[last][:] = 3.0
    out["log_std"][:] = -5.0
    return out


def broken_weights(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` with every weight of the action network zeroed (mean 0, std 1): the broken version."""
    return {
        k: np.zeros_like(v) if k.startswith("body.") or k == "log_std" else v.copy() for k, v in state.items()
    }
