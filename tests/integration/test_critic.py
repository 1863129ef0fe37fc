"""A progress critic trained by `fleetrl critic train` scores episodes in a critic-server actor, and the data
server stores the critic's rewards for the tasks configured to use it."""

from __future__ import annotations

import dataclasses

import numpy as np
import ray

from fleetrl.cli import main
from fleetrl.robots.demos import RandomPolicy, collect_scripted_demos, reacher_reach_policy
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.critic import CriticConfig, CriticServer
from fleetrl.workers.data.server import DataConfig, DataServer
from fleetrl.workers.data.store import EpisodeStore
from fleetrl.workers.task import TaskConfig


def test_trained_critic_scores_episodes_and_the_data_server_stores_its_rewards(ray_session, tmp_path, capsys):
    demos = collect_scripted_demos("Reacher-v5", reacher_reach_policy, n=30, seed=0, task="reach")
    with EpisodeStore(str(tmp_path / "demos")) as store:
        for ep in demos:
            store.put(ep)
    ckpt = tmp_path / "critic.pt"
    assert (
        main(["critic", "train", "--episodes", str(tmp_path / "demos"), "--steps", "300", "--out", str(ckpt)])
        == 0
    )
    out = capsys.readouterr().out
    assert "checkpoint written" in out and "held-out" in out

    cfg = CriticConfig(tasks={"reach": {"source": "progress", "checkpoint": str(ckpt)}})
    critic = ray.remote(CriticServer).remote(cfg)
    assert ray.get(critic.ready.remote()) == ["reach"]
    good = collect_scripted_demos("Reacher-v5", reacher_reach_policy, n=3, seed=100, task="reach")
    bad = collect_scripted_demos(
        "Reacher-v5", RandomPolicy(ArraySpec((2,), "float32", -1.0, 1.0), seed=1), n=3, seed=200, task="reach"
    )
    scored_good = [ray.get(critic.score.remote(ep)) for ep in good]
    scored_bad = [ray.get(critic.score.remote(ep)) for ep in bad]
    for raw, ep in zip(good, scored_good, strict=True):
        assert ep.meta["env_total_reward"] == float(raw.columns["reward"].sum())
        assert not np.allclose(
            ep.columns["reward"], raw.columns["reward"]
        )  # the critic's rewards replaced them
    # Progress along a successful reach clearly exceeds progress along a random flail.
    assert np.mean([ep.columns["reward"].sum() for ep in scored_good]) > np.mean(
        [ep.columns["reward"].sum() for ep in scored_bad]
    )
    frames = good[0].observations["state"]
    assert ray.get(critic.progress.remote("reach", frames[:-1], frames[1:])).shape == (len(frames) - 1,)
    assert ray.get(critic.done.remote("reach", frames)).shape == (len(frames),)

    task = TaskConfig(
        name="reach",
        observation={"state": {"shape": [10]}},
        action={"shape": [2], "low": -1, "high": 1},
    )
    data = ray.remote(DataServer).remote(
        DataConfig(), [task], str(tmp_path / "store"), None, critic, {"reach"}
    )
    online = dataclasses.replace(good[1], source="online", episode_id="online-1")
    assert ray.get(data.ingest.remote(online))["stored"]
    stored = ray.get(data.get_episode.remote("online-1"))
    np.testing.assert_allclose(stored.columns["reward"], scored_good[1].columns["reward"], rtol=1e-5)
    assert stored.meta["critic"]["source"] == "progress"
    for actor in (data, critic):
        ray.kill(actor)
