"""Data-server shards (workers/data/shards.py) as real Ray actors with their own stores: each task's
episodes land on its shard only, calls for a task reach its shard through the router, calls about no task
are merged, an episode is found wherever it is, and a killed shard comes back with its own tasks while
the other shard's task is served all along."""

from __future__ import annotations

import ray

from fleetrl.testing.episodes import synthetic_episode
from fleetrl.testing.restarts import kill_and_await_restart
from fleetrl.testing.s3 import local_s3
from fleetrl.workers.data.server import DataConfig, DataServer
from fleetrl.workers.data.shards import DataShards, shard_store
from fleetrl.workers.task import TaskConfig


def task(name: str) -> TaskConfig:
    return TaskConfig(
        name=name, observation={"state": {"shape": [4]}}, action={"shape": [2], "low": -1, "high": 1}
    )


def start_shards(config: DataConfig, root: str, per_task: int, **options) -> tuple[list, DataShards]:
    """Two data-server actors for the tasks ``left`` and ``right`` (shards 0 and 1), ready, each task
    given ``per_task`` stored episodes ``<task>-<i>``."""
    tasks = [task("left"), task("right")]
    actors = []
    for k in range(2):
        cfg, shard_root = shard_store(config, root, k)
        actors.append(
            ray.remote(DataServer).options(max_restarts=1, **options).remote(cfg, tasks, shard_root, shard=k)
        )
    data = DataShards(actors, config.shard_of)
    ray.get(data.ready.remote())
    episodes = [
        synthetic_episode(5, task=t, episode_id=f"{t}-{i}", seed=i)
        for t in ("left", "right")
        for i in range(per_task)
    ]
    assert all(r["stored"] for r in ray.get([data.ingest.remote(ep) for ep in episodes]))
    return actors, data


def test_two_shards_keep_their_tasks_apart_and_a_restarted_shard_serves_only_its_own(ray_session, tmp_path):
    config = DataConfig(shards=2, shard_of={"left": 0, "right": 1})
    actors, data = start_shards(config, str(tmp_path / "episodes"), per_task=3)
    # each shard's store holds its task's episodes and nothing else, under <root>/shard-<k>
    assert sorted(ray.get(actors[0].episode_ids.remote())) == ["left-0", "left-1", "left-2"]
    assert sorted(ray.get(actors[1].episode_ids.remote())) == ["right-0", "right-1", "right-2"]
    assert (tmp_path / "episodes" / "shard-0").is_dir() and (tmp_path / "episodes" / "shard-1").is_dir()
    # routed by task; merged when about no task; found wherever it is stored
    assert ray.get(data.stats.remote("right"))["store"]["episodes"] == 3
    assert ray.get(data.stats.remote())["store"]["episodes"] == 6
    assert len(ray.get(data.episode_ids.remote())) == 6
    assert ray.get(data.get_episode.remote("right-2")).task == "right"
    assert len(ray.get(data.sample_chunks.remote("left", 8)).actions) == 8
    try:
        ray.get(data.get_episode.remote("nowhere"))
        raise AssertionError("an unknown episode must be refused")
    except KeyError:
        pass
    # the left shard dies and comes back: its task answers again, from its own store only; the right
    # shard's task was served meanwhile
    assert kill_and_await_restart(actors[0], lambda a: a.ready.remote(), 60,
                                  then=lambda: ray.get(data.stats.remote("right"))["store"]["episodes"] == 3) is not None  # fmt: skip
    ray.get(actors[0].wait_refilled.remote(30))
    assert sorted(ray.get(data.episode_ids.remote("left"))) == ["left-0", "left-1", "left-2"]
    assert len(ray.get(data.sample_chunks.remote("left", 4)).actions) == 4
    assert ray.get(data.replay_config.remote("left")) is not None
    try:
        ray.get(actors[0].sample_chunks.remote("right", 4))
        raise AssertionError("the restarted left shard must not serve the right task")
    except KeyError:
        pass
    ray.get(data.stop.remote())


def test_two_shards_store_in_one_s3_bucket_and_a_restarted_shard_rebuilds_its_catalog(ray_session, tmp_path):
    """Object storage (a real S3 API: moto's server): each shard writes under its own prefix of one bucket
    with its own catalog; a shard restarted on a node without its catalog rebuilds it from the listing."""
    with local_s3() as s3:
        config = DataConfig(shards=2, shard_of={"left": 0, "right": 1}, root=s3.url("episodes"),
                            catalog=str(tmp_path / "catalog.sqlite"))  # fmt: skip
        actors, data = start_shards(config, config.root, per_task=2)  # credentials: the session's (conftest)
        assert s3.keys("episodes/") == [f"episodes/shard-{k}/{t}/robot-0/{t}-{i}.parquet"
                                        for k, t in enumerate(("left", "right")) for i in range(2)]  # fmt: skip
        for f in tmp_path.glob("catalog.sqlite.shard-0*"):  # the left shard's node and its catalog are gone
            f.unlink()
        assert kill_and_await_restart(actors[0], lambda a: a.ready.remote(), 60) is not None
        ray.get(actors[0].wait_refilled.remote(30))
        assert sorted(ray.get(data.episode_ids.remote("left"))) == ["left-0", "left-1"]
        assert len(ray.get(data.sample_chunks.remote("left", 4)).actions) == 4
        ray.get(data.stop.remote())
