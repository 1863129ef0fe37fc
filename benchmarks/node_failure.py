"""Node failure, scaled out: a node holding a gateway, a data shard and the learner's worker removed under load
on a 3-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine): how long its robots take to be
served by the other gateway, acked episodes lost, time until the learner publishes again.

The scenario (``fleetrl/testing/node_failure.py``): head (REST, control actors), nodes A and B (a gateway,
a data shard each; the 2-worker DDP learner where Ray Train packs it; inference replicas spread over all
three). 16 Reacher robots at 20 Hz on two tasks (one per shard) split over the two gateways; the learner
(AWR) trains one task; after a few published versions the node of the learner's first worker is removed
without warning. Full mode keeps Ray's default node health check (3 s period x 5 misses), the time a real
cluster takes to declare a silent node dead; ``--quick`` detects in 2 s and runs at 10 Hz, as the test does.

    MUJOCO_GL=egl .venv/bin/python benchmarks/node_failure.py [--quick] [--trials N]

Writes ``benchmarks/results/node_failure.json``: ``gateways``, ``data_shards``, ``learner_workers``,
``robots_reassigned_s`` {p50, max} over the lost gateway's robots of every trial (failure -> the chunk that
ended the robot's longest wait, i.e. served by the other gateway), ``episodes_lost`` (acked by the
platform, missing from the store afterwards, summed over trials), ``learner_resume_s`` (failure -> first
publication after it; median over trials), ``data_server_recovery_s`` (the lost shard answering from its
new node) and ``action_gap_s`` over every robot (compare ``action_gap_before_failure_s``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import numpy as np
from common import ROOT, run_header, write_json

from fleetrl.testing.node_failure import Scenario, run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short trial, 2 s failure detection")
    ap.add_argument("--trials", type=int, default=None, help="trials (default: 3 full, 1 quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "node_failure.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    trials = args.trials or (1 if args.quick else 3)
    base = Scenario.quick() if args.quick else Scenario()
    results = []
    for i in range(trials):
        scenario = dataclasses.replace(base, seed=args.seed + 100 * i)
        print(f"trial {i + 1}/{trials} …", flush=True)
        results.append(run(scenario, log=lambda line: print(f"  {line}", flush=True)))

    gaps = [g for r in results for g in r["action_gap_s"]["per_robot"]]
    moved = [g for r in results for g in r["robots_reassigned_s"]["per_robot"]]
    before = [r["action_gap_before_failure_s"]["max"] for r in results]
    resume = [r["learner_resume_s"] for r in results]
    data_back = [r["data_server_recovery_s"] for r in results]
    first = results[0]
    summary = {
        **run_header(args),
        "scenario": dataclasses.asdict(base),
        "trials": trials,
        "gateways": first["gateways"],
        "data_shards": first["data_shards"],
        "learner_workers": first["learner_workers"],
        "robots": first["robots"],
        "robots_reassigned": int(sum(r["robots_reassigned"] for r in results)),
        "robots_reassigned_s": {"p50": float(np.median(moved)), "max": float(np.max(moved))},
        "episodes_lost": int(sum(r["episodes_lost"] for r in results)),
        "episodes_acked": int(sum(r["episodes_acked"] for r in results)),
        "learner_resume_s": float(np.median(resume)),
        "learner_resume_s_max": float(np.max(resume)),
        "data_server_recovery_s": float(np.median(data_back)),
        "action_gap_s": {"p50": float(np.median(gaps)), "max": float(np.max(gaps))},
        "action_gap_before_failure_s": {"max": float(np.max(before))},
        "latency_after_recovery_ms": {
            "p50": float(np.median([r["latency_after_recovery_ms"]["p50"] for r in results])),
            "p99": float(np.max([r["latency_after_recovery_ms"]["p99"] for r in results])),
        },
        "per_trial": results,
    }
    out = write_json(summary, args.out)
    print(
        f"node failure ({trials} trial(s), {summary['mode']}; {summary['gateways']} gateways, "
        f"{summary['data_shards']} shards, {summary['learner_workers']} learner workers, {summary['robots']} robots): "
        f"robots moved to the other gateway in p50 {summary['robots_reassigned_s']['p50']:.1f} s, max "
        f"{summary['robots_reassigned_s']['max']:.1f} s; episodes lost {summary['episodes_lost']}/"
        f"{summary['episodes_acked']}; learner resumed in {summary['learner_resume_s']:.1f} s; data shard back in "
        f"{summary['data_server_recovery_s']:.1f} s -> {out}"
    )


if __name__ == "__main__":
    main()
