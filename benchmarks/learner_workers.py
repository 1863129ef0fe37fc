"""A multi-worker learner (``learner.num_workers`` 2, data parallel) against one worker, per sample.

One cell = one worker count K, one seed: a platform whose task's learner clones (BC) the fixed ``expert``
dataset of ``offline_cells.py`` (100 plan-oracle demonstrations of OGBench cube-single task 1) for a fixed
number of updates with the same samples per update, K=1 with batch 256 and K=2 with batch 128 on each
worker (gradients averaged: an effective batch of 256), then its last published weights are evaluated. Equal
success says the two workers learn as well per sample as one; updates/s and samples/s say what the second
worker buys on this machine.

Fixed before any outcome was seen (2026-12-06):

* dataset, replay, policy (flow_chunk [256, 256, 256], chunk 5) and BC as ``offline_cells.py``;
* 1,000 updates (quick: 200) at 256 samples each, ``learner.max_updates`` ends the run;
* each worker asks Ray for one CPU (``num_cpus`` 1): on a 2-core machine K=2 takes both, beside the data
  server, the replica and Ray itself;
* evaluation: 50 deterministic episodes (quick: 10) of the last published weights, on seeds no training
  episode used;
* seeds 0, 1, 2 (quick: 0).

Writes ``benchmarks/results/learner_workers.json`` (``--out``) and prints a table, then a one-line summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from common import run_header, seed_means, sem, tasks_config, wait_for, write_json
from offline_cells import CHUNK_LEN, EVAL_SEED, POLICY, REPLAY, TASKS, build_dataset, dataset_stats
from pydantic import TypeAdapter

from fleetrl.models.policies import PolicyConfig, build_policy
from fleetrl.platform.platform import Platform
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.plain_loop import evaluate
from fleetrl.workers.weights import to_torch_state

ROOT = Path(__file__).resolve().parents[1]
DATA_TASK, TASK, SAMPLES_PER_UPDATE = "task1", "cube-ddp", 256
WORKERS = (1, 2)
BUDGETS = {"updates": (200, 1000), "eval_episodes": (10, 50), "seeds": (1, 3)}  # (quick, full)


def task_config(workers: int, seed: int, updates: int) -> dict:
    robot = SimRobot(TASKS[DATA_TASK])
    spec = {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in robot.observation_spec.items()}
    a = robot.action_spec
    robot.close()
    return {
        "name": TASK,
        "observation": spec,
        "action": {"shape": list(a.shape), "dtype": "float32", "low": a.low, "high": a.high},
        "chunk_len": CHUNK_LEN,
        "policy": POLICY | {"seed": seed},
        "inference": {"replicas": 1, "num_cpus": 0},
        "learner": {"algorithm": "bc", "config": {"batch_size": SAMPLES_PER_UPDATE // workers, "seed": seed},
                    "num_workers": workers, "num_cpus": 1, "max_updates": updates, "publish_every": 100,
                    "checkpoint_every": 100_000, "report_every_s": 0.5},
    }  # fmt: skip


def last_policy(platform: Platform, seed: int) -> tuple[int, torch.nn.Module]:
    version, refs, _ = ray.get(platform.weights.latest.remote(TASK))
    robot = SimRobot(TASKS[DATA_TASK])
    cfg = TypeAdapter(PolicyConfig).validate_python(POLICY | {"seed": seed})
    policy = build_policy(cfg, robot.observation_spec, robot.action_spec, CHUNK_LEN)
    robot.close()
    policy.load_state_dict(to_torch_state(ray.get(refs[0])))
    return version, policy.eval()


def run_cell(workers: int, seed: int, episodes: list, b: dict[str, int]) -> dict[str, Any]:
    updates = b["updates"]
    with tempfile.TemporaryDirectory(prefix="fleetrl-workers-") as state_dir:
        config = tasks_config(state_dir, [task_config(workers, seed, updates)], **REPLAY)
        platform = Platform(config).start()
        try:
            learner = platform.learner(TASK)

            def status() -> dict[str, Any]:
                return ray.get(learner.status.remote())

            wait_for("the learner", lambda: status().get("state") == "running", 300)
            ray.get([platform.data.ingest.remote(ep) for ep in episodes])
            t0 = time.monotonic()
            wait_for("the first update", lambda: status().get("step", 0) > 0, 300, poll_s=0.05)
            t1 = time.monotonic()
            wait_for(f"{updates} updates", lambda: status().get("step", 0) >= updates, 3600)
            train_s = time.monotonic() - t1
            final = status()
            wait_for(
                "the last version",
                lambda: ray.get(platform.weights.latest.remote(TASK))[0] >= final["version"],
                60,
            )
            version, policy = last_policy(platform, seed)
        finally:
            platform.stop()
    robot = SimRobot(TASKS[DATA_TASK], seed=EVAL_SEED + 1000 * seed)
    try:
        stats = evaluate(robot, policy, b["eval_episodes"])
    finally:
        robot.close()
    return {
        "success": float(stats.success_rate),
        "version": version,
        "updates": final["step"],
        "first_update_s": round(t1 - t0, 1),
        "train_s": round(train_s, 1),
        "updates_per_s": round((final["step"] - 1) / train_s, 2),
        "samples_per_s": round((final["step"] - 1) * SAMPLES_PER_UPDATE / train_s),
        "workers_in_sync": final.get("workers_in_sync"),
        "workers_checked_at": final.get("workers_checked_at"),
        "bc_loss": round(float(final["losses"].get("bc_loss", float("nan"))), 4),
    }


def summarize(cells: dict[int, dict]) -> dict[str, Any]:
    xs = [c["success"] for c in cells.values()]
    spread = sem(xs)
    return {
        "success_mean": round(float(np.mean(xs)), 4),
        "success_sem": None if spread is None else round(spread, 4),
        **seed_means(cells, ("updates_per_s", "samples_per_s", "train_s", "bc_loss")),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small budgets, one seed (a few minutes)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (cells use seed .. seed + seeds - 1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learner_workers.json"))
    args = ap.parse_args(argv)
    b = {k: v[0] if args.quick else v[1] for k, v in BUDGETS.items()}
    torch.set_num_threads(1)
    t0 = time.monotonic()
    episodes = [dataclasses.replace(ep, task=TASK) for ep in build_dataset(DATA_TASK, "expert", args.quick)]
    print(f"dataset: {dataset_stats(episodes)}", flush=True)
    cells: dict[int, dict[int, dict]] = {}
    for seed in range(args.seed, args.seed + b["seeds"]):
        for k in WORKERS:
            print(f"  K={k} seed {seed} ...", flush=True)
            c = cells.setdefault(k, {})[seed] = run_cell(k, seed, episodes, b)
            print(f"  K={k} seed {seed}: success {c['success']:.2f}, {c['updates_per_s']} updates/s, "
                  f"{c['samples_per_s']} samples/s, in sync {c['workers_in_sync']}", flush=True)  # fmt: skip
    result = {
        **run_header(args),
        "budgets": b,
        "setup": {"dataset": f"{TASKS[DATA_TASK]} expert", "algorithm": "bc", "policy": POLICY,
                  "samples_per_update": SAMPLES_PER_UPDATE, "batch_per_worker": {str(k): SAMPLES_PER_UPDATE // k
                                                                                  for k in WORKERS}},
        "wall_s": round(time.monotonic() - t0, 1),
        "workers": {str(k): summarize(c) for k, c in cells.items()},
    }  # fmt: skip
    out = write_json(result, args.out)
    for k, r in result["workers"].items():
        spread = f" ± {r['success_sem']:.2f}" if r["success_sem"] is not None else ""
        print(f"K={k}: success {r['success_mean']:.2f}{spread}; {r['updates_per_s']} updates/s, "
              f"{r['samples_per_s']} samples/s")  # fmt: skip
    print(out)
    print(summary_line(result))


def summary_line(r: dict[str, Any]) -> str:
    parts = [
        f"K={k} success {w['success_mean']:.2f} at {w['samples_per_s']:.0f} samples/s"
        for k, w in r["workers"].items()
    ]
    return (
        f"learner_workers: BC on cube-single task 1, {r['budgets']['updates']} updates x 256 samples: "
        + ", ".join(parts)
    )


if __name__ == "__main__":
    sys.exit(main())
