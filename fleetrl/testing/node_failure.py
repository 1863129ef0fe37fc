"""A worker node lost under load: the recovery scenario of the scale-out issue, on a multi-node Ray cluster
built on one machine with ``ray.cluster_utils.Cluster``.

Layout (what ``configs/cluster-platform.yaml`` does with real machines, scaled down):

* head: the driver, the control actors and REST;
* nodes A and B (each offers ``robot_gateway`` and ``worker``): one gateway each (``gateway.replicas: 2``),
  one data-server shard each (``data.shards: 2``, SPREAD), the 2-worker learner (``learner.num_workers:
  2``, DDP) wherever Ray Train packs it, and the inference replicas spread over all three nodes.

Two tasks, one per shard (``reach-a`` with the learner, ``reach-b`` without); robots (simulated Reacher
arms, in this process) register over REST and are split over the two gateways. Once the learner has
published a few versions the node of its first worker is removed without warning: a gateway, a shard and
at least one learner worker go with it. We measure how long each robot of the lost gateway takes to be
served by the other one, the time until the learner (resumed from its checkpoint on the surviving node)
publishes again and the lost shard (rebuilt from its store) answers again, and whether any episode a robot
saw acknowledged is missing from the store afterwards.

``python -m fleetrl.testing.node_failure --quick --out result.json`` runs it in a fresh process (a driver
can attach to one Ray at a time, and the test session has its own); ``benchmarks/node_failure.py`` runs
the full-length version.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ADMIN_TOKEN = "node-failure-admin-token"
TASKS = ("reach-a", "reach-b")  # reach-a: shard 0 and the learner; reach-b: shard 1


@dataclass(frozen=True)
class Scenario:
    robots: int = 16
    control_hz: float = 20.0
    versions_before_failure: int = 3  # learner versions published before the node goes
    settle_s: float = 10.0  # robots keep running this long after everything recovered
    timeout_s: float = 240.0
    seed: int = 0
    # How fast Ray declares a silent node dead: period × threshold (Ray's defaults: 3 s × 5).
    health_check_period_ms: int = 3000
    health_check_failure_threshold: int = 5

    @classmethod
    def quick(cls) -> Scenario:
        """The test's version: fewer versions, shorter settling, node death detected in ~2 s."""
        return cls(
            control_hz=10.0,
            versions_before_failure=2,
            settle_s=5.0,
            health_check_period_ms=500,
            health_check_failure_threshold=4,
        )


def _task(name: str, learner: dict | None) -> dict:
    task = {
        "name": name,
        "observation": {"state": {"shape": [10], "dtype": "float32"}},
        "action": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
        "chunk_len": 4,
        "policy": {"family": "flow_chunk", "hidden": [32, 32], "flow_steps": 4},
        # one replica per node (SPREAD); asks for a GPU, runs on CPU here (cpu_fallback)
        "inference": {"replicas": 3, "max_batch": 16, "num_cpus": 0.1, "num_gpus": 1, "spread": True},
    }
    return task | ({"learner": learner} if learner else {})


def platform_config(state_dir: str, rest_port: int, gateway_port: int) -> dict:
    """The platform YAML of this scenario, as a dict: placement by custom resources, restarts on."""
    worker = {"worker": 1}
    learner = {
        "algorithm": "awr",
        "config": {"batch_size": 64},
        "num_workers": 2,
        "publish_every": 5,
        "checkpoint_every": 5,
        "max_updates_per_s": 5,
        "max_failures": -1,
        "num_cpus": 0.5,
        "resources": worker,
    }
    return {
        "name": "node-failure",
        "state_dir": state_dir,
        "rest": {"host": "127.0.0.1", "port": rest_port},
        "gateway": {
            "bind": f"tcp://127.0.0.1:{gateway_port}",  # gateway k: the port + k
            "replicas": 2,
            "resources": {"robot_gateway": 1},
            "num_cpus": 0.5,
            "lease_timeout_s": 30.0,
        },
        "data": {"shards": 2, "shard_of": {TASKS[0]: 0, TASKS[1]: 1}, "resources": worker, "num_cpus": 0.25},
        "tasks": [_task(TASKS[0], learner), _task(TASKS[1], None)],
    }


def _wait(predicate, timeout: float, what: str, poll: float = 0.1) -> float:
    """Wait until ``predicate()`` is truthy; returns the monotonic time it became so."""
    deadline = time.monotonic() + timeout
    while (now := time.monotonic()) < deadline:
        if predicate():
            return now  # it held as of this time (taken before the check)
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _max_gap(times: np.ndarray, start: float, end: float) -> float:
    """Longest interval without an action chunk in [start, end] (the window's edges count as events)."""
    inside = times[(times >= start) & (times <= end)]
    edges = np.concatenate([[start], inside, [end]])
    return float(np.diff(edges).max())


