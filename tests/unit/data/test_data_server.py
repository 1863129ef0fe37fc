"""The data server's logic without Ray: per-task reward schemes, exactly-once ingest, rebuild on restart."""

from __future__ import annotations

import pytest

from fleetrl.platform.config import ConfigError, parse_config
from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.server import DataConfig, DataServer
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
    again = DataServer(cfg, [task("a"), task("b")], str(tmp_path))  # a restart rebuilds replay from disk
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
