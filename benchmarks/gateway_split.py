"""Two gateways and a task's two inference replicas: each gateway with its own replica (``split_replicas``,
the default) against both gateways using both replicas, same robots, same replicas, same run.

Why it matters: a gateway's scheduler batches and tracks which replica is idle as if it were the replica's
only client. Shared, a replica that one gateway thinks idle may be running the other's batch, and the new
batch waits behind it unseen; split, each replica has one client, but a gateway cannot use the other's
replica when its own is busy.

The platform (``reach`` from ``configs/local.yaml``, chunk length 1, 2 replicas, no learner) runs as usual;
beside its own gateway the script starts two pairs of gateways on the same registry and replicas, one pair
split and one shared, and drives N Reacher robots at 10 Hz against each pair in turn, half the robots on
each gateway (the robots are registered over REST and keep their credentials between runs).

    MUJOCO_GL=egl .venv/bin/python benchmarks/gateway_split.py [--quick]

Writes ``benchmarks/results/gateway_split.json``: per setting (``split``, ``shared``) each run's queue wait
(arrival at the gateway -> start of the forward pass) and e2e overhead percentiles, frames lost and the
share of batches each replica computed; ``summary``: the median over runs of each percentile.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from typing import Any

import numpy as np
import ray
from common import ROOT, reach_config, run_header, write_json
from scheduler_latency import ENV_ID, TASK, connect_fleet, run_fleet, summarize

from fleetrl.platform.platform import Platform
from fleetrl.robots.client import RobotClient, register
from fleetrl.robots.sim import SimRobot
from fleetrl.serving.routes.robots import gateway_order
from fleetrl.testing.net import free_ports_in_a_row
from fleetrl.workers.gateway.actor import start_gateways
from fleetrl.workers.lifecycle import stop_actors

CONTROL_HZ = 10.0


def gateway_pair(platform: Platform, split: bool) -> tuple[list[Any], list[str]]:
    """Two gateways on the platform's registry, replicas, data and weights; (actors, endpoints)."""
    cfg = platform.cfg.gateway.model_copy(
        update={"bind": f"tcp://127.0.0.1:{free_ports_in_a_row(2)}", "replicas": 2, "split_replicas": split}
    )
    actors = start_gateways(
        cfg, list(platform.cfg.tasks), platform.replicas, platform.registry, platform.metrics, platform.data,
        platform.weights, platform.curve_keys,
    )  # fmt: skip
    return actors, [i["endpoint"] for i in ray.get([a.ready.remote() for a in actors], timeout=60)]


def one_run(
    platform: Platform, credentials: list[tuple[SimRobot, dict]], endpoints: list[str], duration: float
) -> dict[str, Any]:
    """The robots on this pair (robot i on gateway i mod 2) for ``duration`` s; the run's statistics."""
    clients = []
    for i, (robot, info) in enumerate(credentials):
        order = gateway_order(endpoints, i % 2, info["robot_id"])
        clients.append(
            RobotClient.from_registration(robot, info | {"endpoint": order[0], "endpoints": order})
        )
    try:
        connect_fleet(clients)
        marks = run_fleet(clients, duration)
    finally:
        for c in clients:
            c.close()
    return summarize(clients, marks)


def median_of(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    return {q: float(np.median([r[key][q] for r in runs])) for q in ("p50", "p99", "max")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 robots, one 8 s run per setting")
    ap.add_argument("--robots", type=int, default=None, help="fleet size (default 64, quick 32)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per run (default 20, quick 8)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per setting, alternating (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gateway_split.json"))
    args = ap.parse_args(argv)
    n = args.robots or (32 if args.quick else 64)
    duration = args.duration or (8.0 if args.quick else 20.0)
    repeats = args.repeats or (1 if args.quick else 3)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("fleetrl.robots.client").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-") as state_dir:
        platform = Platform(reach_config(state_dir, 1)).start()
        pairs: dict[str, tuple[list[Any], list[str]]] = {}
        try:
            pairs = {"split": gateway_pair(platform, True), "shared": gateway_pair(platform, False)}
            credentials = []
            for i in range(n):
                robot = SimRobot(ENV_ID, seed=args.seed + i, control_hz=CONTROL_HZ)
                credentials.append(
                    (robot, register(platform.rest_url, platform.admin_token, f"split-{i}", TASK, robot))
                )
            runs: dict[str, list[dict[str, Any]]] = {"split": [], "shared": []}
            for r in range(repeats):
                for setting, (_, endpoints) in pairs.items():
                    t0 = time.monotonic()
                    runs[setting].append(one_run(platform, credentials, endpoints, duration))
                    q = runs[setting][-1]["queue_wait_ms"]
                    print(f"run {r + 1}/{repeats} {setting}: queue wait p50 {q['p50']:.1f} ms, p99 {q['p99']:.1f} "
                          f"ms ({time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip
        finally:
            for actors, _ in pairs.values():
                stop_actors(actors, timeout=10, what="benchmark gateways")
            platform.stop()
    summary = {
        setting: {
            "queue_wait_ms": median_of(rs, "queue_wait_ms"),
            "e2e_overhead_ms": median_of(rs, "e2e_overhead_ms"),
            "frames_lost": int(sum(r["frames_lost"] for r in rs)),
        }
        for setting, rs in runs.items()
    }
    result = {
        **run_header(args),
        "robots": n,
        "control_hz": CONTROL_HZ,
        "chunk_len": 1,
        "replicas": 2,
        "gateways": 2,
        "duration_s": duration,
        "repeats": repeats,
        "summary": summary,
        "runs": runs,
    }
    out = write_json(result, args.out)
    s, h = summary["split"], summary["shared"]
    print(
        f"gateway_split ({n} robots, 2 gateways, 2 replicas, median of {repeats}): queue wait p50/p99 split "
        f"{s['queue_wait_ms']['p50']:.1f}/{s['queue_wait_ms']['p99']:.1f} ms vs shared "
        f"{h['queue_wait_ms']['p50']:.1f}/{h['queue_wait_ms']['p99']:.1f} ms; frames lost {s['frames_lost']} vs "
        f"{h['frames_lost']} -> {out}"
    )


if __name__ == "__main__":
    main()