@dataclass
class _Robots:
    """The scenario's simulated robots, run by one ``FleetRunner`` on a background thread."""

    stop: threading.Event = field(default_factory=threading.Event)
    clients: list[Any] = field(default_factory=list)
    gateway: dict[str, int] = field(default_factory=dict)  # robot id -> the gateway registration gave it
    runner: Any = None
    thread: threading.Thread | None = None
    started: float = 0.0  # monotonic time the runner started

    def start(self, rest_url: str, scenario: Scenario) -> None:
        """Register ``scenario.robots`` Reacher arms over REST, half for each task, and start driving them."""
        from fleetrl.robots.client import ClientConfig, FleetRunner, RobotClient, register
        from fleetrl.robots.sim import SimRobot

        for i in range(scenario.robots):
            robot = SimRobot("Reacher-v5", seed=scenario.seed + i, control_hz=scenario.control_hz)
            info = register(rest_url, ADMIN_TOKEN, f"nf-{i}", TASKS[i % 2], robot)
            self.gateway[info["robot_id"]] = info["gateway"]
            self.clients.append(
                RobotClient.from_registration(
                    robot, info, config=ClientConfig(keep_episodes=100_000, keep_replies=1_000_000)
                )
            )
        self.runner = FleetRunner(self.clients)
        self.thread = threading.Thread(target=self.runner.run, kwargs={"stop": self.stop}, daemon=True)
        self.thread.start()
        self.started = time.monotonic()

    def all_acked(self) -> bool:
        """Every ended episode acknowledged by the platform."""
        return all(ep.acked for c in self.clients for ep in c.episodes if ep.outcome is not None)

    def moved(self, gateway: int) -> bool:
        """Every robot that ``gateway`` served is welcomed by another gateway and got a chunk from it."""
        return all(
            c.connected and c.endpoint != c.connection.endpoints[0] and c.counters["replies"] > 0
            for c in self.clients
            if self.gateway[c.robot_id] == gateway
        )

    def halt(self) -> None:
        """Stop driving the robots (their records stay readable)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)


@dataclass(frozen=True)
class _Timeline:
    """Monotonic times of the scenario's events."""

    robots_started: float
    failure: float
    robots_back: float  # every robot of the lost gateway served by the other one
    data_back: float
    learner_back: float
    end: float
    all_acked: float  # every episode ended by then was acked (robots were halted just after)


def _start_cluster(scenario: Scenario) -> tuple[Any, list[Any]]:
    """A head (with the scenario's node health check) and nodes A and B, each offering a gateway's and
    workers' resources."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,
            "include_dashboard": False,
            "_system_config": {
                "health_check_period_ms": scenario.health_check_period_ms,
                "health_check_failure_threshold": scenario.health_check_failure_threshold,
            },
        },
    )
    nodes = [cluster.add_node(num_cpus=4, resources={"robot_gateway": 1, "worker": 4}) for _ in range(2)]
    return cluster, nodes


def _version(platform: Any) -> int:
    """The newest weight version published for the learning task (-1: none yet)."""
    import ray

    latest = ray.get(platform.weights.latest.remote(TASKS[0]))
    return -1 if latest is None else latest[0]


def _placement(platform: Any, learner: Any, head: str, nodes: list[Any]) -> dict[str, Any]:
    """The node of every node and actor the scenario cares about."""
    import ray

    return {
        "head": head,
        "nodes": [n.node_id for n in nodes],
        "gateways": [g["node_id"] for g in ray.get([a.ready.remote() for a in platform.gateways])],
        "data_shards": [d["node_id"] for d in ray.get([a.ready.remote() for a in platform.data_shards])],
        "learner_worker": ray.get(learner.status.remote())["node_id"],
        "replicas": {t: ray.get([r.node_id.remote() for r in platform.replicas[t]]) for t in TASKS},
    }


def _ran_on(placement: dict[str, Any], node: str) -> list[str]:
    """What ``node`` runs: gateways, data shards, the learner's first worker and replicas placed there."""
    on = [f"gateway {k}" for k, n in enumerate(placement["gateways"]) if n == node]
    on += [f"data shard {k}" for k, n in enumerate(placement["data_shards"]) if n == node]
    on += ["learner worker"] if placement["learner_worker"] == node else []
    return on + [
        f"replica {t}/{i}" for t, ns in placement["replicas"].items() for i, n in enumerate(ns) if n == node
    ]


