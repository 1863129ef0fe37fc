"""The sampler against a stand-in data server and weight board: replay batches prefetched one call ahead
and dropped when the request changes, the empty replay, offline-only pretraining batches, fresh on-policy
episodes with stale ones dropped, and waiting for the fleet to serve the newest version."""

from __future__ import annotations

import itertools

import pytest
import ray
from learner_stand_ins import Method, episode, resolve

from fleetrl.algorithms.base import BatchRequest
from fleetrl.algorithms.batch import EpisodeBatch
from fleetrl.workers.learning.sampling import ReplayBatches, Sampler


class Data:
    """The data server's ``sample_chunk_batches`` (numbered batches, or an empty replay's error) and
    ``sample_episodes`` (the episodes added since ``since_snapshot``)."""

    def __init__(self):
        self.fetches = itertools.count()
        self.empty = False
        self.sample_chunk_batches = Method(self._chunk_batches)
        self.episodes: list[tuple[int, object]] = []  # (snapshot, episode)
        self.sample_episodes = Method(self._episodes)

    def _chunk_batches(self, task, size, count, offline):
        if self.empty:
            raise ray.exceptions.RayTaskError("sample_chunk_batches", "", ValueError("replay is empty"))
        call = next(self.fetches)
        return [(call, i, size, offline) for i in range(count)]

    def _episodes(self, task, n, max_staleness, since):
        new = [(s, e) for s, e in self.episodes if s > since][-n:]
        newest = max((s for s, _ in self.episodes), default=0)
        return EpisodeBatch(episodes=[e for _, e in new], snapshots=[s for s, _ in new], snapshot=newest)


class Board:
    def __init__(self, serving: int | None):
        self.serving_version = serving
        self.serving = Method(lambda task: self.serving_version)


@pytest.fixture
def data():
    return Data()


def sampler(data, board=None, offline_steps: int = 0) -> Sampler:
    return Sampler(
        "reach", data, board or Board(None), prefetch_batches=2, offline_steps=offline_steps, get=resolve
    )


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_replay_batches_come_per_call_with_the_next_call_in_flight(data):
    replay = ReplayBatches(data, "reach", per_call=2, get=resolve, clock=Clock())  # time stands still: fast
    calls = data.sample_chunk_batches.calls
    assert replay.next(8, None)[:2] == (0, 0) and len(calls) == 2  # this call's batch + the next call
    assert calls[0] == ("reach", 8, 1, None)  # the first calls ask for one batch: the speed is not known
    assert replay.next(8, None)[:2] == (1, 0) and len(calls) == 3  # the prefetched call, next one sent
    assert calls[-1] == ("reach", 8, 2, None)  # a fast learner: per_call batches a call
    assert replay.next(8, None)[:2] == (2, 0) and replay.next(8, None)[:2] == (2, 1)
    assert len(calls) == 4  # the second batch came from what was fetched
    # another size drops what was fetched for the old one and does not use its prefetched call
    assert replay.next(4, None) == (4, 0, 4, None) and len(calls) == 6
    assert replay.next(4, 1.0)[3] == 1.0  # another mix: the same
    replay.clear()
    replay.next(4, 1.0)
    assert len(calls) == 10  # after clear(): fetched afresh, the prefetched call forgotten


def test_a_call_asks_for_about_a_tenth_of_a_second_of_batches(data):
    clock = Clock()
    replay = ReplayBatches(data, "reach", per_call=32, get=resolve, clock=clock)
    calls = data.sample_chunk_batches.calls

    def use(n: int, seconds_each: float) -> None:
        for _ in range(n):
            replay.next(8, None)
            clock.now += seconds_each

    use(2, 0.002)  # 500 updates/s
    assert calls[-1][2] == 32  # 50 wanted, capped at per_call
    use(32, 0.02)  # 50 updates/s: the call after these 32 asks for 5
    use(1, 0.02)
    assert calls[-1][2] == 5
    use(32, 1.0)  # one update a second: one batch per call, never drawn long before it is used
    assert calls[-1][2] == 1 and replay.count == 1


def test_empty_replay_waits_with_the_reason_then_fetches_afresh(data, monkeypatch):
    monkeypatch.setattr(Sampler, "EMPTY_REPLAY_WAIT_S", 0.0)
    s = sampler(data)
    data.empty = True
    assert s.next(BatchRequest("chunks", 8), step=0, version=0) is None
    assert s.waiting == "no data: replay is empty"
    data.empty = False
    calls_before = len(data.sample_chunk_batches.calls)
    assert s.next(BatchRequest("chunks", 8), step=0, version=0) is not None
    assert s.waiting is None
    assert len(data.sample_chunk_batches.calls) == calls_before + 2  # the failed prefetch was not reused


def test_replay_batches_are_offline_only_during_pretraining(data):
    s = sampler(data, offline_steps=3)
    assert s.next(BatchRequest("chunks", 8), step=2, version=0)[3] == 1.0
    assert s.next(BatchRequest("chunks", 8), step=3, version=0)[3] is None


