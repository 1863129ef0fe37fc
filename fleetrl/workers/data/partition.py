"""One replay partition: a ring of rows holding whole episodes, and the index maths that draws chunks.

Why it is shaped this way: one row per step plus one per episode for its final observation, so
``next_obs`` is always a single gather (row ``t + h``), also at the episode end. ``capacity`` counts rows;
when set, the oldest episodes are evicted first (the online partition); without it the ring only grows
(the offline partition: demos and play data are never evicted). Sampling is uniform over transitions (an
episode drawn with probability ∝ its length, optionally times a per-robot weight, then a step uniformly
inside it), vectorised with flat per-episode index arrays. Pure numpy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from fleetrl.robots.episode import Episode
from fleetrl.robots.protocol import ArraySpec, EncodedFrame, decode_frame


@dataclass
class EpisodeRecord:
    """Where one held episode lives in its partition's ring."""

    start: int  # physical row of step 0
    length: int  # steps T (the partition holds T + 1 rows)
    robot: int  # robot code
    terminated: bool
    episode_id: str
    snapshot: int


def returns_to_go(rewards: np.ndarray, gamma: float, complete: bool) -> np.ndarray:
    """``G_t = sum_k gamma^k r_{t+k}`` to the episode's end [T] (float32); all NaN for an episode that did not
    terminate (its return is cut off, not observed)."""
    out = np.full(len(rewards), np.nan, np.float32)
    if complete:
        acc = 0.0
        for i in range(len(rewards) - 1, -1, -1):
            acc = float(rewards[i]) + gamma * acc
            out[i] = acc
    return out