def _fail_node(
    cluster: Any, node: Any, placement: dict[str, Any], platform: Any, robots: _Robots, scenario: Scenario,
    log: Callable[[str], Any],
) -> _Timeline:  # fmt: skip
    """Remove ``node`` without warning, wait for its gateway's robots to be served by the other gateway,
    its shard and the learner to come back elsewhere, let the robots run ``settle_s`` more, then wait until
    every ended episode is acked and stop them."""
    import ray

    lost_gateway = placement["gateways"].index(node.node_id)
    lost_shard = placement["data_shards"].index(node.node_id)
    t_fail, wall_fail = time.monotonic(), time.time()
    cluster.remove_node(node, allow_graceful=False)

    def published_after_failure() -> bool:
        """A version published after the removal, by the learner reporting from a live node: a publish the
        removed worker had in flight can land after it, and its last status still names the removed node."""
        latest = ray.get(platform.weights.latest.remote(TASKS[0]))
        if latest is None or latest[2] <= wall_fail:
            return False
        return ray.get(platform.learner(TASKS[0]).status.remote()).get("node_id") not in (None, node.node_id)

    def data_back() -> bool:
        try:
            where = ray.get(platform.data_shards[lost_shard].ready.remote(), timeout=2)["node_id"]
        except Exception:  # noqa: BLE001 - still restarting
            return False
        return where != node.node_id

    t_robots = _wait(lambda: robots.moved(lost_gateway), scenario.timeout_s, "robots to move")
    log(f"robots of gateway {lost_gateway} served by the other after {t_robots - t_fail:.1f} s")
    t_data = _wait(data_back, scenario.timeout_s, "the lost data shard to come back", poll=0.2)
    log(f"data shard {lost_shard} back after {t_data - t_fail:.1f} s")
    t_learner = _wait(published_after_failure, scenario.timeout_s, "the learner to publish again", poll=0.2)
    log(f"learner published again after {t_learner - t_fail:.1f} s (version {_version(platform)})")
    time.sleep(scenario.settle_s)
    t_end = time.monotonic()
    # Every ended episode gets acked (robots re-send what the gateway lacked); then stop the robots.
    try:
        t_acked = _wait(robots.all_acked, 60.0, "every ended episode to be acked", poll=0.5)
    finally:
        robots.halt()
    return _Timeline(robots.started, t_fail, t_robots, t_data, t_learner, t_end, t_acked)


def _served_again_s(times: Any, failure: float, end: float) -> float:
    """Seconds from the failure until the chunk that ended the robot's longest wait after it (replies
    already on their way when the node went do not count as being served again)."""
    inside = np.asarray([t for t in times if failure <= t <= end])
    edges = np.concatenate([[failure], inside, [end]])
    longest = int(np.argmax(np.diff(edges)))
    return float(edges[longest + 1] - failure)


def _timing(robots: _Robots, lost_gateway: int, tl: _Timeline) -> dict[str, Any]:
    """What the robots saw: how long those of the lost gateway went without a chunk before the other served
    them, action-chunk gaps around the failure and before it, round trips after recovery."""
    clients = robots.clients
    moved = [c for c in clients if robots.gateway[c.robot_id] == lost_gateway]
    reassigned = [_served_again_s(c.reply_times, tl.failure, tl.end) for c in moved]
    gaps = [_max_gap(np.asarray(c.reply_times), tl.failure - 1.0, tl.end) for c in clients]
    before = [_max_gap(np.asarray(c.reply_times), tl.robots_started + 5.0, tl.failure) for c in clients]
    recent_rtt = [
        rtt for c in clients for (rtt, _), t in zip(c.replies, c.reply_times, strict=True) if t > tl.end - 5.0
    ]
    return {
        "robots_reassigned": len(moved),
        "robots_reassigned_s": {
            "p50": float(np.median(reassigned)),
            "max": float(np.max(reassigned)),
            "per_robot": reassigned,
        },
        "gateway_moves": sum(c.counters["gateway_moves"] for c in moved),
        "action_gap_s": {"p50": float(np.median(gaps)), "max": float(np.max(gaps)), "per_robot": gaps},
        "action_gap_before_failure_s": {"p50": float(np.median(before)), "max": float(np.max(before))},
        "latency_after_recovery_ms": {
            "p50": float(np.percentile(recent_rtt, 50)),
            "p99": float(np.percentile(recent_rtt, 99)),
        },
    }


