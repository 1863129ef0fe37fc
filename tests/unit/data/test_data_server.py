"""The data server's logic without Ray: per-task reward schemes, exactly-once ingest, and the refill of its
replays from the store after a restart (in the background, newest first, up to capacity)."""

from __future__ import annotations

import threading

import pytest

from fleetrl.platform.config import ConfigError, parse_config
from fleetrl.robots.episode import Episode
from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.server import DataConfig, DataServer
from fleetrl.workers.data.store import EpisodeStore
from fleetrl.workers.task import TaskConfig

SPEC = {"state": ((10,), "float32")}


def task(name: str) -> TaskConfig:
    return TaskConfig(
        name=name,
        observation={"state": {"shape": [10]}},
        action={"shape": [2], "low": -1, "high": 1},
        chunk_len=2,
    )


def test_reward_scheme_is_chosen_per_task_and_replay_is_rebuilt(tmp_path):
    cfg = DataConfig(tasks={"b": {"reward": "aloe", "c_fail": 10.0}})
    server = DataServer(cfg, [task("a"), task("b")], str(tmp_path))
    for name in ("a", "b"):
        ep = synthetic_episode(
            3, task=name, episode_id=f"ep-{name}", outcome="failure", obs_spec=SPEC, rewards=[1, 1, 1]
        )
        assert server.ingest(ep)["stored"]
        assert not server.ingest(ep)["stored"]  # a re-sent episode is stored once
    assert server.sample_chunks("a", 64).rewards.max() == 1.0  # env rewards kept
    assert server.sample_chunks("b", 64).rewards.min() == -10.0  # ALOE: -C_fail on the failure step
    server.stop()
    again = DataServer(cfg, [task("a"), task("b")], str(tmp_path))  # a restart refills replay from disk
    assert again.wait_refilled(timeout=30)
    assert again.stats("b")["replay"]["online_episodes"] == 1 and again.stats("a")["store"]["episodes"] == 1


def test_per_task_settings_must_name_a_task():
    base = {
        "tasks": [
            {
                "name": "a",
                "observation": {"state": {"shape": [1]}},
                "action": {"shape": [1], "low": -1, "high": 1},
            }
        ]
    }
    with pytest.raises(ConfigError, match="data.tasks.zz"):
        parse_config({**base, "data": {"tasks": {"zz": {"reward": "sparse"}}}})
    with pytest.raises(ConfigError, match="critic.tasks.zz"):
        parse_config({**base, "critic": {"tasks": {"zz": {"source": "env"}}}})


def _store_episodes(root: str, cfg: DataConfig) -> list[str]:
    """3 offline then 10 online 5-step episodes of task "a" stored by a server (online ids, oldest first)."""
    server = DataServer(cfg, [task("a")], root)
    for i in range(3):
        server.ingest(synthetic_episode(5, task="a", episode_id=f"demo-{i}", source="offline", obs_spec=SPEC))
    online = [f"ep-{i}" for i in range(10)]
    for i, name in enumerate(online):
        server.ingest(synthetic_episode(5, task="a", episode_id=name, obs_spec=SPEC, seed=i))
    server.stop()
    return online


def test_refill_takes_every_offline_episode_and_the_newest_online_ones_that_fit(tmp_path):
    cfg = DataConfig(replay={"capacity": 20})  # 6 rows per 5-step episode: 3 online episodes fit
    online = _store_episodes(str(tmp_path), cfg)
    server = DataServer(cfg, [task("a")], str(tmp_path))
    assert server.wait_refilled(timeout=30)
    sizes = server.stats("a")["replay"]
    assert sizes["offline_episodes"] == 3 and sizes["online_episodes"] == 3 and sizes["evicted_episodes"] == 0
    assert server.refill["episodes"] == server.refill["loaded"] == 6  # the 7 older online ones not even read
    held = [ep.episode_id for ep in server.sample_episodes("a", 10).episodes]
    assert held == online[-3:]  # the newest, in snapshot order (newest last) though added newest first
    server.stop()


def test_a_refilling_server_ingests_and_samples_and_keeps_episodes_in_snapshot_order(tmp_path, monkeypatch):
    cfg = DataConfig()
    online = _store_episodes(str(tmp_path), cfg)
    release, reading = threading.Event(), threading.Event()
    original = EpisodeStore.read

    def held_back(store: EpisodeStore, row: dict) -> Episode:  # the refill waits until the test says go
        reading.set()
        assert release.wait(30)
        return original(store, row)

    monkeypatch.setattr(EpisodeStore, "read", held_back)
    server = DataServer(cfg, [task("a")], str(tmp_path))
    try:
        assert reading.wait(30) and not server.refill["done"]
        new = synthetic_episode(5, task="a", episode_id="ep-new", obs_spec=SPEC, seed=99)
        assert server.ingest(new)["stored"]  # answered while the refill is under way
        assert len(server.sample_chunks("a", 8)) == 8
        assert [ep.episode_id for ep in server.sample_episodes("a", 10).episodes] == ["ep-new"]
    finally:
        release.set()
    assert server.wait_refilled(timeout=30) and server.refill["loaded"] == 13
    assert [ep.episode_id for ep in server.sample_episodes("a", 20).episodes] == online + ["ep-new"]
    server.stop()
