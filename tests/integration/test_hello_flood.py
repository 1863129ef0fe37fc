"""Unauthenticated work is bounded: a flood of bad hellos, from one connection or from many, is answered
``rate_limited`` beyond its budget, never reaches the registry more than the shared budget allows, and the
robot already connected keeps being served (its latency during a flood is a benchmark figure:
benchmarks/faults.py)."""

from __future__ import annotations

import time

import ray

from fleetrl.robots import protocol as P
from fleetrl.testing.net import RawRobotSocket, unregistered_socket
from tests.integration.helpers import RunningFleet, register_raw


def _answers(sockets: list[RawRobotSocket], n: int, timeout_s: float = 2.0) -> list[str]:
    codes = []
    for raw in sockets:
        for _ in range(n):
            try:
                codes.append(raw.recv(timeout_s=timeout_s).code)
            except TimeoutError:
                codes.append("no answer")
    return codes


def test_a_hello_flood_is_rate_limited_and_the_connected_robot_is_served(platform):
    with RunningFleet(platform, n=1, hz=50.0, seed=90) as fleet:
        fleet.wait_for(lambda: fleet.total("replies") >= 5, what="first replies")
        before = ray.get(platform.gateway.stats.remote())["refused"]
        creds = register_raw(platform, "flooder")  # a registered robot's connection, gone rogue
        one = RawRobotSocket(platform.endpoint, creds["curve"])
        for _ in range(200):  # 5 hellos looked at, the rest refused at once
            one.send(P.Hello(robot_id=creds["robot_id"], token="nope"))
        codes = _answers([one], 200)
        assert codes.count("unauthorized") <= 6 and codes.count("rate_limited") >= 194, codes[:10]
        strangers = []  # 60 connections with keys nobody registered: refused in the handshake (ZAP)
        for _ in range(60):
            raw = unregistered_socket(platform.endpoint, creds["curve"])
            for i in range(4):  # refused in the handshake, so there may be no peer to queue for
                raw.try_send(P.Hello(robot_id=f"rbt_many{i}", token="nope"))
            strangers.append(raw)
        time.sleep(2.0)
        assert not any(raw.sock.poll(0) for raw in strangers)  # not one answer to any of them
        after = ray.get(platform.gateway.stats.remote())
        asked_registry = after["refused"].get("unauthorized", 0) - before.get("unauthorized", 0)
        assert asked_registry <= 6 and after["zap_denied"] >= 60
        replies = fleet.total("replies")
        fleet.wait_for(
            lambda: fleet.total("replies") >= replies + 20, what="the connected robot to be served"
        )
        assert fleet.clients[0].connected and fleet.clients[0].counters["errors"] == 0
        for raw in [one, *strangers]:
            raw.close()


def test_a_fleet_connecting_at_once_beyond_the_hello_budget_all_gets_in(platform):
    """More new robots than the registry budget's burst connect in the same instant (a gateway restart):
    their CURVE handshakes wait their turn instead of being refused (libzmq would never re-dial a refused
    one), so every robot is served within a few seconds. A second gateway with a small budget (5/s, burst
    10) on the platform's registry and replicas stands for a big fleet against the default one."""
    from fleetrl.robots.client import RobotClient, deregister, register
    from fleetrl.robots.sim import SimRobot
    from fleetrl.testing.net import free_port
    from fleetrl.workers.gateway.actor import gateway_actor
    from tests.conftest import ADMIN_TOKEN
    from tests.integration.helpers import FleetThread, wait_until

    cfg = platform.cfg.gateway.model_copy(
        update={"bind": f"tcp://127.0.0.1:{free_port()}", "hello_registry_per_s": 5.0}
    )
    task = next(t for t in platform.cfg.tasks if t.name == "reach")
    gateway = gateway_actor().remote(
        cfg, [task], {"reach": platform.replicas["reach"]}, platform.registry, curve_keys=platform.curve_keys
    )
    endpoint = ray.get(gateway.ready.remote(), timeout=60)["endpoint"]
    clients = []
    try:
        for i in range(16):
            robot = SimRobot("Reacher-v5", seed=200 + i, control_hz=20.0)
            info = register(platform.rest_url, ADMIN_TOKEN, f"at-once-{i}", "reach", robot)
            clients.append(
                RobotClient.from_registration(robot, info | {"endpoint": endpoint, "endpoints": [endpoint]})
            )
        with FleetThread(clients):
            wait_until(lambda: all(c.counters["replies"] > 0 for c in clients), 30, "every robot served")
        assert ray.get(gateway.stats.remote())["zap_denied"] == 0
    finally:
        for c in clients:
            c.close()
            c.robot.close()
        deregister(platform.rest_url, ADMIN_TOKEN, [c.robot_id for c in clients])
        ray.get(gateway.stop.remote())
        ray.kill(gateway)