def _result(
    scenario: Scenario,
    platform: Any,
    learner: Any,
    robots: _Robots,
    placement: dict[str, Any],
    failed: str,
    version_at_failure: int,
    tl: _Timeline,
) -> dict[str, Any]:
    """The scenario's result JSON."""
    import ray

    clients = robots.clients
    acked = {ep.episode_id for c in clients for ep in c.episodes if ep.acked}
    # an episode that ended between the last all-acked check and the halt had no time to be acked: in flight
    ended = [ep for c in clients for ep in c.episodes if ep.outcome is not None and ep.steps]
    unacked = [ep.episode_id for ep in ended if not ep.acked and ep.steps[-1].action_start < tl.all_acked]
    stored = {e for task in TASKS for e in ray.get(platform.data.episode_ids.remote(task))}
    final = ray.get(learner.status.remote())
    lost_gateway = placement["gateways"].index(failed)
    gateways_after = ray.get(platform.registry.robot_gateways.remote([c.robot_id for c in clients]))
    return {
        "scenario": dataclasses.asdict(scenario),
        "robots": scenario.robots,
        "control_hz": scenario.control_hz,
        "gateways": len(platform.gateways),
        "data_shards": len(platform.data_shards),
        "learner_workers": final.get("workers"),
        "placement": placement,
        "failed_node": failed,
        "removed_node_ran": _ran_on(placement, failed),
        "robots_per_gateway_before": [sum(g == k for g in robots.gateway.values()) for k in range(2)],
        "robots_per_gateway_after": [sum(g == k for g in gateways_after.values()) for k in range(2)],
        "version_at_failure": version_at_failure,
        "version_after": _version(platform),
        "learner_restored_step": final.get("restored_step"),
        "learner_node_after": final.get("node_id"),
        "data_shard_nodes_after": [
            d["node_id"] for d in ray.get([a.ready.remote() for a in platform.data_shards])
        ],
        "replies_after_recovery": [
            sum(tl.learner_back <= t <= tl.end for t in c.reply_times) for c in clients
        ],
        **_timing(robots, lost_gateway, tl),
        "episodes_acked": len(acked),
        "episodes_lost": len(acked - stored),
        "episodes_unacked_at_end": len(unacked),
        "learner_resume_s": tl.learner_back - tl.failure,
        "data_server_recovery_s": tl.data_back - tl.failure,
    }


def run(scenario: Scenario, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run the scenario once on a fresh local cluster; returns its result JSON (see ``main``)."""
    import ray

    from fleetrl.platform.config import parse_config
    from fleetrl.platform.platform import Platform
    from fleetrl.testing.net import free_port, free_ports_in_a_row

    os.environ["FLEETRL_ADMIN_TOKEN"] = ADMIN_TOKEN
    state = tempfile.mkdtemp(prefix="fleetrl-node-failure-")
    cluster, nodes = _start_cluster(scenario)
    cfg = parse_config(platform_config(state, free_port(), free_ports_in_a_row(2)))
    cfg = cfg.model_copy(update={"ray_address": cluster.address})
    platform = Platform(cfg)
    robots = _Robots()
    try:
        t0 = time.monotonic()
        platform.start(timeout=scenario.timeout_s)
        log(f"platform up on a 3-node cluster in {time.monotonic() - t0:.1f} s")
        head_id = ray.get_runtime_context().get_node_id()
        learner = platform.learner(TASKS[0])
        _wait(lambda: ray.get(learner.status.remote()).get("node_id"), scenario.timeout_s, "the learner")
        robots.start(platform.rest_url, scenario)
        _wait(
            lambda: _version(platform) >= scenario.versions_before_failure,
            scenario.timeout_s,
            f"learner version {scenario.versions_before_failure}",
            poll=0.5,
        )
        placement = _placement(platform, learner, head_id, nodes)
        failed = placement["learner_worker"]
        node = next(n for n in nodes if n.node_id == failed)
        log(
            f"version {_version(platform)} published; removing the learner's node (runs: {', '.join(_ran_on(placement, failed))})"
        )
        version_at_failure = _version(platform)
        timeline = _fail_node(cluster, node, placement, platform, robots, scenario, log)
        return _result(scenario, platform, learner, robots, placement, failed, version_at_failure, timeline)
    finally:
        robots.halt()
        if robots.runner is not None:
            robots.runner.close()
        try:
            platform.stop()
        finally:
            ray.shutdown()
            cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter run (the test's)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    result = run(Scenario.quick() if args.quick else Scenario())
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"robots moved to the other gateway in p50 {result['robots_reassigned_s']['p50']:.1f} s, max "
        f"{result['robots_reassigned_s']['max']:.1f} s; learner resumed in {result['learner_resume_s']:.1f} s; "
        f"episodes lost {result['episodes_lost']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
