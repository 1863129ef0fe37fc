"""In-memory replay of one task: offline and online partitions, chunked sampling (pure numpy, no Ray).

Why it is shaped this way:

* Two partitions, mixed per batch with ``offline_fraction`` (LWD samples B_off ∪ B_on at about 1:1). The
  number of offline samples in a batch is ``B * offline_fraction`` rounded stochastically, so the ratio
  is exact in expectation and tight per batch. If one partition is empty the other fills the batch and
  the batch's ``notes`` say so.
* Sampling is uniform over *transitions* within a partition (an episode is drawn with probability
  ∝ its length, then a step uniformly inside it), vectorised with flat index arrays.
* Online transitions are further weighted per robot (VLAC appendix D, dynamic sampling): robot r's
  transitions get weight ``(1 - s_r + robot_eps) ** robot_alpha``, where ``s_r`` is r's success rate
  over its last ``robot_window`` labelled online episodes (``aborted`` ones carry no label and are not
  counted). ``robot_alpha = 0`` is uniform; larger alpha favours robots that lag more. The probability
  of drawing robot r is therefore ∝ w_r · (r's online transitions).
* Chunks (Q-chunking, ALOE eq. 7 / LWD eq. 2): see ``fleetrl.algorithms.batch.ChunkBatch``.
* Storage is a ring of rows per partition, one row per step plus one per episode holding its final
  observation, so ``next_obs`` is always a single gather (row ``t + h``), also at the episode end.
  ``capacity`` counts these rows for the online partition, whose oldest episodes are evicted first;
  the offline partition (demos, play data) is never evicted.
* ``sample_episodes`` serves on-policy learners from the most recent online episodes.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np

from fleetrl.algorithms.batch import ChunkBatch, EpisodeBatch
from fleetrl.robots.episode import Episode
from fleetrl.workers.data.rewards import REWARD_SCHEMES, with_rewards
from fleetrl.workers.task import ReplayConfig


@dataclass
class _Record:
    start: int  # physical row of step 0
    length: int  # steps T (the partition holds T + 1 rows)
    robot: int  # robot code
    terminated: bool
    episode_id: str
    snapshot: int


class _Partition:
    """A FIFO of episodes in a growable ring of rows (obs, action, reward, intervention)."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.alloc = 0
        self.head = 0
        self.rows = 0
        self.transitions = 0
        self.evicted = 0
        self.records: deque[_Record] = deque()
        self.obs: dict[str, np.ndarray] = {}
        self.action = np.zeros(0)
        self.reward = np.zeros(0, np.float32)
        self.intervention = np.zeros(0, bool)
        self.version = 0
        self._table: dict[str, np.ndarray] | None = None
        self._cum: tuple[object, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def add(self, ep: Episode, robot: int, snapshot: int) -> list[_Record]:
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
        self.intervention[pos[:n]] = ep.columns["intervention"]
        self.intervention[pos[n]] = False
        self.records.append(_Record(self.head, n, robot, bool(ep.terminated), ep.episode_id, snapshot))
        self.head = (self.head + extra) % self.alloc
        self.rows += extra
        self.transitions += n
        self.version += 1
        self._table = None
        return evicted

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
            np.take(arr, first, axis=0, out=out["obs"][key][sl])
            np.take(arr, nxt, axis=0, out=out["next_obs"][key][sl])
        np.take(self.action, idx, axis=0, out=out["actions"][sl])
        rewards = np.where(mask, self.reward[idx], np.float32(0.0))
        out["rewards"][sl] = rewards
        out["chunk_reward"][sl] = rewards.astype(np.float64) @ gpow
        out["mask"][sl] = mask
        out["done"][sl] = (rem <= horizon) & tab["terminated"][e]
        out["discount"][sl] = np.power(gamma, h.astype(np.float64))
        out["intervention"][sl] = (self.intervention[idx] & mask).any(axis=1)
        out["robot"][sl] = tab["robot"][e]
        out["episode_id"][sl] = tab["episode_id"][e]
        out["step"][sl] = t


class Replay:
    """Replay of one task. ``add`` episodes (with their store snapshot), ``sample_chunks`` for off-policy
    learners, ``sample_episodes`` for on-policy ones."""

    def __init__(
        self,
        chunk_len: int,
        gamma: float,
        offline_fraction: float = 0.5,
        seed: int | None = None,
        *,
        capacity: int = 1_000_000,
        robot_alpha: float = 0.0,
        robot_eps: float = 0.05,
        robot_window: int = 50,
        reward: str = "env",
        c_fail: float = 100.0,
        recent_episodes: int = 256,
    ) -> None:
        if chunk_len < 1:
            raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
        if not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction}")
        if reward not in REWARD_SCHEMES:
            raise ValueError(f"unknown reward scheme {reward!r}; choose one of {REWARD_SCHEMES}")
        self.chunk_len, self.gamma, self.offline_fraction = chunk_len, float(gamma), offline_fraction
        self.robot_alpha, self.robot_eps, self.robot_window = robot_alpha, robot_eps, robot_window
        self.reward, self.c_fail = reward, c_fail
        self.rng = np.random.default_rng(seed)
        self.offline = _Partition(None)
        self.online = _Partition(capacity)
        self.snapshot = 0
        self._gpow = self.gamma ** np.arange(chunk_len, dtype=np.float64)
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
        self._robots: dict[str, int] = {}
        self._robot_names = np.zeros(0, dtype=object)
        self._history: dict[int, deque[bool]] = {}
        self._robot_version = 0
        self._live: set[str] = set()
        self._recent: deque[tuple[int, Episode]] = deque(maxlen=recent_episodes)

    @classmethod
    def from_config(cls, cfg: ReplayConfig, chunk_len: int, seed: int | None = None) -> Replay:
        return cls(chunk_len, seed=seed, **cfg.model_dump())

    # ------------------------------------------------------------------ adding

    def add(self, episode: Episode, snapshot: int | None = None) -> bool:
        """Add an episode (routed on ``episode.source``) with the store ``snapshot`` that committed it
        (None: the replay's own counter + 1, for use without a store). Returns False for an episode
        already held or one with no steps."""
        snapshot = self.snapshot + 1 if snapshot is None else int(snapshot)
        self.snapshot = max(self.snapshot, snapshot)
        if episode.episode_id in self._live or len(episode) == 0:
            return False
        episode.validate()
        ep = with_rewards(self._conform(episode), self.reward, self.c_fail)
        robot = self._robot_code(ep.robot_id)
        if ep.source == "offline":
            self.offline.add(ep, robot, snapshot)
        else:
            for rec in self.online.add(ep, robot, snapshot):
                self._live.discard(rec.episode_id)
            if ep.outcome != "aborted":
                self._history.setdefault(robot, deque(maxlen=self.robot_window)).append(ep.success)
                self._robot_version += 1
            self._recent.append((snapshot, ep))
        self._live.add(ep.episode_id)
        return True

    def relabel(self, episode: Episode) -> bool:
        """Apply a new outcome label (e.g. a human's) to an episode already held: its rewards and terminal
        flag are recomputed in place. Robot success statistics keep the original label (a window
        that turns over quickly). Returns False if the episode is not held."""
        ep = with_rewards(episode, self.reward, self.c_fail)
        for part in (self.online, self.offline):
            for rec in part.records:
                if rec.episode_id == ep.episode_id:
                    pos = (rec.start + np.arange(rec.length)) % part.alloc
                    part.reward[pos] = ep.columns["reward"]
                    rec.terminated = bool(ep.terminated)
                    part.version += 1
                    return True
        return False

    def _conform(self, ep: Episode) -> Episode:
        """Fix the task's array spec on the first episode; later ones must match it: shapes exactly, dtypes
        up to a same-kind cast, applied here (e.g. float64 demos into a float32 replay)."""
        arrays = {f"obs/{k}": v for k, v in ep.observations.items()} | {"action": ep.actions}
        if self._spec is None:
            self._spec = {name: (a.shape[1:], a.dtype) for name, a in arrays.items()}
            return ep
        if set(arrays) != set(self._spec):
            raise ValueError(
                f"episode {ep.episode_id}: arrays {sorted(arrays)}, replay holds {sorted(self._spec)}"
            )
        cast = {}
        for name, arr in arrays.items():
            shape, dtype = self._spec[name]
            if arr.shape[1:] != shape:
                raise ValueError(
                    f"episode {ep.episode_id}: {name} shape {arr.shape[1:]}, replay holds {shape}"
                )
            if arr.dtype != dtype:
                if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                    raise ValueError(
                        f"episode {ep.episode_id}: {name} dtype {arr.dtype} cannot become {dtype}"
                    )
                cast[name] = dtype
        if not cast:
            return ep

        def conv(name: str, arr: np.ndarray) -> np.ndarray:
            return arr.astype(cast[name]) if name in cast else arr

        return dataclasses.replace(
            ep,
            observations={k: conv(f"obs/{k}", v) for k, v in ep.observations.items()},
            final_observation={k: conv(f"obs/{k}", v) for k, v in ep.final_observation.items()},
            actions=conv("action", ep.actions),
        )

    def _robot_code(self, robot_id: str) -> int:
        code = self._robots.get(robot_id)
        if code is None:
            code = self._robots[robot_id] = len(self._robots)
            self._robot_names = np.array(list(self._robots), dtype=object)
        return code

    # ------------------------------------------------------------------ robot weights

    def _robot_weight_array(self) -> np.ndarray | None:
        if self.robot_alpha == 0:
            return None
        w = np.ones(len(self._robots))
        for code, hist in self._history.items():
            rate = sum(hist) / len(hist)
            w[code] = (1.0 - rate + self.robot_eps) ** self.robot_alpha
        return w

    def robot_weights(self) -> dict[str, float]:
        """Relative per-transition weight of each robot with online episodes (sums to 1)."""
        w = self._robot_weight_array()
        codes = sorted({r.robot for r in self.online.records})
        vals = np.array([1.0 if w is None else w[c] for c in codes])
        total = vals.sum()
        return {str(self._robot_names[c]): float(v / total) for c, v in zip(codes, vals, strict=True)}

    def success_rates(self) -> dict[str, float]:
        """Each robot's success rate over its window of recent labelled online episodes."""
        return {str(self._robot_names[c]): sum(h) / len(h) for c, h in self._history.items() if h}

    # ------------------------------------------------------------------ sampling

    def sample_chunks(self, batch_size: int, offline_fraction: float | None = None) -> ChunkBatch:
        """A batch of chunked transitions mixed from the two partitions (offline rows first);
        ``offline_fraction`` overrides the configured mix (1.0 during offline pretraining)."""
        if self._spec is None or (not len(self.offline) and not len(self.online)):
            raise ValueError("replay is empty: add episodes before sampling")
        f, notes = self.offline_fraction if offline_fraction is None else float(offline_fraction), []
        if not len(self.online):
            if f < 1:
                notes.append(f"online partition empty: all {batch_size} samples from offline")
            f = 1.0
        elif not len(self.offline):
            if f > 0:
                notes.append(f"offline partition empty: all {batch_size} samples from online")
            f = 0.0
        want = batch_size * f
        n_off = int(want) + int(self.rng.random() < want - int(want))
        out = self._alloc_batch(batch_size)
        parts = (
            (self.offline, slice(0, n_off), None),  # dynamic sampling is for the online fleet only
            (self.online, slice(n_off, batch_size), self._robot_weight_array()),
        )
        for part, sl, robot_w in parts:
            if sl.stop > sl.start:
                key = (part.version, self._robot_version if robot_w is not None else -1)
                e, t = part.draw(sl.stop - sl.start, self.rng, robot_w, key)
                part.gather(out, sl, e, t, self.gamma, self._gpow)
        offline = np.zeros(batch_size, bool)
        offline[:n_off] = True
        return ChunkBatch(
            obs=out["obs"],
            actions=out["actions"],
            rewards=out["rewards"],
            chunk_reward=out["chunk_reward"],
            next_obs=out["next_obs"],
            done=out["done"],
            mask=out["mask"],
            discount=out["discount"],
            intervention=out["intervention"],
            offline=offline,
            robot_id=self._robot_names[out["robot"]],
            episode_id=out["episode_id"],
            step=out["step"],
            snapshot=self.snapshot,
            gamma=self.gamma,
            notes=tuple(notes),
        )

    def _alloc_batch(self, b: int) -> dict:
        assert self._spec is not None
        h = self.chunk_len
        obs = {name[4:]: s for name, s in self._spec.items() if name.startswith("obs/")}
        a_shape, a_dtype = self._spec["action"]
        return {
            "obs": {k: np.empty((b, *shape), dtype) for k, (shape, dtype) in obs.items()},
            "next_obs": {k: np.empty((b, *shape), dtype) for k, (shape, dtype) in obs.items()},
            "actions": np.empty((b, h, *a_shape), a_dtype),
            "rewards": np.empty((b, h), np.float32),
            "chunk_reward": np.empty(b, np.float32),
            "mask": np.empty((b, h), bool),
            "done": np.empty(b, bool),
            "discount": np.empty(b, np.float32),
            "intervention": np.empty(b, bool),
            "robot": np.empty(b, np.int64),
            "episode_id": np.empty(b, dtype=object),
            "step": np.empty(b, np.int32),
        }

    def sample_episodes(
        self, n: int, max_staleness: int | None = None, since_snapshot: int = 0
    ) -> EpisodeBatch:
        """Up to ``n`` most recent online episodes (newest last) whose snapshot is > ``since_snapshot`` and
        at most ``max_staleness`` snapshots behind the newest one added."""
        floor = since_snapshot
        if max_staleness is not None:
            floor = max(floor, self.snapshot - max_staleness - 1)
        chosen = [(s, ep) for s, ep in self._recent if s > floor][-n:] if n > 0 else []
        notes = () if len(chosen) == n else (f"{len(chosen)} of {n} episodes fresh enough",)
        return EpisodeBatch(
            episodes=[ep for _, ep in chosen],
            snapshots=[s for s, _ in chosen],
            snapshot=self.snapshot,
            notes=notes,
        )

    def rollout_stats(self, last: int = 50) -> dict[str, float]:
        """Success rate, mean return (under this replay's reward scheme), mean length and intervention
        figures of the last ``last`` finished online episodes (aborted ones left out): the fleet's
        learning curve."""
        eps = [ep for _, ep in self._recent if ep.outcome != "aborted"][-last:]
        if not eps:
            return {"episodes": 0}
        intervened = [bool(ep.columns["intervention"].any()) for ep in eps]
        return {
            "episodes": len(eps),
            "success_rate": float(np.mean([ep.success for ep in eps])),
            "mean_return": float(np.mean([ep.columns["reward"].sum() for ep in eps])),
            "mean_length": float(np.mean([len(ep) for ep in eps])),
            # human in the loop: share of executed steps an operator drove, share of episodes with any,
            # and the success rate counting only episodes the robot finished on its own
            "intervention_rate": float(
                sum(ep.columns["intervention"].sum() for ep in eps) / max(1, sum(len(ep) for ep in eps))
            ),
            "intervened_episodes": float(np.mean(intervened)),
            "success_without_intervention": float(
                np.mean([ep.success and not i for ep, i in zip(eps, intervened, strict=True)])
            ),
        }

    def sizes(self) -> dict[str, int]:
        return {
            "offline_episodes": len(self.offline),
            "offline_transitions": self.offline.transitions,
            "online_episodes": len(self.online),
            "online_transitions": self.online.transitions,
            "online_rows": self.online.rows,
            "evicted_episodes": self.online.evicted,
            "snapshot": self.snapshot,
        }
