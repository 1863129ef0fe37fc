"""The episode: the unit of durability, shared by the robot SDK, the gateway, the store and the learners.

Columnar (one numpy array per field, length T = number of executed control steps), numpy only, so the
robot side can build it without Ray or torch. Step t pairs the observation taken *before* action t with
the action actually executed at t (the human's when an operator intervened) and the reward that
followed it; ``obs_step[t]`` says which observation the policy conditioned that action on (asynchronous
execution: the chunk was computed from an earlier observation — the VLAC paper's action-timestamp lag).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OUTCOMES = ("success", "failure", "timeout", "aborted")
# Robot ids, episode ids and task names become parts of file paths in the store, so they follow one rule.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # whole string (fullmatch)
ID_RULE = "1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
SOURCES = ("online", "offline")

# Per-step columns besides the observations (``obs/<key>``) and the action, with their dtypes.
STEP_COLUMNS: dict[str, str] = {
    "reward": "float32",
    "intervention": "bool",  # an operator executed this action
    "held": "bool",  # the safety hold ran (no chunk was ready)
    "policy_version": "int32",  # weight version that produced the action (-1: human or hold)
    "obs_step": "int32",  # step whose observation the action was conditioned on (-1: human or hold)
    "log_prob": "float32",  # behaviour log-prob of the chunk, on the chunk's first step; NaN elsewhere
    "obs_time": "float64",  # robot monotonic time of the observation of this step
    "action_start": "float64",  # robot monotonic time the action began executing
}


class EpisodeConflict(ValueError):
    """A different episode under a (robot, episode id) that is stored already: refused, never acked."""


@dataclass
class Episode:
    episode_id: str
    task: str
    robot_id: str
    outcome: str
    observations: dict[str, np.ndarray]  # key -> [T, *shape]: observation before action t
    actions: np.ndarray  # [T, *action_shape]: executed actions
    columns: dict[str, np.ndarray]  # STEP_COLUMNS, each [T]
    final_observation: dict[str, np.ndarray]  # key -> [*shape]: observation after the last action
    labelled_by: str = "robot"
    source: str = "online"
    terminated: bool = False  # the environment ended the episode (success or failure state)
    truncated: bool = False  # a time limit ended it (bootstrap from final_observation)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def validate(self) -> None:
        """Raise ValueError naming every inconsistency (lengths, dtypes, labels)."""
        problems = []
        n = len(self)
        if self.outcome not in OUTCOMES:
            problems.append(f"outcome {self.outcome!r} not in {OUTCOMES}")
        if self.source not in SOURCES:
            problems.append(f"source {self.source!r} not in {SOURCES}")
        if not self.observations:
            problems.append("no observations")
        for key, arr in self.observations.items():
            if arr.shape[:1] != (n,):
                problems.append(f"observation {key!r} has {arr.shape[:1]} rows, expected {n}")
            if key not in self.final_observation:
                problems.append(f"final_observation lacks {key!r}")
            elif self.final_observation[key].shape != arr.shape[1:]:
                problems.append(f"final_observation[{key!r}] shape {self.final_observation[key].shape}")
        for name, dtype in STEP_COLUMNS.items():
            col = self.columns.get(name)
            if col is None:
                problems.append(f"missing column {name!r}")
            elif col.shape != (n,) or col.dtype != np.dtype(dtype):
                problems.append(f"column {name!r} is {col.dtype}{list(col.shape)}, expected {dtype}[{n}]")
        unknown = set(self.columns) - set(STEP_COLUMNS)
        if unknown:
            problems.append(f"unknown columns {sorted(unknown)}")
        if problems:
            raise ValueError(f"episode {self.episode_id}: " + "; ".join(problems))

    @property
    def success(self) -> bool:
        return self.outcome == "success"

    @property
    def is_evaluation(self) -> bool:
        """Run for an evaluation (the gateway stamps ``meta['evaluation']``): stored, not learned from."""
        return bool(self.meta.get("evaluation"))

    def digest(self) -> str:
        """SHA-256 of what the robot sent: identity, outcome, flags and every array's dtype, shape and
        bytes (not ``meta``, which the gateway stamps). The store keeps it to tell a true re-send (same
        digest: stored once, acked again) from a different episode under the same id (refused)."""
        h = hashlib.sha256()
        head = (self.robot_id, self.episode_id, self.task, self.outcome, self.source, self.terminated,
                self.truncated)  # fmt: skip
        h.update(repr(head).encode())
        arrays = [("action", self.actions)]
        arrays += [(f"obs/{k}", self.observations[k]) for k in sorted(self.observations)]
        arrays += [(f"col/{k}", self.columns[k]) for k in sorted(self.columns)]
        arrays += [
            (f"final/{k}", np.asarray(self.final_observation[k])) for k in sorted(self.final_observation)
        ]
        for name, arr in arrays:
            arr = np.ascontiguousarray(arr)
            h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def check_id(what: str, value: object) -> str | None:
    """Why ``value`` cannot be a robot id, episode id or task name, or None if it can."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return f"{what} {shown} is not valid: {ID_RULE}"
    return None


def end_flags(success: bool, terminated: bool, truncated: bool) -> tuple[bool, bool]:
    """(terminated, truncated) of an ended episode. Reaching the goal ends the task, so a success is
    terminal (no bootstrap) even where the environment does not say so; one rule for every producer."""
    terminated = bool(terminated or success)
    return terminated, bool(truncated) and not terminated


def empty_columns(n: int) -> dict[str, np.ndarray]:
    """Default per-step columns for ``n`` steps (e.g. for demonstrations that have no behaviour policy)."""
    out = {name: np.zeros(n, dtype=dtype) for name, dtype in STEP_COLUMNS.items()}
    out["policy_version"][:] = -1
    out["obs_step"] = np.arange(n, dtype=np.int32)
    out["log_prob"][:] = np.nan
    return out
