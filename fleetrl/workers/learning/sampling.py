"""Where the learner's batches come from: the data server's replay and fresh on-policy episodes.

An off-policy algorithm asks for replay chunks: they come several per data-server call (as many as the
learner uses in about 0.1 s), with the next call in flight while the learner works through the current
ones. An on-policy algorithm asks for fresh episodes: the sampler collects them across calls, drops those too many versions behind (counted, not corrected), and,
when the algorithm wants it, waits until every inference replica serves the newest version first. Answers
of the data server and the weight board are awaited with ``get`` (``ray.get``; a test's stand-in handles
resolve their own).

A data server that dies and restarts (it rebuilds its replay from the store) is waited for, never passed
up: the learner goes on from where it was rather than being restarted from its last checkpoint.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from fleetrl.algorithms.base import BatchRequest
from fleetrl.algorithms.batch import ChunkBatch, EpisodeBatch

ReplayKey = tuple[int, float | None]  # (batch size, offline fraction) a replay batch is drawn for
# What a data server that is not there (dead, restarting, rebuilding) raises at the caller.
UNAVAILABLE = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)


class ReplayBatches:
    """Replay batches come several per data-server call, and the next call is in flight while the learner
    works through the current ones; a change of size or mix drops what was fetched.

    A call asks for about ``COVERS_S`` seconds of the learner's work, judged by how fast it used the last
    call's batches, and at most ``per_call``: a fast learner (hundreds of updates a second) pays one round
    trip, and the data server one call, for many batches; a slow one gets one batch per call, so it never
    trains on batches drawn long before (new episodes reach it as soon as they are in the replay)."""

    COVERS_S = 0.1

    def __init__(
        self,
        data: Any,
        task: str,
        per_call: int,
        get: Callable[[Any], Any] = ray.get,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.data, self.task, self.per_call, self._get, self._clock = data, task, per_call, get, clock
        self.count = 1  # batches the next call asks for
        self._batches: deque[ChunkBatch] = deque()  # fetched, not yet used ...
        self._key: ReplayKey | None = None  # ... and the (size, offline) they were drawn for
        self._in_hand: tuple[int, float] | None = None  # (how many were fetched, when the first was used)
        self._prefetch: tuple[ReplayKey, Any] | None = None  # the call in flight for the next batches

    def next(self, size: int, offline: float | None) -> ChunkBatch:
        """The next batch of ``size`` chunks (``offline``: the offline partition's share, None: the replay's
        own mix). Raises ``RayTaskError`` while the replay cannot give one (it is empty)."""
        key = (size, offline)
        if self._key != key:
            self._batches.clear()
            self._in_hand = None
        if not self._batches:
            self._size_calls()
            ref = self._prefetch[1] if self._prefetch and self._prefetch[0] == key else None
            ref = ref or self._fetch(key)
            self._prefetch = (key, self._fetch(key))
            try:
                self._batches, self._key = deque(self._get(ref)), key
            except (ray.exceptions.RayTaskError, *UNAVAILABLE):
                self._prefetch = None
                raise
            self._in_hand = (len(self._batches), self._clock())
        return self._batches.popleft()

    def clear(self) -> None:
        """Forget what was fetched and the call in flight (the next batch asks the data server afresh)."""
        self._batches, self._prefetch, self._in_hand = deque(), None, None

    def _size_calls(self) -> None:
        """The batches in hand are used up: size the next call by how fast they went."""
        if self._in_hand is None:
            return
        used, since = self._in_hand
        per_s = used / max(self._clock() - since, 1e-6)
        self.count = max(1, min(self.per_call, math.ceil(per_s * self.COVERS_S)))

    def _fetch(self, key: ReplayKey) -> Any:
        size, offline = key
        return self.data.sample_chunk_batches.remote(self.task, size, self.count, offline)


class Sampler:
    """``next(request, step, version)``: the batch the algorithm asked for, or None with the reason in
    ``waiting``. Counts the stale episodes it dropped and the looks that found the fleet behind."""

    EPISODES_PER_LOOK = 1024  # online episodes asked for per data-server call (only unseen ones come)
    EMPTY_REPLAY_WAIT_S = 0.5

    def __init__(
        self,
        task: str,
        data: Any,
        weights: Any,
        prefetch_batches: int,
        offline_steps: int,
        get: Callable[[Any], Any] = ray.get,
        segments: bool = False,
    ):
        """``segments``: fresh on-policy data are pieces of running episodes (``LearnerConfig.segment_steps``,
        cut by the gateway) rather than whole episodes."""
        self.task, self.data, self.weights, self.offline_steps, self._get = (
            task,
            data,
            weights,
            offline_steps,
            get,
        )
        self.replay = ReplayBatches(data, task, prefetch_batches, get)
        self.segments = segments
        self.waiting: str | None = None
        self.dropped_stale_episodes = 0
        self.partly_stale_episodes = 0  # long episodes that started on versions older than the lag
        self.fleet_waits = 0  # looks that found a replica still on an older version (stale: wait)
        self.data_server_waits = 0  # looks that found the data server away (restarting)
        self._fleet_serving = -1  # newest version every replica was seen serving
        self._fresh: list[tuple[int, Any]] = []  # (snapshot, episode) collected for the next update
        self._seen_snapshot = 0

    def next(self, request: BatchRequest, step: int, version: int) -> ChunkBatch | EpisodeBatch | None:
        """The next batch for ``request`` at learner ``step`` with the policy at ``version``, or None while
        there is not enough data yet. Replay batches are offline-only during the offline pretraining steps."""
        if request.kind == "chunks":
            return self._replay_batch(request.size, 1.0 if step < self.offline_steps else None)
        if request.wait_for_fleet and not self._fleet_serves(version):
            return None
        return self._fresh_episodes(request.size, request.max_version_lag, version)

    def reset(self) -> None:
        """Drop what was collected or fetched for the previous algorithm's requests."""
        self._fresh = []
        self.replay.clear()

    def _replay_batch(self, size: int, offline: float | None) -> ChunkBatch | None:
        try:
            batch = self.replay.next(size, offline)
        except ray.exceptions.RayTaskError as exc:  # replay still empty
            self.waiting = f"no data: {exc.cause}"
            time.sleep(self.EMPTY_REPLAY_WAIT_S)
            return None
        except UNAVAILABLE as exc:
            return self._data_server_away(exc)
        self.waiting = None
        return batch

    def _data_server_away(self, exc: BaseException) -> None:
        """The data server is restarting: wait (the caller polls again), keep what was collected."""
        self.waiting = f"data server unavailable ({type(exc).__name__}): waiting for it to come back"
        self.data_server_waits += 1
        time.sleep(self.EMPTY_REPLAY_WAIT_S)
        return None

    def _fleet_serves(self, version: int) -> bool:
        """Asks the replicas (through the board) only until they are seen serving ``version``, not on every
        poll: replicas answer robots between these calls."""
        if self._fleet_serving >= version:
            return True
        serving = self._get(self.weights.serving.remote(self.task))
        if serving is not None and serving < version:
            self.waiting = f"waiting for the fleet to serve v{version} (slowest replica on v{serving})"
            self.fleet_waits += 1
            return False
        self._fleet_serving = version
        return True

    def _fresh_episodes(self, steps: int, max_lag: int | None, version: int) -> EpisodeBatch | None:
        """Collect online episodes not used before; drop those with no step of a version within ``max_lag``
        of ``version`` (counted). Returns a batch once ``steps`` steps of such versions are in.

        An episode that *started* on an older version is kept whole (and counted as partly stale): a long
        episode outlives several updates, so dropping every episode with an old step would drop exactly
        the long ones (HalfCheetah-v5 at 8 robots x 100 Hz: about two thirds of the episodes in lockstep,
        benchmarks/results/learning.json ``partly_stale_episodes``). Its stale decisions still carry GAE; the algorithm leaves them out of
        the loss (PPO: ``max_version_lag``)."""
        try:
            new = self._get(self._look())
        except UNAVAILABLE as exc:
            return self._data_server_away(exc)
        if self.segments and new.snapshot < self._seen_snapshot:  # a restarted data server numbers afresh
            self._seen_snapshot = 0
        floor = None if max_lag is None else version - max_lag
        for episode, snapshot in zip(new.episodes, new.snapshots, strict=True):
            self._seen_snapshot = max(self._seen_snapshot, snapshot)
            versions = episode.columns["policy_version"]
            versions = versions[versions >= 0]
            if versions.size == 0:
                continue  # nothing the policy chose (an operator drove the whole episode)
            if floor is not None and int(versions.max()) < floor:
                self.dropped_stale_episodes += 1  # nothing in it is recent enough
                continue
            if floor is not None and int(versions.min()) < floor:
                self.partly_stale_episodes += 1  # kept: its old decisions carry GAE, the algorithm drops them
            self._fresh.append((snapshot, episode))
        have = sum(fresh_steps(e, floor) for _, e in self._fresh)
        if have < steps:
            self.waiting = f"collecting fresh on-policy steps: {have}/{steps}"
            return None
        self.waiting = None
        batch = EpisodeBatch(
            episodes=[e for _, e in self._fresh], snapshots=[s for s, _ in self._fresh], snapshot=new.snapshot
        )
        self._fresh = []
        return batch

    def _look(self) -> Any:
        """The data-server call for on-policy data not seen yet: segments, or whole episodes."""
        if self.segments:
            return self.data.sample_segments.remote(self.task, self._seen_snapshot)
        return self.data.sample_episodes.remote(self.task, self.EPISODES_PER_LOOK, None, self._seen_snapshot)


def fresh_steps(episode: Any, floor: int | None) -> int:
    """Steps of ``episode`` that do not belong to a policy version below ``floor`` (all without a floor)."""
    if floor is None:
        return len(episode)
    versions = episode.columns["policy_version"]
    return len(episode) - int(((versions >= 0) & (versions < floor)).sum())
