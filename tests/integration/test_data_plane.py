"""Episodes flow from robots through the gateway into the durable store; a killed data server loses nothing."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from fleetrl.robots.client import ClientConfig
from tests.integration.helpers import RunningFleet


def _acked(fleet) -> dict[str, object]:
    return {ep.episode_id: ep for c in fleet.clients for ep in list(c.episodes) if ep.acked}


def test_acked_episodes_are_stored_exactly_as_executed(platform):
    with RunningFleet(platform, n=2, hz=50.0, seed=50) as fleet:
        fleet.wait_for(lambda: len(_acked(fleet)) >= 4, timeout=40, what="four acked episodes")
    acked = _acked(fleet)
    stored_ids = ray.get(platform.data.episode_ids.remote("reach"))
    assert set(acked) <= set(stored_ids)
    for episode_id, log in list(acked.items())[:4]:
        ep = ray.get(platform.data.get_episode.remote(episode_id))
        assert len(ep) == len(log.steps) and ep.outcome == log.outcome and ep.task == "reach"
        np.testing.assert_allclose(ep.actions, np.stack(log.actions))
        np.testing.assert_allclose(ep.observations["state"], np.stack([o["state"] for o in log.observations]))
        assert ep.columns["obs_step"].tolist() == [s.obs_step for s in log.steps]
        assert ep.columns["policy_version"].tolist() == [s.policy_version for s in log.steps]
        np.testing.assert_allclose(ep.final_observation["state"], log.final_observation["state"])
        first_rows = ep.columns["obs_step"] == np.arange(len(ep))
        assert np.isfinite(ep.columns["log_prob"]).sum() >= first_rows.sum() - ep.columns["held"].sum() - 1
    batch = ray.get(platform.data.sample_chunks.remote("reach", 64))
    assert batch.actions.shape == (64, 4, 2) and batch.snapshot >= 4
    batches = ray.get(platform.data.sample_chunk_batches.remote("reach", 32, 3))
    assert [b.actions.shape for b in batches] == [(32, 4, 2)] * 3
    assert not np.array_equal(batches[0].actions, batches[1].actions)  # independent draws
    with pytest.raises(ray.exceptions.RayTaskError, match="count must be in"):
        ray.get(platform.data.sample_chunk_batches.remote("reach", 32, 0))


def _after_restart(call, timeout: float = 30.0):
    """``ray.get(call())``, asked again while Ray still reports the actor's restart (ActorUnavailableError:
    a call that crossed the restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(call(), timeout=timeout)
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_killed_data_server_restarts_and_loses_no_acked_episode(platform):
    cfg = ClientConfig(ack_timeout_s=0.5)
    with RunningFleet(platform, n=3, hz=50.0, config=cfg, seed=60) as fleet:
        fleet.wait_for(lambda: len(_acked(fleet)) >= 3, timeout=40, what="first acked episodes")
        learner = platform.learner("reach")
        fleet.wait_for(lambda: "pid" in ray.get(learner.status.remote()), timeout=60, what="a learner report")
        before = ray.get(learner.status.remote())
        ray.kill(
            platform.data.for_task("reach"), no_restart=False
        )  # Ray restarts it; it refills replay from disk
        t_kill = time.monotonic()
        fleet.wait_for(lambda: len(_acked(fleet)) >= 12, timeout=60, what="episodes acked after the restart")
        fleet.wait_for(lambda: ray.get(learner.status.remote())["time"] > time.time() - 1, timeout=30,
                       what="a learner report after the restart")  # fmt: skip
        after = ray.get(learner.status.remote())
    # The learner waited for the data server instead of being restarted from a checkpoint: same worker
    # process, nothing thrown away.
    assert after["pid"] == before["pid"] and after["step"] >= before["step"], (before, after)
    assert after["restored_step"] == before["restored_step"]
    assert time.monotonic() - t_kill < 60
    stored = _after_restart(lambda: platform.data.episode_keys.remote("reach"))
    assert len(stored) == len(set(stored))  # exactly once
    assert set(_acked(fleet)) <= {episode_id for _, episode_id in stored}  # every acked episode is on disk
    assert _after_restart(lambda: platform.data.wait_refilled.remote(30))  # the background refill ended
    sizes = ray.get(platform.data.stats.remote("reach"))["replay"]
    assert sizes["online_episodes"] >= len(_acked(fleet))  # and back in replay after the refill


