"""Model-to-actor latency: a learner publishes version v -> every replica serves v -> a robot acts on v.

A platform runs the shipped ``reach`` task with its PPO learner and 4 Reacher robots (the load a real run
puts on the machine), beside probe tasks whose versions this script publishes itself, exactly as a
learner does (``WeightBoard.publish`` with the policy's numpy state): ``probe-mlp`` (the reach policy, a
small MLP, 2 replicas, 4 robots at 10 Hz) and, in full mode, ``probe-lm`` (a token-LM policy of about
100 MB, one replica, 2 robots at 5 Hz). Per published version:

* ``publish_to_all_serving_s``: the publish call -> every replica of the task reports serving it (polled);
* ``publish_to_first_action_s``: the publish call -> the first action chunk stamped with it reaches a
  robot (robot-side receive time, same clock);

reported as P50/P99 per probe task beside the policy's size. Goals (issue): P99 < 1 s for the MLP, < 3 s
for 100 MB.

    MUJOCO_GL=egl .venv/bin/python benchmarks/model_to_actor.py [--quick]

Writes ``benchmarks/results/model_to_actor.json`` and prints a summary, then a one-line summary last.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml
from common import REACHER_SPECS, percentiles, run_header, tasks_config, write_json

from fleetrl.platform.platform import Platform
from fleetrl.robots import protocol as P
from fleetrl.robots.client import FleetRunner, RobotClient, register
from fleetrl.robots.sim import SimRobot, run_sim_fleet

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "Reacher-v5"
LM_POLICY = {"family": "token_lm", "hidden_size": 512, "layers": 6, "heads": 8, "intermediate_size": 2048}
PROBES = {  # task -> (policy, replicas, robots, robot Hz, seconds between publishes)
    "probe-mlp": (None, 2, 4, 10.0, 1.5),
    "probe-lm": (LM_POLICY, 1, 2, 5.0, 5.0),
}
GOAL_P99_S = {"probe-mlp": 1.0, "probe-lm": 3.0}


class VersionClient(RobotClient):
    """The SDK client, plus when each policy version first reached this robot (monotonic clock)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.first_seen: dict[int, float] = {}

    def _handle(self, msg: P.Message, now: float) -> None:
        if isinstance(msg, P.Action):
            self.first_seen.setdefault(msg.policy_version, time.monotonic())
        super()._handle(msg, now)


def platform_config(state_dir: str, probes: list[str]):
    local = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    reach = next(t for t in local["tasks"] if t["name"] == "reach")
    tasks = [reach]
    for name in probes:
        policy, replicas, *_ = PROBES[name]
        task = {"name": name, **REACHER_SPECS, "chunk_len": reach.get("chunk_len", 1)}
        task["policy"] = policy or reach["policy"]
        task["inference"] = {"replicas": replicas, "num_cpus": 0}
        tasks.append(task)
    return tasks_config(state_dir, tasks)


