"""What the asynchronous action lag costs PPO, without Ray or ZeroMQ: the plain loop (``train_plain_ppo``)
with each chunk conditioned on the observation ``lookahead`` steps before it starts, as the robot SDK's
prefetch does, with and without the policy reading the pending actions (``pending_actions``).

Cells (seeds 0..N-1 each, 8 sim robots, both of CleanRL's normalisations, chunks of 4, PPO's defaults with
2048 steps per update, the same budget as ``learning.py``'s part (a'')):
lookahead 0 (no lag) with the pending-reading policy (it reads zeros), and lookahead 2 and 3 with the
observation only and with pending actions. Figure: the mean return of the training episodes of the last 10k
env steps (as ``ppo_cells``), mean and s.e.m. over seeds, and each cell's share of the no-lag return.

    python benchmarks/ppo_lag.py [--quick] [--env Hopper-v5] [--seeds 3] [--workers 2]

Writes ``benchmarks/results/ppo_lag.json``. One core per run; runs ``--workers`` at a time.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import run_header, sem, write_json

ROOT = Path(__file__).resolve().parents[1]
CELLS = {  # name: (lookahead, pending_actions)
    "no_lag": (0, True),
    "lag2_observation_only": (2, False),
    "lag2_pending": (2, True),
    "lag3_observation_only": (3, False),
    "lag3_pending": (3, True),
}
BUDGETS = {"env_steps": (8_192, 200_704), "seeds": (1, 3)}  # quick / full
LAST_STEPS = 10_000


def run_cell(env: str, seed: int, lookahead: int, pending: bool, steps: int) -> dict:
    """One plain-loop PPO run; returns its last-window return and wall time."""
    import torch

    from fleetrl.algorithms.ppo import PPOConfig
    from fleetrl.models.gaussian import GaussianMLPConfig
    from fleetrl.robots.sim import SimRobot
    from fleetrl.testing.plain_ppo import train_plain_ppo

    torch.set_num_threads(1)
    t0 = time.monotonic()
    robots = [SimRobot(env, seed=seed + i) for i in range(8)]
    policy = GaussianMLPConfig(seed=seed, normalize_obs=True, pending_actions=pending)
    ppo = PPOConfig(steps_per_update=2048, seed=seed, normalize_rewards=True)
    result = train_plain_ppo(robots, policy, ppo, steps, seed, chunk_len=4, lookahead=lookahead)
    its = result.iterations
    window = [it for it in its if it.env_steps > its[-1].env_steps - LAST_STEPS]
    episodes = sum(it.episodes for it in window)
    ret = sum(it.mean_return * it.episodes for it in window) / episodes
    return {
        "return": round(ret, 2),
        "episodes_in_window": episodes,
        "wall_s": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny budget, one seed (a smoke run)")
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: 3, quick 1)")
    ap.add_argument("--workers", type=int, default=2, help="runs at once (one core each)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppo_lag.json"))
    args = ap.parse_args(argv)
    steps = BUDGETS["env_steps"][0 if args.quick else 1]
    seeds = [args.seed + i for i in range(args.seeds or BUDGETS["seeds"][0 if args.quick else 1])]
    t0 = time.monotonic()
    jobs = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for name, (lookahead, pending) in CELLS.items():
            for seed in seeds:
                jobs[name, seed] = pool.submit(run_cell, args.env, seed, lookahead, pending, steps)
        for (name, seed), job in jobs.items():
            print(f"  {name} seed {seed}: return {job.result()['return']:.1f}", flush=True)
    cells = {}
    for name, (lookahead, pending) in CELLS.items():
        runs = {str(s): jobs[name, s].result() for s in seeds}
        returns = [r["return"] for r in runs.values()]
        cells[name] = {
            "lookahead": lookahead,
            "pending_actions": pending,
            "return_mean": round(float(np.mean(returns)), 2),
            "return_sem": None if len(returns) < 2 else round(sem(returns), 2),
            "seeds": runs,
        }
    base = cells["no_lag"]["return_mean"]
    for cell in cells.values():
        cell["share_of_no_lag"] = round(cell["return_mean"] / base, 3) if base > 0 else None
    result = {
        **run_header(args),
        "env": args.env,
        "env_steps": steps,
        "robots": 8,
        "chunk_len": 4,
        "return_definition": f"mean return of the training episodes of the last {LAST_STEPS} env steps",
        "cells": cells,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    out = write_json(result, args.out)
    line = f"ppo_lag ({args.env}, {steps} env steps, {len(seeds)} seeds):"
    for name, cell in cells.items():
        line += f" {name} {cell['return_mean']:.1f} ({cell['share_of_no_lag']});"
    print(line + f" -> {out}")
    return result


if __name__ == "__main__":
    main()
