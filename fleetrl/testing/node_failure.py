"""A worker node lost under load: the recovery scenario of the cluster issue, on a multi-node Ray cluster
built on one machine with ``ray.cluster_utils.Cluster``.

Layout (what ``configs/cluster.yaml`` does with real machines):

* head: the driver, the control actors, REST and the robot gateway (custom resource ``robot_gateway``);
* node A (``worker``): the data server, the learner's Ray Train worker and, spread, one inference replica;
* node B (``worker``): joins after the platform is up, standing by, like a node the autoscaler adds.

Robots (simulated Reacher arms, in this process) run PPO on the platform over ZeroMQ; once the learner
has published a few versions node A is removed without warning. We measure each robot's longest gap
between action chunks, the time until the learner (resumed from its checkpoint on B) publishes again,
the time until the data server (rebuilt from its store on B) answers again, and whether any episode a
robot saw acknowledged is missing from the store afterwards.

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


@dataclass(frozen=True)
class Scenario:
    robots: int = 4
    control_hz: float = 25.0
    versions_before_failure: int = 3  # learner versions published before node A goes
    settle_s: float = 10.0  # robots keep running this long after everything recovered
    steps_per_update: int = 256
    timeout_s: float = 240.0
    seed: int = 0
    # How fast Ray declares a silent node dead: period × threshold (Ray's defaults: 3 s × 5).
    health_check_period_ms: int = 3000
    health_check_failure_threshold: int = 5

    @classmethod
    def quick(cls) -> Scenario:
        """The test's version: fewer versions, shorter settling, node death detected in ~2 s."""
        return cls(
            versions_before_failure=2,
            settle_s=5.0,
            health_check_period_ms=500,
            health_check_failure_threshold=4,
        )


