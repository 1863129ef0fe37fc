"""In-memory replay of one task: offline and online partitions, chunked sampling (pure numpy, no Ray).

Why it is shaped this way:

* Two partitions, mixed per batch with ``offline_fraction`` (LWD samples B_off ∪ B_on at about 1:1). The
  number of offline samples in a batch is ``B * offline_fraction`` rounded stochastically, so the ratio
  is exact in expectation and tight per batch. If one partition is empty the other fills the batch and
  the batch's ``notes`` say so.
* Sampling is uniform over *transitions* within a partition (an episode is drawn with probability
  ∝ its length, then a step uniformly inside it), vectorised with flat index arrays.
* Online transitions are further weighted per robot (VLAC appendix D, dynamic sampling, see
  ``robot_sampling.py``): ``robot_alpha = 0`` is uniform; larger alpha favours robots that lag more.
* Chunks (Q-chunking, ALOE eq. 7 / LWD eq. 2): see ``fleetrl.algorithms.batch.ChunkBatch``.
* Storage is a ring of rows per partition (``partition.py``). ``capacity`` counts these rows for the
  online partition, whose oldest episodes are evicted first; the offline partition (demos, play data)
  is never evicted.
* ``sample_episodes`` serves on-policy learners from the most recent online episodes.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque

import numpy as np

from fleetrl.algorithms.batch import ChunkBatch, EpisodeBatch
from fleetrl.robots.episode import Episode
from fleetrl.robots.protocol import ArraySpec, encode_frame
from fleetrl.workers.data.partition import Partition
from fleetrl.workers.data.rewards import REWARD_SCHEMES, with_rewards
from fleetrl.workers.data.robot_sampling import RobotSampling
from fleetrl.workers.task import ReplayConfig


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
        learn_from_evaluation: bool = False,
        frames: dict[str, ArraySpec] | None = None,
    ) -> None:
        """``frames``: the specs of camera keys held compressed (their encoding) and decoded per sampled
        batch: a 64x64 RGB frame takes ~1.5-4 KB as JPEG instead of 12 KB."""
        if chunk_len < 1:
            raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
        if not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction}")
        if reward not in REWARD_SCHEMES:
            raise ValueError(f"unknown reward scheme {reward!r}; choose one of {REWARD_SCHEMES}")
        self.chunk_len, self.gamma, self.offline_fraction = chunk_len, float(gamma), offline_fraction
        self.robots = RobotSampling(robot_alpha, robot_eps, robot_window)
        self.reward, self.c_fail = reward, c_fail
        self.learn_from_evaluation = learn_from_evaluation
        self.rng = np.random.default_rng(seed)
        self.frames = dict(frames or {})
        self.offline = Partition(None, self.gamma, self.frames)
        self.online = Partition(capacity, self.gamma, self.frames)
        self.snapshot = 0
        self._gpow = self.gamma ** np.arange(chunk_len, dtype=np.float64)
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
        self._live: set[str] = set()
        self._recent: deque[tuple[int, Episode]] = deque(maxlen=recent_episodes)
        self._segments: deque[tuple[int, Episode]] = deque(maxlen=recent_episodes)  # (sequence, piece)
        self._segment_seq = 0

    @classmethod
    def from_config(
        cls,
        cfg: ReplayConfig,
        chunk_len: int,
        seed: int | None = None,
        frames: dict[str, ArraySpec] | None = None,
    ) -> Replay:
        return cls(chunk_len, seed=seed, frames=frames, **cfg.model_dump())

    @property
    def robot_alpha(self) -> float:
        """The dynamic-sampling exponent (0: robots sampled uniformly)."""
        return self.robots.alpha

    # ------------------------------------------------------------------ adding

    def add(self, episode: Episode, snapshot: int | None = None) -> bool:
        """Add an episode (routed on ``episode.source``) with the store ``snapshot`` that committed it
        (None: the replay's own counter + 1, for use without a store). Returns False for an episode
        already held, one with no steps, or an evaluation episode the task does not learn from."""
        snapshot = self.snapshot + 1 if snapshot is None else int(snapshot)
        self.snapshot = max(self.snapshot, snapshot)
        robot = self.robots.code(episode.robot_id)
        if (robot, episode.episode_id) in self._live or len(episode) == 0:
            return False
        if episode.is_evaluation and not self.learn_from_evaluation:
            return False
        episode.validate()
        ep = with_rewards(self._conform(episode), self.reward, self.c_fail)
        held = compressed(ep, self.frames)
        if ep.source == "offline":
            self.offline.add(held, robot, snapshot)
        else:
            for rec in self.online.add(held, robot, snapshot):
                self._live.discard((rec.robot, rec.episode_id))
            if ep.outcome != "aborted":
                self.robots.record(robot, ep.success)
            self._remember_recent(snapshot, ep)
        self._live.add((robot, ep.episode_id))  # episodes are (robot, episode id): robots may share ids
        return True

    def _remember_recent(self, snapshot: int, ep: Episode) -> None:
        """Keep ``ep`` among the newest online episodes in snapshot order (a data server refilling after a
        restart adds its stored episodes newest first, while new ones keep arriving)."""
        recent = self._recent
        if not recent or snapshot >= recent[-1][0]:
            recent.append((snapshot, ep))
            return
        if len(recent) == recent.maxlen:
            if snapshot < recent[0][0]:
                return  # older than every episode kept
            recent.popleft()
        recent.insert(bisect.bisect_right([s for s, _ in recent], snapshot), (snapshot, ep))

    def relabel(self, episode: Episode) -> bool:
        """Apply a new outcome label (e.g. a human's) to an episode already held: its rewards and terminal
        flag are recomputed in place. Robot success statistics keep the original label (a window
        that turns over quickly). Returns False if the episode is not held."""
        ep = with_rewards(episode, self.reward, self.c_fail)
        robot = self.robots.code(ep.robot_id)
        return self.online.relabel(ep, robot) or self.offline.relabel(ep, robot)

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

    def robot_weights(self) -> dict[str, float]:
        """Relative per-transition weight of each robot with online episodes (sums to 1)."""
        return self.robots.relative_weights(r.robot for r in self.online.records)

    def success_rates(self) -> dict[str, float]:
        """Each robot's success rate over its window of recent labelled online episodes."""
        return self.robots.success_rates()

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
            (self.online, slice(n_off, batch_size), self.robots.weight_array()),
        )
        for part, sl, robot_w in parts:
            if sl.stop > sl.start:
                key = (part.version, self.robots.version if robot_w is not None else -1)
                e, t = part.draw(sl.stop - sl.start, self.rng, robot_w, key)
                part.gather(out, sl, e, t, self.gamma, self._gpow)
        offline = np.zeros(batch_size, bool)
        offline[:n_off] = True
        return ChunkBatch(
            obs=out["obs"],
            actions=out["actions"],
            rewards=out["rewards"],
            chunk_reward=out["chunk_reward"],
            returns=out["returns"],
            next_obs=out["next_obs"],
            done=out["done"],
            mask=out["mask"],
            discount=out["discount"],
            intervention=out["intervention"],
            offline=offline,
            robot_id=self.robots.names[out["robot"]],
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
            "returns": np.empty(b, np.float32),
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

    def add_segment(self, piece: Episode) -> None:
        """Add a piece of a running episode to the on-policy feed (``LearnerConfig.segment_steps``): under
        this replay's reward scheme, numbered in arrival order, never part of the replay's rows."""
        piece.validate()
        self._segment_seq += 1
        self._segments.append(
            (self._segment_seq, with_rewards(self._conform(piece), self.reward, self.c_fail))
        )

    def sample_segments(self, since: int = 0) -> EpisodeBatch:
        """The feed's pieces numbered above ``since`` (oldest first); ``snapshot`` is the newest number, so
        a caller ahead of it is talking to a restarted feed."""
        chosen = [(s, ep) for s, ep in self._segments if s > since]
        return EpisodeBatch(
            episodes=[ep for _, ep in chosen], snapshots=[s for s, _ in chosen], snapshot=self._segment_seq
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
            # asynchronous execution: share of executed steps the robot held (no chunk was ready)
            "hold_fraction": float(
                sum(ep.columns["held"].sum() for ep in eps) / max(1, sum(len(ep) for ep in eps))
            ),
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


def compressed(ep: Episode, frames: dict[str, ArraySpec]) -> Episode:
    """``ep`` with each camera key of ``frames`` as compressed bytes per row (an object array [T]) and its
    final observation as bytes: what a partition holds (``Partition`` decodes them when sampling)."""
    if not frames:
        return ep
    obs, final = dict(ep.observations), dict(ep.final_observation)
    for key, spec in frames.items():
        rows = np.empty(len(ep), dtype=object)
        rows[:] = [encode_frame(f, spec.encoding, spec.quality).data for f in ep.observations[key]]
        obs[key] = rows
        final[key] = encode_frame(ep.final_observation[key], spec.encoding, spec.quality).data
    return dataclasses.replace(ep, observations=obs, final_observation=final)
