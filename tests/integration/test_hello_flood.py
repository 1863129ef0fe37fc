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