def start_probe_robots(platform: Platform, task: str, n: int, hz: float, stop: threading.Event):
    clients = []
    for i in range(n):
        robot = SimRobot(ENV_ID, seed=100 + i, control_hz=hz)
        info = register(platform.rest_url, platform.admin_token, f"{task}-{i}", task, robot)
        clients.append(VersionClient.from_registration(robot, info))
    runner = FleetRunner(clients)
    thread = threading.Thread(target=runner.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    return clients, runner, thread


def state_bytes(state: dict[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def probe(platform: Platform, task: str, versions: int, gap_s: float, clients: list[VersionClient]) -> dict:
    """Publish ``versions`` new versions of ``task`` ``gap_s`` apart; time each to all replicas and robots."""
    replicas = ray.get(platform.weights.pools.remote())[task]
    base = ray.get(replicas[0].served_state.remote())
    rng = np.random.default_rng(0)
    to_all, to_robot, missed = [], [], 0
    for v in range(1, versions + 1):
        state = {k: np.array(a, copy=True) for k, a in base.items()}
        key = next(k for k, a in state.items() if a.dtype.kind == "f")
        state[key] += rng.normal(0, 1e-3, state[key].shape).astype(state[key].dtype)  # new weights, same size
        t_pub = time.monotonic()
        ray.get(platform.weights.publish.remote(task, v, state))
        deadline = t_pub + 30.0
        while min(ray.get([r.served_version.remote() for r in replicas])) < v:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{task} v{v}: not served by every replica within 30 s")
            time.sleep(0.005)
        to_all.append(time.monotonic() - t_pub)
        while not any(v in c.first_seen for c in clients) and time.monotonic() < deadline:
            time.sleep(0.005)
        seen = [c.first_seen[v] for c in clients if v in c.first_seen]
        if seen:
            to_robot.append(min(seen) - t_pub)
        else:
            missed += 1
        print(f"  {task} v{v}: all replicas {to_all[-1]:.3f} s, first robot action "
              f"{to_robot[-1] if seen else float('nan'):.3f} s", flush=True)  # fmt: skip
        time.sleep(max(0.0, t_pub + gap_s - time.monotonic()))
    return {
        "policy_mb": round(state_bytes(base) / 2**20, 1),
        "replicas": len(replicas),
        "versions": versions,
        "publish_to_all_serving_s": percentiles(to_all, 3),
        "publish_to_first_action_s": percentiles(to_robot, 3),
        "versions_no_robot_action_within_30s": missed,
        "goal_p99_s": GOAL_P99_S[task],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the MLP probe only, 10 versions (about 1.5 min)")
    ap.add_argument("--versions", type=int, default=None, help="versions per probe (40; quick 10)")
    ap.add_argument("--seed", type=int, default=0, help="robot seeds of the reach fleet")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "model_to_actor.json"))
    args = ap.parse_args(argv)
    args.versions = args.versions or (10 if args.quick else 40)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    probes = ["probe-mlp"] if args.quick else list(PROBES)
    t0, results = time.monotonic(), {}
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-") as state_dir:
        platform = Platform(platform_config(state_dir, probes)).start()
        stop, started = threading.Event(), []
        try:
            load = threading.Thread(
                target=run_sim_fleet,
                args=(ENV_ID, 4, platform.rest_url, platform.admin_token, "reach"),
                kwargs={"seed": args.seed, "control_hz": 20.0, "stop": stop},
                daemon=True,
            )
            load.start()
            for task in probes:
                _, _, n, hz, gap = PROBES[task]
                clients, runner, thread = start_probe_robots(platform, task, n, hz, stop)
                started.append((runner, thread))
                time.sleep(3.0)  # the robots connected and acting
                print(f"{task}: publishing {args.versions} versions {gap} s apart ...", flush=True)
                results[task] = probe(platform, task, args.versions, gap, clients)
            learner = ray.get(platform.learner("reach").status.remote())
        finally:
            stop.set()
            for runner, thread in started:
                thread.join(10)
                runner.close()
            platform.stop()
    result = {
        **run_header(args),
        "wall_s": round(time.monotonic() - t0, 1),
        "load": {"task": "reach", "robots": 4, "control_hz": 20.0, "learner_step": learner.get("step")},
        "probes": results,
    }
    out = write_json(result, args.out)
    for task, r in results.items():
        print(f"{task} ({r['policy_mb']} MB, {r['replicas']} replicas): publish -> all serving "
              f"P50 {r['publish_to_all_serving_s']['p50']} s P99 {r['publish_to_all_serving_s']['p99']} s; "
              f"-> first robot action P50 {r['publish_to_first_action_s']['p50']} s "
              f"P99 {r['publish_to_first_action_s']['p99']} s (goal P99 < {r['goal_p99_s']} s)")  # fmt: skip
    print(out)
    print(summary_line(result))


def summary_line(r: dict[str, Any]) -> str:
    parts = [
        f"{task} {p['policy_mb']} MB P99 {p['publish_to_first_action_s']['p99']} s"
        for task, p in r["probes"].items()
    ]
    return "model_to_actor: publish -> first robot action " + ", ".join(parts)


if __name__ == "__main__":
    main()
