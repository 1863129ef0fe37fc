"""Two gateways beside the test platform's own, on its registry, replicas, data shards and weight board:
robots spread over both and both serve them; the router answers for both; and when one gateway is gone
its robots move to the other, which takes them over, and no episode a robot saw acked is missing.

(The test platform runs one gateway: a second REST app cannot be deployed in the session's Ray. The whole
path through REST, on a multi-node cluster with a node lost, is ``tests/e2e/test_cluster.py``.)
"""

from __future__ import annotations

import pytest
import ray

from fleetrl.robots.client import ClientConfig, RobotClient
from fleetrl.robots.sim import SimRobot
from fleetrl.serving.routes.robots import gateway_order
from fleetrl.testing.net import free_ports_in_a_row
from fleetrl.workers.gateway.actor import start_gateways
from fleetrl.workers.gateway.gateways import Gateways
from fleetrl.workers.gateway.session import GatewayConfig
from fleetrl.workers.lifecycle import stop_actors
from tests.integration.helpers import FleetThread

SPECS = ({"state": {"shape": [10], "dtype": "float32"}}, {"shape": [2], "dtype": "float32"})


@pytest.fixture(scope="module")
def two_gateways(platform):
    cfg = GatewayConfig(
        bind=f"tcp://127.0.0.1:{free_ports_in_a_row(2)}", security="token", replicas=2, lease_timeout_s=1.5,
        resume_window_s=30.0, num_cpus=0.25,
    )  # fmt: skip
    actors = start_gateways(
        cfg, list(platform.cfg.tasks), platform.replicas, platform.registry, platform.metrics, platform.data,
        platform.weights,
    )  # fmt: skip
    infos = ray.get([a.ready.remote() for a in actors], timeout=60)
    yield actors, [i["endpoint"] for i in infos], Gateways(actors, platform.registry)
    stop_actors(actors, timeout=10, what="test gateways")


def test_robots_spread_over_two_gateways_both_serve_and_a_lost_gateways_robots_move(platform, two_gateways):
    actors, endpoints, router = two_gateways
    assert endpoints[1].rsplit(":", 1)[1] == str(int(endpoints[0].rsplit(":", 1)[1]) + 1)
    assert sorted(ray.get(router.live.remote())) == [0, 1]
    clients, ids = [], []
    for i in range(4):
        # pinned, half to each (the session's other robots count as gateway 0's load: the least-loaded
        # choice itself is tests/unit/platform/test_registry_keys.py's)
        rec = ray.get(platform.registry.register_robot.remote(f"two-gw-{i}", "reach", *SPECS, gateway=i % 2))
        robot = SimRobot("Reacher-v5", seed=70 + i, control_hz=50.0)
        creds = {**rec, "endpoints": gateway_order(endpoints, rec["gateway"], rec["robot_id"])}
        creds["endpoint"] = creds["endpoints"][0]
        cfg = ClientConfig(link_timeout_s=1.0, hello_retry_s=0.3, redial_after_hellos=2, deadline_s=0.3)
        clients.append(RobotClient.from_registration(robot, {**creds, "curve": None}, config=cfg))
        ids.append(rec["robot_id"])
    assignment = ray.get(platform.registry.robot_gateways.remote(ids))
    assert sorted(assignment.values()) == [0, 0, 1, 1]
    try:
        with FleetThread(clients) as fleet:
            fleet.wait_for(lambda: all(c.counters["replies"] >= 20 for c in clients), 60, "replies from both")
            per_gateway = [ray.get(a.stats.remote()) for a in actors]
            for k, stats in enumerate(per_gateway):
                online = {r["robot_id"] for r in stats["robots"] if r["online"]}
                assert online == {r for r, g in assignment.items() if g == k}
            merged = ray.get(router.stats.remote())
            assert {r["robot_id"] for r in merged["robots"]} == set(ids)
            assert [g["robots_online"] for g in merged["gateways"]] == [2, 2]
            fleet.wait_for(
                lambda: all(s["episodes_committed"] > 0 for s in ray.get([a.stats.remote() for a in actors])),
                60, "episodes committed through both gateways",
            )  # fmt: skip
            # gateway 0 goes for good (its node lost): its robots move to gateway 1, which takes them over
            moved = [c for c in clients if assignment[c.robot_id] == 0]
            ray.kill(actors[0], no_restart=True)
            fleet.wait_for(lambda: all(c.counters["gateway_moves"] >= 1 for c in moved), 30, "robots to move")
            before = {c.robot_id: c.counters["replies"] for c in clients}
            fleet.wait_for(
                lambda: all(c.counters["replies"] > before[c.robot_id] + 20 for c in clients), 60,
                "every robot served by gateway 1",
            )  # fmt: skip
            assert set(ray.get(platform.registry.robot_gateways.remote(ids)).values()) == {1}
            online = {r["robot_id"] for r in ray.get(actors[1].stats.remote())["robots"] if r["online"]}
            assert online == set(ids)
            assert ray.get(router.live.remote()) == [1]
            merged = ray.get(router.stats.remote())  # the router answers with the gateway that is left
            assert [g["up"] for g in merged["gateways"]] == [False, True]
            fleet.wait_for(
                lambda: all(ep.acked for c in clients for ep in list(c.episodes)[:-1]), 60, "acks"
            )  # fmt: skip
        acked = {ep.episode_id for c in clients for ep in c.episodes if ep.acked}
        stored = set(ray.get(platform.data.episode_ids.remote("reach")))
        assert acked and acked <= stored
    finally:
        for robot_id in ids:
            ray.get(platform.registry.delete_robot.remote(robot_id))
        for c in clients:
            c.close()
            c.robot.close()
