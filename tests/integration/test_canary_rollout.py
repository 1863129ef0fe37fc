"""Gated rollout through the real platform (gateway, weight board, replica, data server, REST): robots
with one decision per episode (``fleetrl/testing/threshold_robot.py``) run a canary task; a good version
is promoted, a deliberately broken one (weights zeroed) is rolled back by its canary trial and the fleet's
success comes back; an operator pins and releases a version; evaluations measure a version in its mode
and their episodes are stored but never replayed."""

from __future__ import annotations

import time

import ray

from fleetrl.robots.client import RobotClient, register
from fleetrl.testing.threshold_robot import ThresholdRobot, broken_weights, good_weights, threshold_task
from tests.conftest import ADMIN_TOKEN, delete_task
from tests.integration.helpers import FleetThread, wait_until

TASK = "canary-rollout"
ROLLOUT = {"mode": "canary", "canary_fraction": 0.5, "window_episodes": 12, "tolerance": 0.1}


def success_since(clients: list[RobotClient], since: float, version: int | None = None) -> tuple[int, int]:
    """(successes, episodes) of the robots' episodes that started after ``since`` (monotonic), optionally
    only those whose action came from ``version``."""
    wins = n = 0
    for c in clients:
        for ep in list(c.episodes):
            acted = [s for s in ep.steps if s.policy_version >= 0]
            if ep.outcome is None or not acted or acted[0].obs_time < since:
                continue
            if version is not None and acted[0].policy_version != version:
                continue
            n += 1
            wins += ep.outcome == "success"
    return wins, n


def test_canary_promotes_a_good_version_rolls_back_a_broken_one_and_evaluations_measure_them(api, platform):
    assert api.post("/v1/tasks", json=threshold_task(TASK, rollout=ROLLOUT), timeout=120).status_code == 201
    try:
        clients = []
        for i in range(4):
            robot = ThresholdRobot(control_hz=20, steps=5)  # 0.25 s episodes: the trials fill quickly
            info = register(platform.rest_url, ADMIN_TOKEN, f"thr-{i}", TASK, robot)
            clients.append(RobotClient.from_registration(robot, info))
        rollout = lambda: api.get(f"/v1/tasks/{TASK}/rollout").json()  # noqa: E731
        with FleetThread(clients) as fleet:
            fleet.wait_for(lambda: fleet.total("episodes") >= 8, timeout=60, what="first episodes")
            assert rollout()["stable"] == 0 and rollout()["held"] == [0]
            # version 1: trained to succeed -> promoted by its trial
            state = served_state(platform)
            ray.get(platform.weights.publish.remote(TASK, 1, good_weights(state)))
            first = wait_until(
                lambda: next(iter(rollout()["verdicts"]), None), 60, "the verdict on version 1"
            )
            assert first["candidate"] == 1 and first["decision"] == "promoted", first
            assert first["canary_success"] > 0.9 > first["stable_success"]
            # version 2: weights zeroed -> its canary trial rolls it back; the fleet returns to version 1
            ray.get(platform.weights.publish.remote(TASK, 2, broken_weights(state)))
            second = wait_until(lambda: rollout()["verdicts"][1:], 60, "the verdict on version 2")[0]
            assert second["candidate"] == 2 and second["decision"] == "rolled_back", second
            assert second["canary_success"] < 0.6 < 0.9 < second["stable_success"]
            decided = time.monotonic()
            after = wait_until(lambda: (lambda w, n: (w, n) if n >= 40 else None)(*success_since(clients, decided)), 60,
                         "episodes after the rollback")  # fmt: skip
            assert after[0] / after[1] >= 0.9, after  # the fleet's success restored
            assert success_since(clients, decided + 1.0, version=2)[1] == 0  # nobody runs version 2 any more
            state_now = rollout()
            assert state_now["stable"] == 1 and state_now["rejected"] == 2 and state_now["newest"] == 2
            # an operator pins version 0 by hand, then releases the pin
            pinned = api.post(f"/v1/tasks/{TASK}/rollback", json={"version": 0})
            assert pinned.status_code == 200 and pinned.json()["pinned"] == 0, pinned.text
            t_pin = time.monotonic()
            wait_until(
                lambda: success_since(clients, t_pin, version=0)[1] >= 8, 30, "episodes on the pinned version"
            )
            assert success_since(clients, t_pin + 1.0, version=1)[1] == 0
            assert api.post(f"/v1/tasks/{TASK}/rollback", json={"version": 99}).status_code == 404
            assert api.delete(f"/v1/tasks/{TASK}/rollback").json()["pinned"] is None
            # evaluations: the broken version in its mode never succeeds, the promoted one always
            ids = {}
            for version in (2, 1):
                r = api.post(f"/v1/tasks/{TASK}/evaluations", json={"version": version, "episodes": 10})
                assert r.status_code == 202 and r.json()["status"] == "running", r.text
                ids[version] = r.json()["evaluation_id"]
                done = wait_until(lambda i=ids[version]: (lambda e: e if e["status"] == "done" else None)(
                    api.get(f"/v1/tasks/{TASK}/evaluations/{i}").json()), 60, f"evaluation of {version}")  # fmt: skip
                assert done["episodes_done"] == 10 and done["deterministic"]
                ids[version] = done
            assert ids[2]["success_rate"] == 0.0 and ids[2]["success_ci95"][1] < 0.35
            assert ids[1]["success_rate"] == 1.0 and ids[1]["success_ci95"][0] > 0.65
            listed = api.get(f"/v1/tasks/{TASK}/evaluations").json()
            assert [e["version"] for e in listed] == [1, 2]
            strangers = api.post(f"/v1/tasks/{TASK}/evaluations", json={"robots": ["nobody"], "episodes": 1})
            assert strangers.status_code == 422
        # evaluation episodes are stored, flagged, and not in the replay
        stats = ray.get(platform.data.stats.remote(TASK))
        assert stats["replay"]["online_episodes"] <= stats["store"]["episodes"] - 20, stats
        modal = [(c.robot_id, e.episode_id) for c in clients for e in c.episodes  # the mode of version 2: 0.0
                 if e.acked and e.actions and float(e.actions[-1][0]) == 0.0]  # fmt: skip
        assert modal
        for robot_id, episode_id in modal:
            stored = ray.get(platform.data.get_episode.remote(episode_id, robot_id))
            assert stored.meta["evaluation"] == ids[2]["evaluation_id"] and stored.is_evaluation
    finally:
        delete_task(api, TASK)


def served_state(platform) -> dict:
    """The weights the task's replicas start from (version 0), as a template to derive versions from."""
    replica = next(iter(ray.get(platform.weights.pools.remote())[TASK]))
    return ray.get(replica.served_state.remote())
