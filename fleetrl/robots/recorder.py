"""Robot-side recording of an episode as it runs, and its upload as ``steps`` frames.

The SDK appends one record per executed control step; ``steps_messages`` cuts the not-yet-sent rows
into bounded columnar frames. The log is kept until the gateway acks the episode, so any suffix can be
sent again when the gateway asks for it (e.g. after it restarted and lost its partial copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleetrl.robots import protocol as P
from fleetrl.robots.episode import STEP_COLUMNS


@dataclass
class StepRecord:
    """One executed control step: which observation the action was conditioned on and when it ran."""

    step: int
    obs_step: int  # step at which the conditioning observation was taken (-1: hold or human)
    obs_time: float
    action_start: float
    policy_version: int  # -1: hold or human
    replica: str
    held: bool = False
    intervention: bool = False
    reward: float = 0.0
    log_prob: float = float("nan")  # the chunk's log-prob, on its first executed step


@dataclass
class EpisodeLog:
    episode_id: str
    steps: list[StepRecord] = field(default_factory=list)
    observations: list[dict[str, np.ndarray]] = field(default_factory=list)  # before each action
    actions: list[np.ndarray] = field(default_factory=list)  # policy sample (executed clipped) / operator's
    final_observation: dict[str, np.ndarray] | None = None
    outcome: str | None = None
    terminated: bool = False
    truncated: bool = False
    total_reward: float = 0.0
    sent: int = 0  # rows the gateway has (as far as we know)
    acked: bool = False
    refused: str | None = None  # the gateway refused the episode for good (an ``EPISODE_REFUSALS`` code)
    source: str = "online"  # "offline": a demonstration recorded through the SDK
    meta: dict = field(default_factory=dict)  # the robot's facts about the episode (reset seed, operator)

    def record(self, rec: StepRecord, observation: dict[str, np.ndarray], action: np.ndarray) -> None:
        self.steps.append(rec)
        self.observations.append(observation)
        self.actions.append(np.asarray(action, dtype=np.float32))
        self.total_reward += rec.reward

    def steps_messages(
        self,
        robot_id: str,
        max_rows: int,
        max_bytes: int | None = None,
        specs: dict[str, P.ArraySpec] | None = None,
    ) -> list[P.Steps]:
        """Frames for rows ``sent ..``, marking them sent: at most ``max_rows`` rows each and, beyond a
        frame's first row, at most ``max_bytes`` of observations and actions. Camera frames go compressed
        as the task's ``specs`` say (``P.encode_observation``), so a frame's size is that of what it sends."""
        out = []
        while self.sent < len(self.steps):
            lo = hi = self.sent
            wire, size = [], 0
            while hi < len(self.steps) and hi - lo < max_rows:
                row = P.encode_observation(specs, self.observations[hi]) if specs else self.observations[hi]
                row_bytes = self.actions[hi].nbytes + sum(v.nbytes for v in row.values())
                if hi > lo and max_bytes is not None and size + row_bytes > max_bytes:
                    break
                wire.append(row)
                size += row_bytes
                hi += 1
            out.append(self._frame(robot_id, lo, hi, wire))
            self.sent = hi
        return out

    def _frame(self, robot_id: str, lo: int, hi: int, wire: list[dict]) -> P.Steps:
        rows = self.steps[lo:hi]
        keys = wire[0].keys()
        columns = {
            "reward": [r.reward for r in rows],
            "intervention": [r.intervention for r in rows],
            "held": [r.held for r in rows],
            "policy_version": [r.policy_version for r in rows],
            "obs_step": [r.obs_step for r in rows],
            "log_prob": [r.log_prob for r in rows],
            "obs_time": [r.obs_time for r in rows],
            "action_start": [r.action_start for r in rows],
        }
        return P.Steps(
            robot_id=robot_id,
            episode_id=self.episode_id,
            first_step=lo,
            observations={k: _rows([o[k] for o in wire]) for k in keys},
            actions=np.stack(self.actions[lo:hi]),
            columns={name: np.asarray(columns[name], dtype=STEP_COLUMNS[name]) for name in STEP_COLUMNS},
        )

    def end_message(self, robot_id: str, specs: dict[str, P.ArraySpec] | None = None) -> P.EpisodeEnd:
        assert self.outcome is not None and self.final_observation is not None
        final = self.final_observation
        return P.EpisodeEnd(
            robot_id=robot_id,
            episode_id=self.episode_id,
            outcome=self.outcome,
            labelled_by="robot",
            steps=len(self.steps),
            total_reward=self.total_reward,
            final_observation=P.encode_observation(specs, final) if specs else final,
            terminated=self.terminated,
            truncated=self.truncated,
            source=self.source,
            meta=self.meta,
        )


def _rows(values: list) -> np.ndarray | list[P.EncodedFrame]:
    """One observation key's rows in a frame: stacked arrays, or the list of compressed frames."""
    return values if isinstance(values[0], P.EncodedFrame) else np.stack(values)
