"""Several gateways, the parts that need no Ray: each one's address and share of replicas, the order of a
robot's endpoints, how their stats merge, and which tasks they refuse."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.platform.config import parse_config
from fleetrl.serving.routes.robots import gateway_order
from fleetrl.workers import metrics_server
from fleetrl.workers.gateway.gateways import merge_stats
from fleetrl.workers.gateway.session import GatewayConfig, sorted_percentile
from fleetrl.workers.metrics_server import MetricsBuffer, MetricsServer


def test_each_gateway_binds_its_own_port_and_tells_robots_its_own_endpoint():
    cfg = GatewayConfig(bind="tcp://0.0.0.0:5555", replicas=3)
    assert [cfg.bind_of(k) for k in range(3)] == [
        "tcp://0.0.0.0:5555",
        "tcp://0.0.0.0:5556",
        "tcp://0.0.0.0:5557",
    ]
    assert cfg.public_endpoint("10.0.0.7", 2) == "tcp://10.0.0.7:5557"
    nat = GatewayConfig(bind="tcp://0.0.0.0:5555", advertise="tcp://robots.lab:7000", replicas=2)
    assert nat.public_endpoint("10.0.0.7", 1) == "tcp://robots.lab:7001"
    ipc = GatewayConfig(bind="ipc:///tmp/gw", security="token", replicas=2)
    assert ipc.bind_of(1) == "ipc:///tmp/gw-1"


def test_replicas_are_split_between_gateways_unless_there_are_fewer_than_gateways():
    cfg = GatewayConfig(replicas=2)
    assert [cfg.replica_indices(k, 5) for k in range(2)] == [[0, 2, 4], [1, 3]]
    assert [cfg.replica_indices(k, 1) for k in range(2)] == [[0], [0]]  # one replica: both use it
    shared = GatewayConfig(replicas=2, split_replicas=False)
    assert shared.replica_indices(1, 4) == [0, 1, 2, 3]
    assert GatewayConfig().replica_indices(0, 3) == [0, 1, 2]


def test_a_robot_hears_its_own_gateway_first_and_the_others_in_an_order_of_its_own():
    endpoints = [f"tcp://h:{5555 + k}" for k in range(4)]
    orders = {tuple(gateway_order(endpoints, 1, f"rbt_{i}")) for i in range(32)}
    assert all(order[0] == endpoints[1] and sorted(order) == endpoints for order in orders)
    # the robots of a gateway that goes away do not all move to the same next one
    assert len({order[1] for order in orders}) == 3
    assert gateway_order(endpoints[:1], 0, "rbt_x") == endpoints[:1]


def _stats(index: int, robots: list[tuple[str, bool]], queued: int) -> dict:
    return {
        "index": index,
        "endpoint": f"tcp://h:{5555 + index}",
        "robots": [{"robot_id": r, "online": up, "task": "reach", "gateway": index} for r, up in robots],
        "refused": {"bad_frame": 1},
        "zap_denied": 2,
        "episodes_committed": 10 * (index + 1),
        "rollouts": {"reach": {"mode": "follow"}},
        "pools": {"reach": {"queue_depth": queued, "idle": 1, "busy": 0}},
    }


def test_the_gateways_stats_merge_into_one_answer_that_names_each_gateway():
    merged = merge_stats(
        [(0, _stats(0, [("a", True)], 3)), (2, _stats(2, [("b", True), ("c", False)], 1))], 3
    )
    assert [r["robot_id"] for r in merged["robots"]] == ["a", "b", "c"]
    assert merged["refused"] == {"bad_frame": 2} and merged["zap_denied"] == 4
    assert merged["episodes_committed"] == 40
    assert merged["pools"] == {"reach": {"queue_depth": 4, "idle": 2, "busy": 0}}
    assert merged["gateways"] == [
        {"index": 0, "up": True, "endpoint": "tcp://h:5555", "robots_online": 1},
        {"index": 1, "up": False, "endpoint": None, "robots_online": 0},
        {"index": 2, "up": True, "endpoint": "tcp://h:5557", "robots_online": 1},
    ]


def test_a_gauge_that_several_gateways_report_is_their_sum_without_those_gone_silent(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(metrics_server.time, "monotonic", lambda: clock[0])
    server = MetricsServer()
    server.ingest([], [("robots_online", ("reach",), 3.0)], "gateway-0")
    server.ingest([], [("robots_online", ("reach",), 5.0)], "gateway-1")
    server.ingest([], [("robots_online", ("reach",), 4.0)], "gateway-0")
    assert b'fleetrl_robots_online{task="reach"} 9.0' in server.render()
    clock[0] += metrics_server.STALE_GAUGE_S + 1  # gateway-1 is gone: its robots are no longer counted
    server.ingest([], [("robots_online", ("reach",), 6.0)], "gateway-0")
    assert b'fleetrl_robots_online{task="reach"} 6.0' in server.render()


def test_canary_rollout_needs_a_single_gateway():
    task = {
        "name": "reach",
        "observation": {"state": {"shape": [10], "dtype": "float32"}},
        "action": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
        "rollout": {"mode": "canary"},
    }
    parse_config({"tasks": [task], "gateway": {"replicas": 1}})
    with pytest.raises(ValueError, match="rollout mode canary needs gateway.replicas 1"):
        parse_config({"tasks": [task], "gateway": {"replicas": 2}})


def test_a_metrics_flush_sums_counters_and_carries_every_observation():
    """``MetricsBuffer`` sends one entry per series per flush; the server still counts every increment and
    every observed value (histogram count, sum and its percentile window)."""
    buffer, server = MetricsBuffer(), MetricsServer()
    for value in (0.001, 0.002, 0.004):
        buffer.observe("queue_wait_seconds", ("reach",), value)
        buffer.inc("observations_total", ("reach",))
    events, gauges = buffer.drain()
    assert sorted(events) == [
        ("observations_total", ("reach",), 3.0),
        ("queue_wait_seconds", ("reach",), [0.001, 0.002, 0.004]),
    ]
    assert buffer.drain() == ([], [])  # drained: nothing is sent twice
    server.ingest(events, gauges)
    server.ingest([("queue_wait_seconds", ("reach",), 0.008)], [])  # one value, as older senders send
    text = server.render()
    assert b'fleetrl_observations_total{task="reach"} 3.0' in text
    assert b'fleetrl_queue_wait_seconds_count{task="reach"} 4.0' in text
    window = server.percentiles("queue_wait_seconds", ("reach",), (50,))
    assert window["n"] == 4 and window["p50"] == pytest.approx(0.003) and window["max"] == 0.008


def test_the_robot_tables_latency_percentiles_are_numpys():
    values = sorted([3.0, 1.0, 7.5, 2.25, 10.0, 4.0, 0.5])
    for q in (0, 50, 90, 99, 100):
        assert sorted_percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert sorted_percentile([4.0], 99) == 4.0
