"""The one batch contract between the data server and the learners (numpy only, so it crosses Ray cheaply).

``ChunkBatch`` carries chunked transitions for off-policy learners (AWR, QAM, DIVL): the Q-chunking
target of ALOE eq. 7 / LWD eq. 19 with n = 1 is

    y = chunk_reward + (1 - done) * discount * V(next_obs)

where ``chunk_reward = sum_{k < h} gamma^k r_{t+k}`` over the ``h = mask.sum(1)`` valid steps, and
``discount = gamma^h``. A chunk that runs past the end of its episode has ``h < H``: its missing actions
repeat the last executed one with ``mask = 0`` and ``next_obs`` is the episode's final observation.
``done`` is 1 only when the environment terminated the episode inside the chunk (a truncated episode
still bootstraps). ``returns`` is the discounted return observed from ``s_t`` to the episode's end, the
ground truth a critic's Q can be checked against (NaN where the episode did not terminate, so its return
is not complete). ``EpisodeBatch`` carries whole recent episodes for on-policy learners (PPO).
Learners convert to tensors themselves; nothing here knows torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleetrl.robots.episode import Episode


@dataclass
class ChunkBatch:
    obs: dict[str, np.ndarray]  # key -> [B, *shape]: s_t
    actions: np.ndarray  # [B, H, *action_shape]: a_{t:t+H}, padded by repeating the last valid action
    rewards: np.ndarray  # [B, H] float32: r_{t:t+H}, 0 where mask is 0
    chunk_reward: np.ndarray  # [B] float32: sum_{k<h} gamma^k r_{t+k}
    next_obs: dict[str, np.ndarray]  # key -> [B, *shape]: s_{t+h} (final observation if the chunk ends it)
    done: np.ndarray  # [B] bool: the episode terminated within the chunk (no bootstrap)
    mask: np.ndarray  # [B, H] bool: step t+k lies inside the episode
    discount: np.ndarray  # [B] float32: gamma^h, the bootstrap factor (apply (1 - done) yourself)
    intervention: np.ndarray  # [B] bool: an operator executed at least one valid step of the chunk
    offline: np.ndarray  # [B] bool: drawn from the offline partition (else online)
    robot_id: np.ndarray  # [B] str
    episode_id: np.ndarray  # [B] str
    step: np.ndarray  # [B] int32: t within its episode
    snapshot: int  # store snapshot of the newest episode in the replay when sampled
    gamma: float
    notes: tuple[str, ...] = ()  # e.g. that a partition was empty and the other filled the batch
    returns: np.ndarray | None = None  # [B] float32: sum_k gamma^k r_{t+k} to the end; NaN if incomplete

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def chunk_len(self) -> int:
        return int(self.actions.shape[1])

    @property
    def offline_fraction(self) -> float:
        return float(self.offline.mean()) if len(self) else 0.0

    def validate(self) -> None:
        """Raise ValueError naming every field whose leading dimensions disagree with the batch."""
        b, h = self.actions.shape[:2]
        problems = []
        for name in (
            "chunk_reward",
            "done",
            "discount",
            "intervention",
            "offline",
            "robot_id",
            "episode_id",
            "step",
        ):
            if getattr(self, name).shape != (b,):
                problems.append(f"{name} shape {getattr(self, name).shape}, expected ({b},)")
        if self.returns is not None and self.returns.shape != (b,):
            problems.append(f"returns shape {self.returns.shape}, expected ({b},)")
        for name in ("rewards", "mask"):
            if getattr(self, name).shape != (b, h):
                problems.append(f"{name} shape {getattr(self, name).shape}, expected ({b}, {h})")
        for group in ("obs", "next_obs"):
            for key, arr in getattr(self, group).items():
                if arr.shape[:1] != (b,):
                    problems.append(f"{group}[{key!r}] has {arr.shape[:1]} rows, expected {b}")
        if set(self.obs) != set(self.next_obs):
            problems.append(f"obs keys {sorted(self.obs)} != next_obs keys {sorted(self.next_obs)}")
        if problems:
            raise ValueError("ChunkBatch: " + "; ".join(problems))


@dataclass
class EpisodeBatch:
    episodes: list[Episode]  # newest last; rewards already assigned by the replay's scheme
    snapshots: list[int]  # the store snapshot of each episode
    snapshot: int  # store snapshot of the newest episode in the replay when sampled
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def steps(self) -> int:
        return sum(len(e) for e in self.episodes)
