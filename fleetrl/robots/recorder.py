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

    def steps_messages(self, robot_id: str, max_rows: int) -> list[P.Steps]:
        """Frames for rows ``sent ..`` (at most ``max_rows`` each); marks them sent."""
        out = []
        while self.sent < len(self.steps):
            lo, hi = self.sent, min(len(self.steps), self.sent + max_rows)
            out.append(self._frame(robot_id, lo, hi))
            self.sent = hi
        return out

    def _frame(self, robot_id: str, lo: int, hi: int) -> P.Steps:
        rows = self.steps[lo:hi]
        keys = self.observations[lo].keys()
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
            observations={k: np.stack([o[k] for o in self.observations[lo:hi]]) for k in keys},
            actions=np.stack(self.actions[lo:hi]),
            columns={name: np.asarray(columns[name], dtype=STEP_COLUMNS[name]) for name in STEP_COLUMNS},
        )

    def end_message(self, robot_id: str) -> P.EpisodeEnd:
        assert self.outcome is not None and self.final_observation is not None
        return P.EpisodeEnd(
            robot_id=robot_id,
            episode_id=self.episode_id,
            outcome=self.outcome,
            labelled_by="robot",
            steps=len(self.steps),
            total_reward=self.total_reward,
            final_observation=self.final_observation,
            terminated=self.terminated,
            truncated=self.truncated,
            source=self.source,
            meta=self.meta,
        )
