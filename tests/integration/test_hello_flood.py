"""Unauthenticated work is bounded: a flood of bad hellos, from one connection or from many, is answered
``rate_limited`` beyond its budget, never reaches the registry more than the shared budget allows, and the
robot already connected keeps being served (its latency during a flood is a benchmark figure:
benchmarks/faults.py)."""

from __future__ import annotations

import time

import ray

from fleetrl.robots import protocol as P
from fleetrl.testing.net import RawRobotSocket
from tests.integration.helpers import RunningFleet


def _answers(sockets: list[RawRobotSocket], n: int) -> list[str]:
    codes = []
    for raw in sockets:
        for _ in range(n):
            try:
                codes.append(raw.recv(timeout_s=5).code)
            except TimeoutError:
                codes.append("no answer")
    return codes


def test_a_hello_flood_is_rate_limited_and_the_connected_robot_is_served(platform):
    with RunningFleet(platform, n=1, hz=50.0, seed=90) as fleet:
        fleet.wait_for(lambda: fleet.total("replies") >= 5, what="first replies")
        before = ray.get(platform.gateway.stats.remote())["refused"]
        one = RawRobotSocket(platform.endpoint)
        for i in range(200):  # one connection: 5 hellos looked at, the rest refused at once
            one.send(P.Hello(robot_id=f"rbt_flood{i}", token="nope"))
        codes = _answers([one], 200)
        assert codes.count("unauthorized") <= 6 and codes.count("rate_limited") >= 194, codes[:10]
        many = [RawRobotSocket(platform.endpoint) for _ in range(60)]
        t0 = time.monotonic()
        for raw in many:  # 60 connections x 4 unknown robots: 240 registry look-ups asked for at once
            for i in range(4):
                raw.send(P.Hello(robot_id=f"rbt_many{i}", token="nope"))
        codes = _answers(many, 4)
        elapsed = time.monotonic() - t0
        assert "no answer" not in codes and codes.count("rate_limited") > 0
        after = ray.get(platform.gateway.stats.remote())["refused"]
        asked_registry = after.get("unauthorized", 0) - before.get("unauthorized", 0)
        cfg = platform.cfg.gateway
        assert asked_registry <= 6 + 2 * cfg.hello_registry_per_s + cfg.hello_registry_per_s * elapsed
        replies = fleet.total("replies")
        fleet.wait_for(
            lambda: fleet.total("replies") >= replies + 20, what="the connected robot to be served"
        )
        assert fleet.clients[0].connected and fleet.clients[0].counters["errors"] == 0
        for raw in [one, *many]:
            raw.close()