def platform_config(state_dir: str, rest_port: int, gateway_port: int, steps_per_update: int) -> dict:
    """The platform YAML of this scenario, as a dict: placement by custom resources, restarts on."""
    worker = {"worker": 1}
    return {
        "name": "node-failure",
        "state_dir": state_dir,
        "rest": {"host": "127.0.0.1", "port": rest_port},
        "gateway": {
            "bind": f"tcp://127.0.0.1:{gateway_port}",
            "resources": {"robot_gateway": 1},
            "lease_timeout_s": 30.0,
        },
        "data": {"resources": worker, "num_cpus": 0.25},
        "tasks": [
            {
                "name": "reach",
                "observation": {"state": {"shape": [10], "dtype": "float32"}},
                "action": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
                "chunk_len": 4,
                "policy": {"family": "gaussian_mlp", "hidden": [64, 64], "init_log_std": -0.5},
                # one replica per node (SPREAD); asks for a GPU, runs on CPU here (cpu_fallback)
                "inference": {
                    "replicas": 2,
                    "max_batch": 16,
                    "num_cpus": 0.25,
                    "num_gpus": 1,
                    "spread": True,
                },
                "learner": {
                    "algorithm": "ppo",
                    "config": {"epochs": 2, "batch_size": 128, "steps_per_update": steps_per_update},
                    "publish_every": 1,
                    "checkpoint_every": 1,
                    "max_failures": -1,
                    "num_cpus": 0.5,
                    "resources": worker,
                },
            }
        ],
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
    runner: Any = None
    thread: threading.Thread | None = None
    started: float = 0.0  # monotonic time the runner started

    def start(self, rest_url: str, scenario: Scenario) -> None:
        """Register ``scenario.robots`` Reacher arms over REST and start driving them."""
        from fleetrl.robots.client import ClientConfig, FleetRunner, RobotClient, register
        from fleetrl.robots.sim import SimRobot

        for i in range(scenario.robots):
            robot = SimRobot("Reacher-v5", seed=scenario.seed + i, control_hz=scenario.control_hz)
            info = register(rest_url, ADMIN_TOKEN, f"nf-{i}", "reach", robot)
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
    data_back: float
    learner_back: float
    end: float
    all_acked: float  # every episode ended by then was acked (robots were halted just after)


def _start_cluster(scenario: Scenario) -> tuple[Any, Any]:
    """A head (with the gateway's resource and the scenario's node health check) and node A."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,
            "resources": {"robot_gateway": 1},
            "include_dashboard": False,
            "_system_config": {
                "health_check_period_ms": scenario.health_check_period_ms,
                "health_check_failure_threshold": scenario.health_check_failure_threshold,
            },
        },
    )
    return cluster, cluster.add_node(num_cpus=2, resources={"worker": 4})


def _version(platform: Any) -> int:
    """The newest weight version published for the task (-1: none yet)."""
    import ray

    latest = ray.get(platform.weights.latest.remote("reach"))
    return -1 if latest is None else latest[0]


def _placement(platform: Any, learner: Any, head: str, node_a: Any, node_b: Any) -> dict[str, Any]:
    """The node of every node and actor the scenario cares about."""
    import ray

    learner_node = ray.get(learner.status.remote())["node_id"]
    return {
        "head": head,
        "node_a": node_a.node_id,
        "node_b": node_b.node_id,
        "gateway": ray.get(platform.gateway.ready.remote())["node_id"],
        "data": ray.get(platform.data.ready.remote())["node_id"],
        "learner_worker": learner_node,
        "replicas": ray.get([r.node_id.remote() for r in platform.replicas["reach"]]),
    }


def _ran_on_node_a(placement: dict[str, Any]) -> list[str]:
    """What node A runs: the gateway, data server, learner worker and replicas placed there."""
    on_a = [
        k
        for k, v in placement.items()
        if k.startswith(("gateway", "data", "learner")) and v == placement["node_a"]
    ]
    return on_a + [f"replica {i}" for i, n in enumerate(placement["replicas"]) if n == placement["node_a"]]


def _fail_node_a(
    cluster: Any, node_a: Any, platform: Any, robots: _Robots, scenario: Scenario, log: Callable[[str], Any]
) -> _Timeline:
    """Remove node A without warning, wait for the data server and the learner to come back elsewhere,
    let the robots run ``settle_s`` more, then wait until every ended episode is acked and stop them."""
    import ray

    t_fail, wall_fail = time.monotonic(), time.time()
    cluster.remove_node(node_a, allow_graceful=False)

    def published_after_failure() -> bool:
        latest = ray.get(platform.weights.latest.remote("reach"))
        return latest is not None and latest[2] > wall_fail

    def data_back() -> bool:
        try:
            return ray.get(platform.data.ready.remote(), timeout=2)["node_id"] != node_a.node_id
        except Exception:  # noqa: BLE001 - still restarting
            return False

    t_data = _wait(data_back, scenario.timeout_s, "the data server to come back", poll=0.2)
    log(f"data server back after {t_data - t_fail:.1f} s")
    t_learner = _wait(published_after_failure, scenario.timeout_s, "the learner to publish again", poll=0.2)
    log(f"learner published again after {t_learner - t_fail:.1f} s (version {_version(platform)})")
    time.sleep(scenario.settle_s)
    t_end = time.monotonic()
    # Every ended episode gets acked (robots re-send what the gateway lacked); then stop the robots.
    try:
        t_acked = _wait(robots.all_acked, 60.0, "every ended episode to be acked", poll=0.5)
    finally:
        robots.halt()
    return _Timeline(robots.started, t_fail, t_data, t_learner, t_end, t_acked)


def _timing(clients: list[Any], tl: _Timeline) -> dict[str, Any]:
    """What the robots saw: action-chunk gaps around the failure and before it, reply intervals before it,
    round trips after recovery."""
    gaps = [_max_gap(np.asarray(c.reply_times), tl.failure - 1.0, tl.end) for c in clients]
    before = [_max_gap(np.asarray(c.reply_times), tl.robots_started + 5.0, tl.failure) for c in clients]
    intervals = np.concatenate(
        [np.diff([t for t in c.reply_times if tl.robots_started + 5.0 <= t <= tl.failure]) for c in clients]
    )
    recent_rtt = [
        rtt for c in clients for (rtt, _), t in zip(c.replies, c.reply_times, strict=True) if t > tl.end - 5.0
    ]
    return {
        "action_gap_s": {"p50": float(np.median(gaps)), "max": float(np.max(gaps)), "per_robot": gaps},
        "action_gap_before_failure_s": {"p50": float(np.median(before)), "max": float(np.max(before))},
        "reply_interval_before_failure_s": {
            "p50": float(np.percentile(intervals, 50)),
            "p99": float(np.percentile(intervals, 99)),
        },
        "latency_after_recovery_ms": {
            "p50": float(np.percentile(recent_rtt, 50)),
            "p99": float(np.percentile(recent_rtt, 99)),
        },
    }


def _result(
    scenario: Scenario,
    platform: Any,
    learner: Any,
    clients: list[Any],
    placement: dict[str, Any],
    version_at_failure: int,
    tl: _Timeline,
) -> dict[str, Any]:
    """The scenario's result JSON."""
    import ray

    acked = {ep.episode_id for c in clients for ep in c.episodes if ep.acked}
    # an episode that ended between the last all-acked check and the halt had no time to be acked: in flight
    ended = [ep for c in clients for ep in c.episodes if ep.outcome is not None and ep.steps]
    unacked = [ep.episode_id for ep in ended if not ep.acked and ep.steps[-1].action_start < tl.all_acked]
    stored = set(ray.get(platform.data.episode_ids.remote("reach")))
    final = ray.get(learner.status.remote())
    data_node_after = ray.get(platform.data.ready.remote())["node_id"]
    return {
        "scenario": dataclasses.asdict(scenario),
        "robots": scenario.robots,
        "control_hz": scenario.control_hz,
        "placement": placement,
        "removed_node_ran": _ran_on_node_a(placement),
        "version_at_failure": version_at_failure,
        "version_after": _version(platform),
        "learner_restored_step": final.get("restored_step"),
        "learner_node_after": final.get("node_id"),
        "data_node_after": data_node_after,
        "replies_after_recovery": [
            sum(tl.learner_back <= t <= tl.end for t in c.reply_times) for c in clients
        ],
        **_timing(clients, tl),
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
    from fleetrl.testing.net import free_port

    os.environ["FLEETRL_ADMIN_TOKEN"] = ADMIN_TOKEN
    state = tempfile.mkdtemp(prefix="fleetrl-node-failure-")
    cluster, node_a = _start_cluster(scenario)
    cfg = parse_config(platform_config(state, free_port(), free_port(), scenario.steps_per_update))
    cfg = cfg.model_copy(update={"ray_address": cluster.address})
    platform = Platform(cfg)
    robots = _Robots()
    try:
        t0 = time.monotonic()
        platform.start(timeout=scenario.timeout_s)
        log(f"platform up on a 2-node cluster in {time.monotonic() - t0:.1f} s")
        head_id = ray.get_runtime_context().get_node_id()
        learner = platform.learner("reach")
        # the learner's Ray Train worker starts in the background: let it land (on A) before B exists
        _wait(lambda: ray.get(learner.status.remote()).get("node_id"), scenario.timeout_s, "the learner")
        node_b = cluster.add_node(num_cpus=2, resources={"worker": 4})  # standby capacity
        robots.start(platform.rest_url, scenario)
        _wait(
            lambda: _version(platform) >= scenario.versions_before_failure,
            scenario.timeout_s,
            f"learner version {scenario.versions_before_failure}",
            poll=0.5,
        )
        placement = _placement(platform, learner, head_id, node_a, node_b)
        on_a = _ran_on_node_a(placement)
        log(f"version {_version(platform)} published; removing node A (runs: {', '.join(on_a) or 'nothing'})")
        version_at_failure = _version(platform)
        timeline = _fail_node_a(cluster, node_a, platform, robots, scenario, log)
        return _result(scenario, platform, learner, robots.clients, placement, version_at_failure, timeline)
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
        f"action gap p50 {result['action_gap_s']['p50']:.2f} s, max {result['action_gap_s']['max']:.2f} s; "
        f"learner resumed in {result['learner_resume_s']:.1f} s; episodes lost {result['episodes_lost']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
