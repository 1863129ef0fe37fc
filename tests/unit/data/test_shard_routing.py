"""Routing of data-server calls over shards (workers/data/shards.py), without Ray: which shard a task's
calls go to, the config's checks, and the calls the router refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.server import DataConfig
from fleetrl.workers.data.shards import DataShards, _task_of, shard_index, shard_store


class FakeActor:
    """Records which method each call reached (a stand-in for an actor handle's ``method.remote``)."""

    def __init__(self, k: int):
        self.k, self.calls = k, []

    def __getattr__(self, name):
        actor = self

        class M:
            def remote(self, *args, **kwargs):
                actor.calls.append(name)
                return actor.k

        return M()


def test_a_task_has_one_shard_everywhere_named_or_hashed():
    assert shard_index("left", 4, {"left": 3}) == 3
    spread = {shard_index(f"task-{i}", 4, {}) for i in range(40)}
    assert spread == {0, 1, 2, 3}  # hashing spreads tasks over every shard
    assert all(shard_index(f"task-{i}", 4, {}) == shard_index(f"task-{i}", 4, {}) for i in range(40))
    with pytest.raises(ValidationError, match="shards are numbered 0 .. 1"):
        DataConfig(shards=2, shard_of={"left": 2})
    assert DataConfig(shards=3).shard_of_task("x") == shard_index("x", 3, {})


def test_calls_go_to_their_tasks_shard_and_calls_without_a_task_are_refused_where_one_is_needed():
    actors = [FakeActor(0), FakeActor(1)]
    data = DataShards(actors, {"left": 0, "right": 1})
    assert data.sample_chunks.remote("right", 8) == 1
    assert data.ingest.remote(synthetic_episode(3, task="left")) == 0
    assert data.stats.remote("right") == 1 and data.for_task("left") is actors[0]
    assert _task_of((), {"task": "right"}) == "right"
    with pytest.raises(ValueError, match="no task in the call"):
        data.sample_chunks.remote()
    with pytest.raises(AttributeError, match="routes no data-server method 'drop_everything'"):
        data.drop_everything  # noqa: B018


def test_each_shard_gets_its_own_store_and_catalog():
    one = DataConfig(catalog="/db/catalog.sqlite")
    assert shard_store(one, "/data/episodes", 0) == (one, "/data/episodes")
    config, root = shard_store(DataConfig(shards=2, catalog="/db/catalog.sqlite"), "/data/episodes/", 1)
    assert root == "/data/episodes/shard-1" and config.catalog == "/db/catalog.sqlite.shard-1"
    _, url = shard_store(
        DataConfig(shards=2, catalog="/c"), "s3://b/episodes?endpoint_override=h:1&scheme=http", 0
    )
    assert url == "s3://b/episodes/shard-0?endpoint_override=h:1&scheme=http"
