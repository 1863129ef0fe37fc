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
from dataclasses import dataclass
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
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _max_gap(times: np.ndarray, start: float, end: float) -> float:
    """Longest interval without an action chunk in [start, end] (the window's edges count as events)."""
    inside = times[(times >= start) & (times <= end)]
    edges = np.concatenate([[start], inside, [end]])
    return float(np.diff(edges).max())


def run(scenario: Scenario, log=print) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from fleetrl.platform.config import parse_config
    from fleetrl.platform.platform import Platform
    from fleetrl.robots.client import ClientConfig, FleetRunner, RobotClient, register
    from fleetrl.robots.sim import SimRobot
    from fleetrl.testing.net import free_port

    os.environ["FLEETRL_ADMIN_TOKEN"] = ADMIN_TOKEN
    state = tempfile.mkdtemp(prefix="fleetrl-node-failure-")
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
    node_a = cluster.add_node(num_cpus=2, resources={"worker": 4})
    cfg = parse_config(platform_config(state, free_port(), free_port(), scenario.steps_per_update))
    cfg = cfg.model_copy(update={"ray_address": cluster.address})
    platform = Platform(cfg)
    stop, runner, thread = threading.Event(), None, None
    try:
        t0 = time.monotonic()
        platform.start(timeout=scenario.timeout_s)
        log(f"platform up on a 2-node cluster in {time.monotonic() - t0:.1f} s")
        head_id = ray.get_runtime_context().get_node_id()
        learner = platform.learner("reach")
        # the learner's Ray Train worker starts in the background: let it land (on A) before B exists
        _wait(lambda: ray.get(learner.status.remote()).get("node_id"), scenario.timeout_s, "the learner")
        node_b = cluster.add_node(num_cpus=2, resources={"worker": 4})  # standby capacity

        clients = []
        for i in range(scenario.robots):
            robot = SimRobot("Reacher-v5", seed=scenario.seed + i, control_hz=scenario.control_hz)
            info = register(platform.rest_url, ADMIN_TOKEN, f"nf-{i}", "reach", robot)
            clients.append(
                RobotClient(
                    robot,
                    info["robot_id"],
                    info["token"],
                    info["endpoint"],
                    config=ClientConfig(keep_episodes=100_000, keep_replies=1_000_000),
                )
            )
        runner = FleetRunner(clients)
        thread = threading.Thread(target=runner.run, kwargs={"stop": stop}, daemon=True)
        thread.start()
        t_robots = time.monotonic()

        def version() -> int:
            latest = ray.get(platform.weights.latest.remote("reach"))
            return -1 if latest is None else latest[0]

        _wait(
            lambda: version() >= scenario.versions_before_failure,
            scenario.timeout_s,
            f"learner version {scenario.versions_before_failure}",
            poll=0.5,
        )
        status = ray.get(learner.status.remote())
        placement = {
            "head": head_id,
            "node_a": node_a.node_id,
            "node_b": node_b.node_id,
            "gateway": ray.get(platform.gateway.ready.remote())["node_id"],
            "data": ray.get(platform.data.ready.remote())["node_id"],
            "learner_worker": status["node_id"],
            "replicas": ray.get([r.node_id.remote() for r in platform.replicas["reach"]]),
        }
        on_a = [
            k
            for k, v in placement.items()
            if k.startswith(("gateway", "data", "learner")) and v == placement["node_a"]
        ]
        on_a += [f"replica {i}" for i, n in enumerate(placement["replicas"]) if n == placement["node_a"]]
        log(f"version {version()} published; removing node A (runs: {', '.join(on_a) or 'nothing'})")

        version_at_failure = version()
        t_fail, wall_fail = time.monotonic(), time.time()
        cluster.remove_node(node_a, allow_graceful=False)

        def published_after_failure() -> bool:
            latest = ray.get(platform.weights.latest.remote("reach"))
            return latest is not None and latest[2] > wall_fail

        def data_back() -> bool:
            try:
                return ray.get(platform.data.ready.remote(), timeout=2)["node_id"] != placement["node_a"]
            except Exception:  # noqa: BLE001 - still restarting
                return False

        t_data = _wait(data_back, scenario.timeout_s, "the data server to come back", poll=0.2)
        log(f"data server back after {t_data - t_fail:.1f} s")
        t_learner = _wait(
            published_after_failure, scenario.timeout_s, "the learner to publish again", poll=0.2
        )
        log(f"learner published again after {t_learner - t_fail:.1f} s (version {version()})")
        time.sleep(scenario.settle_s)
        t_end = time.monotonic()

        # Every ended episode gets acked (robots re-send what the gateway lacked); then stop the robots.
        def all_acked() -> bool:
            return all(ep.acked for c in clients for ep in c.episodes if ep.outcome is not None)

        try:
            _wait(all_acked, 60.0, "every ended episode to be acked", poll=0.5)
        finally:
            stop.set()
            thread.join(timeout=10)

        gaps = [_max_gap(np.asarray(c.reply_times), t_fail - 1.0, t_end) for c in clients]
        before = [_max_gap(np.asarray(c.reply_times), t_robots + 5.0, t_fail) for c in clients]
        intervals = np.concatenate(
            [np.diff([t for t in c.reply_times if t_robots + 5.0 <= t <= t_fail]) for c in clients]
        )
        recent_rtt = [
            rtt
            for c in clients
            for (rtt, _), t in zip(c.replies, c.reply_times, strict=True)
            if t > t_end - 5.0
        ]
        acked = {ep.episode_id for c in clients for ep in c.episodes if ep.acked}
        unacked = [
            ep.episode_id for c in clients for ep in c.episodes if ep.outcome is not None and not ep.acked
        ]
        stored = set(ray.get(platform.data.episode_ids.remote("reach")))
        final = ray.get(learner.status.remote())
        replies_after = [sum(t_learner <= t <= t_end for t in c.reply_times) for c in clients]
        data_node_after = ray.get(platform.data.ready.remote())["node_id"]
        return {
            "scenario": dataclasses.asdict(scenario),
            "robots": scenario.robots,
            "control_hz": scenario.control_hz,
            "placement": placement,
            "removed_node_ran": on_a,
            "version_at_failure": version_at_failure,
            "version_after": version(),
            "learner_restored_step": final.get("restored_step"),
            "learner_node_after": final.get("node_id"),
            "data_node_after": data_node_after,
            "replies_after_recovery": replies_after,
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
            "episodes_acked": len(acked),
            "episodes_lost": len(acked - stored),
            "episodes_unacked_at_end": len(unacked),
            "learner_resume_s": t_learner - t_fail,
            "data_server_recovery_s": t_data - t_fail,
        }
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=10)
        if runner is not None:
            runner.close()
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