def test_fresh_episodes_drop_stale_ones_and_wait_for_enough_steps(data):
    s = sampler(data)
    request = BatchRequest("episodes", size=6, max_version_lag=1)
    data.episodes = [
        (1, episode([3, 3, 3], "old")),  # v3 < 5 - 1: stale, dropped and counted
        (2, episode([-1, -1], "human")),  # an operator drove it all: not the policy's, skipped
        (3, episode([4, 5, -1, 5], "ok")),
    ]
    assert s.next(request, step=0, version=5) is None
    assert s.waiting == "collecting fresh on-policy steps: 4/6"
    assert s.dropped_stale_episodes == 1
    assert data.sample_episodes.calls[-1] == ("reach", Sampler.EPISODES_PER_LOOK, None, 0)

    data.episodes.append((4, episode([5, 5], "ok2")))
    batch = s.next(request, step=0, version=5)
    assert data.sample_episodes.calls[-1][3] == 3  # only episodes after those already seen
    assert [e.episode_id for e in batch.episodes] == ["ok", "ok2"]
    assert batch.snapshots == [3, 4] and batch.snapshot == 4 and s.waiting is None
    assert s.dropped_stale_episodes == 1 and s.partly_stale_episodes == 0

    assert s.next(request, step=1, version=5) is None  # the used episodes are not used again
    assert s.waiting == "collecting fresh on-policy steps: 0/6"


def test_a_long_episode_that_started_on_an_old_version_comes_whole_and_counts_its_fresh_steps(data):
    """A long episode outlives several updates: dropping it for its first steps would drop exactly the
    long (on tasks that end in a fall: the good) episodes. It comes whole; only its fresh steps count."""
    s = sampler(data)
    request = BatchRequest("episodes", size=4, max_version_lag=1)
    data.episodes = [(1, episode([2, 2, 3, 4, -1, 5], "long"))]  # at v5, lag 1: rows of v4 and v5 are fresh
    assert s.next(request, step=0, version=5) is None
    assert s.waiting == "collecting fresh on-policy steps: 3/4"  # the v4, held and v5 rows
    assert s.partly_stale_episodes == 1 and s.dropped_stale_episodes == 0
    data.episodes.append((2, episode([5], "short")))
    batch = s.next(request, step=0, version=5)
    assert [e.episode_id for e in batch.episodes] == ["long", "short"]


def test_reset_drops_the_collected_episodes(data):
    s = sampler(data)
    data.episodes = [(1, episode([0, 0, 0]))]
    assert s.next(BatchRequest("episodes", size=4), step=0, version=0) is None
    s.reset()
    data.episodes.append((2, episode([0, 0, 0])))
    assert s.next(BatchRequest("episodes", size=4), step=0, version=0) is None
    assert s.waiting == "collecting fresh on-policy steps: 3/4"


def test_waits_for_the_fleet_then_stops_asking_once_it_serves_the_version(data):
    board = Board(serving=2)
    s = sampler(data, board)
    request = BatchRequest("episodes", size=1, wait_for_fleet=True)
    data.episodes = [(1, episode([3]))]
    assert s.next(request, step=0, version=3) is None
    assert s.waiting == "waiting for the fleet to serve v3 (slowest replica on v2)"
    assert s.fleet_waits == 1 and data.sample_episodes.calls == []  # no episodes asked for meanwhile
    board.serving_version = 3
    assert len(s.next(request, step=0, version=3)) == 1
    data.episodes.append((2, episode([3])))
    assert len(s.next(request, step=1, version=3)) == 1
    assert len(board.serving.calls) == 2  # not asked again for a version the fleet was seen serving
    board.serving_version = None  # no replica answered: not a reason to wait
    data.episodes.append((3, episode([3])))
    assert len(s.next(request, step=2, version=4)) == 1 and s.fleet_waits == 1


def test_with_segments_fresh_data_are_the_gateways_pieces_and_a_restarted_feed_is_read_from_its_start(data):
    feed: list[tuple[int, object]] = []
    data.sample_segments = Method(
        lambda task, since: EpisodeBatch(
            episodes=[e for n, e in feed if n > since],
            snapshots=[n for n, _ in feed if n > since],
            snapshot=max((n for n, _ in feed), default=0),
        )
    )
    s = Sampler("reach", data, Board(None), 2, 0, get=resolve, segments=True)
    request = BatchRequest("episodes", size=4, max_version_lag=1)
    feed[:] = [(1, episode([5, 5], "a")), (2, episode([5, 5], "b"))]
    batch = s.next(request, step=0, version=5)
    assert [e.episode_id for e in batch.episodes] == ["a", "b"] and data.sample_episodes.calls == []
    assert data.sample_segments.calls == [("reach", 0)]
    feed[:] = [(1, episode([6, 6, 6], "c"))]  # the data server restarted: its feed numbers from 1 again
    assert s.next(request, step=1, version=6) is None  # seen up to 2, the feed's newest is 1: start over
    feed.append((2, episode([6], "d")))
    batch = s.next(request, step=1, version=6)
    assert [e.episode_id for e in batch.episodes] == ["c", "d"]
