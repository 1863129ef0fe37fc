"""A task served inline (``inference.transport: inline``) through the real platform: created over REST with
no replica actors, its robots get actions from the gateway's own copy of the policy; a version published to
the weight board reaches that copy (robots act with it, the board reports the fleet serving it), and an
operator's rollback pin makes the copy hold and serve the older version (the board's hold reaches it
through the gateway while the gateway waits for the hold)."""

from __future__ import annotations

import time

import ray

from fleetrl.robots.client import RobotClient, register
from fleetrl.testing.threshold_robot import ThresholdRobot, good_weights, threshold_task
from tests.conftest import ADMIN_TOKEN, delete_task
from tests.integration.helpers import FleetThread, wait_until

TASK = "inline-served"


def outcomes_since(clients: list[RobotClient], since: float, version: int) -> list[str]:
    """Outcomes of the episodes whose first action came from ``version`` after ``since`` (monotonic)."""
    found = []
    for c in clients:
        for ep in list(c.episodes):
            acted = [s for s in ep.steps if s.policy_version >= 0]
            if (
                ep.outcome is not None
                and acted
                and acted[0].obs_time >= since
                and acted[0].policy_version == version
            ):
                found.append(ep.outcome)
    return found


def test_an_inline_task_serves_from_the_gateway_takes_published_versions_and_holds_a_pinned_one(
    api, platform
):
    body = threshold_task(TASK, inference={"transport": "inline"})
    created = api.post("/v1/tasks", json=body, timeout=120)
    assert created.status_code == 201, created.text
    try:
        (member,) = ray.get(platform.weights.pools.remote())[TASK]  # the gateway's copy, no replica actor
        assert member.key == "gateway"
        clients = []
        for i in range(3):
            robot = ThresholdRobot(control_hz=20, steps=5)
            info = register(platform.rest_url, ADMIN_TOKEN, f"inl-{i}", TASK, robot)
            clients.append(RobotClient.from_registration(robot, info))
        with FleetThread(clients) as fleet:
            fleet.wait_for(lambda: fleet.total("episodes") >= 6, timeout=60, what="first episodes")
            assert {s.replica for c in clients for ep in c.episodes for s in ep.steps if not s.held} == {
                f"{TASK}/gateway"
            }
            state = ray.get(member.served_state.remote())
            published = time.monotonic()
            ray.get(platform.weights.publish.remote(TASK, 1, good_weights(state)))
            wins = wait_until(
                lambda: (lambda o: o if len(o) >= 6 else None)(outcomes_since(clients, published, 1)),
                30, "episodes on version 1",
            )  # fmt: skip
            assert wins.count("success") == len(wins), wins  # version 1 pushes past the threshold
            assert ray.get(platform.weights.serving.remote(TASK)) == 1
            pinned = api.post(f"/v1/tasks/{TASK}/rollback", json={"version": 0}, timeout=60)
            assert pinned.status_code == 200 and pinned.json()["pinned"] == 0, pinned.text
            t_pin = time.monotonic()
            wait_until(
                lambda: len(outcomes_since(clients, t_pin, 0)) >= 4, 30, "episodes on the pinned version"
            )
            assert outcomes_since(clients, t_pin + 1.0, 1) == []
            assert api.delete(f"/v1/tasks/{TASK}/rollback").json()["pinned"] is None
            fleet.assert_only_recovered_errors()
    finally:
        delete_task(api, TASK)
    assert TASK not in ray.get(platform.weights.pools.remote())