class Partition:
    """A FIFO of episodes in a growable ring of rows (obs, action, reward, intervention, return to go)."""

    def __init__(
        self, capacity: int | None, gamma: float, frames: dict[str, ArraySpec] | None = None
    ) -> None:
        """``frames``: camera keys held as compressed bytes per row (``Replay``), decoded when gathered."""
        self.capacity, self.gamma = capacity, gamma
        self.frames = frames or {}
        self.alloc = 0
        self.head = 0
        self.rows = 0
        self.transitions = 0
        self.evicted = 0
        self.records: deque[EpisodeRecord] = deque()
        self.obs: dict[str, np.ndarray] = {}
        self.action = np.zeros(0)
        self.reward = np.zeros(0, np.float32)
        self.to_go = np.zeros(0, np.float32)
        self.intervention = np.zeros(0, bool)
        self.version = 0
        self._table: dict[str, np.ndarray] | None = None
        self._cum: tuple[object, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def add(self, ep: Episode, robot: int, snapshot: int) -> list[EpisodeRecord]:
        """Append ``ep`` (evicting the oldest episodes if it would not fit); returns the evicted records."""
        n = len(ep)
        extra = n + 1
        if self.capacity is not None and extra > self.capacity:
            raise ValueError(
                f"episode {ep.episode_id} has {n} steps; replay capacity is {self.capacity} rows"
            )
        evicted = []
        while self.capacity is not None and self.rows + extra > self.capacity:
            rec = self.records.popleft()
            self.rows -= rec.length + 1
            self.transitions -= rec.length
            self.evicted += 1
            evicted.append(rec)
        self._reserve(ep, extra)
        pos = (self.head + np.arange(extra)) % self.alloc
        for key, arr in ep.observations.items():
            self.obs[key][pos[:n]] = arr
            self.obs[key][pos[n]] = ep.final_observation[key]
        self.action[pos[:n]] = ep.actions
        self.action[pos[n]] = ep.actions[-1]
        self.reward[pos[:n]] = ep.columns["reward"]
        self.reward[pos[n]] = 0.0
        self.to_go[pos[:n]] = returns_to_go(ep.columns["reward"], self.gamma, ep.terminated)
        self.to_go[pos[n]] = 0.0 if ep.terminated else np.nan
        self.intervention[pos[:n]] = ep.columns["intervention"]
        self.intervention[pos[n]] = False
        self.records.append(EpisodeRecord(self.head, n, robot, bool(ep.terminated), ep.episode_id, snapshot))
        self.head = (self.head + extra) % self.alloc
        self.rows += extra
        self.transitions += n
        self.version += 1
        self._table = None
        return evicted

    def relabel(self, ep: Episode, robot: int) -> bool:
        """Overwrite the rewards and terminal flag of the held episode of ``ep``'s id and ``robot`` (its
        robot's code); False if not held."""
        for rec in self.records:
            if rec.episode_id == ep.episode_id and rec.robot == robot:
                pos = (rec.start + np.arange(rec.length)) % self.alloc
                self.reward[pos] = ep.columns["reward"]
                self.to_go[pos] = returns_to_go(ep.columns["reward"], self.gamma, ep.terminated)
                rec.terminated = bool(ep.terminated)
                self.version += 1
                self._table = None  # the sampling table holds the terminal flags
                return True
        return False

    def _reserve(self, ep: Episode, extra: int) -> None:
        """Grow (doubling, up to capacity) so ``extra`` more rows fit; unwraps the ring when it grows."""
        need = self.rows + extra
        if need <= self.alloc:
            return
        new = max(need, 2 * self.alloc, 1024)
        if self.capacity is not None:
            new = min(new, self.capacity)
        tail = (self.head - self.rows) % self.alloc if self.alloc else 0
        live = (tail + np.arange(self.rows)) % max(self.alloc, 1)

        def grown(old: np.ndarray | None, like: np.ndarray) -> np.ndarray:
            out = np.zeros((new, *like.shape[1:]), like.dtype)
            if old is not None and self.rows:
                out[: self.rows] = old[live]
            return out

        for key, arr in ep.observations.items():
            self.obs[key] = grown(self.obs.get(key), arr)
        self.action = grown(self.action if self.alloc else None, ep.actions)
        self.reward = grown(self.reward if self.alloc else None, self.reward)
        self.to_go = grown(self.to_go if self.alloc else None, self.to_go)
        self.intervention = grown(self.intervention if self.alloc else None, self.intervention)
        for rec in self.records:
            rec.start = (rec.start - tail) % self.alloc
        self.alloc, self.head = new, self.rows

    def table(self) -> dict[str, np.ndarray]:
        """Per-episode arrays for vectorised sampling (rebuilt only after the partition changed)."""
        if self._table is None:
            recs = self.records
            self._table = {
                "start": np.fromiter((r.start for r in recs), np.int64, len(recs)),
                "length": np.fromiter((r.length for r in recs), np.int64, len(recs)),
                "robot": np.fromiter((r.robot for r in recs), np.int64, len(recs)),
                "terminated": np.fromiter((r.terminated for r in recs), bool, len(recs)),
                "episode_id": np.array([r.episode_id for r in recs], dtype=object),
            }
        return self._table

    def draw(
        self, n: int, rng: np.random.Generator, robot_w: np.ndarray | None, key: object
    ) -> tuple[np.ndarray, np.ndarray]:
        """(episode index [n], step [n]): uniform over transitions, times ``robot_w[robot]`` if given."""
        tab = self.table()
        if self._cum is None or self._cum[0] != key:
            w = tab["length"].astype(np.float64)
            if robot_w is not None:
                weighted = w * robot_w[tab["robot"]]
                w = weighted if weighted.sum() > 0 else w
            self._cum = (key, np.cumsum(w))
        cum = self._cum[1]
        e = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
        np.minimum(e, len(cum) - 1, out=e)
        length = tab["length"][e]
        t = np.minimum((rng.random(n) * length).astype(np.int64), length - 1)
        return e, t

    def gather(
        self, out: dict, sl: slice, e: np.ndarray, t: np.ndarray, gamma: float, gpow: np.ndarray
    ) -> None:
        """Write the chunks starting at (episode e, step t) into rows ``sl`` of the batch arrays ``out``."""
        tab = self.table()
        horizon = len(gpow)
        rem = tab["length"][e] - t
        h = np.minimum(horizon, rem)
        k = np.arange(horizon)
        mask = k[None, :] < h[:, None]
        first = tab["start"][e] + t
        idx = (first[:, None] + np.minimum(k[None, :], h[:, None] - 1)) % self.alloc
        first %= self.alloc
        nxt = (first + h) % self.alloc
        for key, arr in self.obs.items():
            if key in self.frames:  # compressed rows: decode the ones drawn
                spec = self.frames[key]
                for name, rows in (("obs", first), ("next_obs", nxt)):
                    target = out[name][key][sl]
                    for i, data in enumerate(arr[rows]):
                        target[i] = decode_frame(EncodedFrame(spec.encoding, data), spec, key)
                continue
            np.take(arr, first, axis=0, out=out["obs"][key][sl])
            np.take(arr, nxt, axis=0, out=out["next_obs"][key][sl])
        np.take(self.action, idx, axis=0, out=out["actions"][sl])
        rewards = np.where(mask, self.reward[idx], np.float32(0.0))
        out["rewards"][sl] = rewards
        out["chunk_reward"][sl] = rewards.astype(np.float64) @ gpow
        np.take(self.to_go, first, out=out["returns"][sl])
        out["mask"][sl] = mask
        out["done"][sl] = (rem <= horizon) & tab["terminated"][e]
        out["discount"][sl] = np.power(gamma, h.astype(np.float64))
        out["intervention"][sl] = (self.intervention[idx] & mask).any(axis=1)
        out["robot"][sl] = tab["robot"][e]
        out["episode_id"][sl] = tab["episode_id"][e]
        out["step"][sl] = t
