"""Node failure: a worker node removed under load on a multi-node Ray cluster (``ray.cluster_utils.Cluster``
on this machine): the gap in action chunks per robot, acked episodes lost, time until the learner
publishes again.

The scenario (``fleetrl/testing/node_failure.py``): head (gateway, REST, control actors, one inference
replica), node A (data server, the learner's Ray Train worker, the other replica), node B standing by.
4 Reacher robots at 25 Hz train PPO; after a few published versions node A is removed without warning.
Full mode keeps Ray's default node health check (3 s period x 5 misses), the time a real cluster takes
to declare a silent node dead; ``--quick`` detects in 2 s, as the test does.

    MUJOCO_GL=egl .venv/bin/python benchmarks/node_failure.py [--quick] [--trials N]

Writes ``benchmarks/results/node_failure.json``: ``action_gap_s`` {p50, max} over every robot of every
trial (the longest time each robot went without a new chunk around the failure; compare
``action_gap_before_failure_s``, the same measure over the minutes before it), ``episodes_lost`` (acked
by the platform, missing from the store afterwards, summed over trials), ``learner_resume_s`` (failure
-> first publication after it; median over trials) and ``data_server_recovery_s``.
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
    before = [r["action_gap_before_failure_s"]["max"] for r in results]
    resume = [r["learner_resume_s"] for r in results]
    data_back = [r["data_server_recovery_s"] for r in results]
    summary = {
        **run_header(args),
        "scenario": dataclasses.asdict(base),
        "trials": trials,
        "action_gap_s": {"p50": float(np.median(gaps)), "max": float(np.max(gaps))},
        "action_gap_before_failure_s": {"max": float(np.max(before))},
        "episodes_lost": int(sum(r["episodes_lost"] for r in results)),
        "episodes_acked": int(sum(r["episodes_acked"] for r in results)),
        "learner_resume_s": float(np.median(resume)),
        "learner_resume_s_max": float(np.max(resume)),
        "data_server_recovery_s": float(np.median(data_back)),
        "latency_after_recovery_ms": {
            "p50": float(np.median([r["latency_after_recovery_ms"]["p50"] for r in results])),
            "p99": float(np.max([r["latency_after_recovery_ms"]["p99"] for r in results])),
        },
        "per_trial": results,
    }
    out = write_json(summary, args.out)
    print(
        f"node failure ({trials} trial(s), {summary['mode']}): action gap p50 {summary['action_gap_s']['p50']:.2f} s "
        f"max {summary['action_gap_s']['max']:.2f} s (before: max {summary['action_gap_before_failure_s']['max']:.2f} s); "
        f"episodes lost {summary['episodes_lost']}/{summary['episodes_acked']}; learner resumed in "
        f"{summary['learner_resume_s']:.1f} s; data server back in {summary['data_server_recovery_s']:.1f} s -> {out}"
    )


if __name__ == "__main__":
    main()