def test_data_plane_metrics_are_exported(platform):
    import httpx

    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"{platform.rest_url}/metrics").text
        if 'fleetrl_episodes_ingested_total{result="stored",task="reach"}' in text:
            break
        time.sleep(0.5)
    assert 'fleetrl_episodes_ingested_total{result="stored",task="reach"}' in text
    count = [
        line for line in text.splitlines() if line.startswith("fleetrl_episode_to_learner_seconds_count")
    ]
    assert count and float(count[0].split()[-1]) > 0
    assert 'fleetrl_replay_transitions{partition="online",task="reach"}' in text


def test_rest_data_views_and_human_labels(platform):
    import httpx

    from tests.conftest import ADMIN_TOKEN

    api = httpx.Client(base_url=platform.rest_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with RunningFleet(platform, n=1, hz=50.0, seed=70) as fleet:
        fleet.wait_for(lambda: len(_acked(fleet)) >= 1, timeout=30, what="an acked episode")
    episode_id = next(iter(_acked(fleet)))
    before = api.get("/v1/tasks/reach/data").json()
    assert before["episodes"] >= 1 and before["snapshot"] >= 1 and before["steps"] > 0
    summary = api.get(f"/v1/episodes/{episode_id}").json()
    assert summary["task"] == "reach" and summary["labelled_by"] == "robot" and summary["n_steps"] > 0
    r = api.post(f"/v1/episodes/{episode_id}/label", json={"outcome": "success"})
    assert r.status_code == 200, r.text
    after = api.get(f"/v1/episodes/{episode_id}").json()
    assert after["outcome"] == "success" and after["labelled_by"] == "human"
    stored = ray.get(platform.data.get_episode.remote(episode_id))
    assert stored.outcome == "success" and stored.labelled_by == "human"
    assert api.get("/v1/tasks/reach/data").json()["success"] >= before["success"] + (
        summary["outcome"] != "success"
    )
    assert api.post(f"/v1/episodes/{episode_id}/label", json={"outcome": "maybe"}).status_code == 422
    assert api.post("/v1/episodes/nope/label", json={"outcome": "failure"}).status_code == 404
    assert api.get("/v1/episodes/nope").status_code == 404
    assert api.get("/v1/tasks/nope/data").status_code == 404


def test_demo_import_over_rest_is_all_or_nothing(platform, tmp_path):
    import httpx

    from fleetrl.testing.episodes import synthetic_episode
    from fleetrl.workers.data.store import EpisodeStore
    from tests.conftest import ADMIN_TOKEN

    spec = {"state": ((10,), "float32")}
    demos = EpisodeStore(str(tmp_path / "demos"))
    for i in range(3):
        demos.put(synthetic_episode(20, episode_id=f"demo-{i}", obs_spec=spec, source="offline", seed=i))
    demos.close()
    api = httpx.Client(base_url=platform.rest_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    before = ray.get(platform.data.stats.remote("reach"))["replay"]["offline_episodes"]
    r = api.post("/v1/tasks/reach/demos", json={"path": str(tmp_path / "demos")})
    assert r.status_code == 201, r.text
    assert r.json()["stored"] == 3 and r.json()["duplicates"] == 0
    again = api.post("/v1/tasks/reach/demos", json={"path": str(tmp_path / "demos")}).json()
    assert again["stored"] == 0 and again["duplicates"] == 3  # re-importing stores nothing twice
    assert ray.get(platform.data.stats.remote("reach"))["replay"]["offline_episodes"] == before + 3
    # A folder with one bad file: a clear 422 naming it, and nothing of that folder is stored.
    bad = EpisodeStore(str(tmp_path / "bad"))
    bad.put(synthetic_episode(5, episode_id="good-1", obs_spec=spec, source="offline"))
    bad.close()
    (tmp_path / "bad" / "reach" / "broken.parquet").write_bytes(b"PAR1 not really")
    r = api.post("/v1/tasks/reach/demos", json={"path": str(tmp_path / "bad")})
    assert r.status_code == 422 and "broken.parquet" in r.json()["detail"]
    for leak in (
        "Traceback",
        "pid=",
        "\x1b[",
        "ray::",
        '.py"',
    ):  # the reason only, not Ray's remote traceback
        assert leak not in r.json()["detail"], r.json()["detail"]
    assert "good-1" not in ray.get(platform.data.episode_ids.remote("reach"))
    assert api.post("/v1/tasks/reach/demos", json={"path": str(tmp_path), "format": "csv"}).status_code == 422
    assert api.post("/v1/tasks/nope/demos", json={"path": str(tmp_path)}).status_code == 404
