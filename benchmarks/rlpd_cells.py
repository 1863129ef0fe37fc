"""The RLPD cells of ``learning.py`` (part (d), ``--only rlpd_reacher``): RLPD against PPO on Reacher-v5
through the whole platform, per robot step.

One cell = one algorithm, one seed: a platform (REST, ZeroMQ gateway, inference replica, data server,
learner on Ray Train) and sim robots that learn from scratch until the replay holds the budget of online
env steps. The comparison is per robot step: both sides get the same robots, rate and env steps; how many
updates the learner fits into that robot time is part of what is compared (RLPD's high update-to-data
ratio is bounded by the learner's speed here, and its realised ratio is reported).

Fixed before any outcome was seen (2026-12-07):

* Reacher-v5 at its preset's 20 Hz (a real arm's rate), 4 sim robots, lockstep (a late chunk waits
  instead of holding, so the figure is learning, not latency); chunks of 4 steps (part (a)'s);
* budget 20,000 online env steps per cell (400 episodes, 16.7 robot-minutes); seeds 0, 1, 2;
* PPO: part (a)'s settings (CleanRL's ``ppo_continuous_action``: ``PPOConfig`` defaults, 2,048 env steps
  per update, its (64, 64) Gaussian policy unsquashed), trained on pieces of 512 rows of running episodes
  (2,048 over the 4 robots), publishing every update;
* RLPD: its defaults (the reference's: 10 LayerNorm critics, target subset 2, batch 256, lrs 3e-4, tau
  0.005, HIL-SERL's initial temperature 0.01) and the reference's (256, 256) actor, tanh-squashed (RLPD
  needs it), but ``utd`` 4 instead of 20, set from this CPU's cost before any run: a critic update costs
  ~30 ms and the actor's ~20 ms on one thread, so the learner makes at most ~1.6 critic updates per chunk
  the 4 robots collect (20 chunks/s) whatever the utd; utd 4 gets ~1.4 of them and ~0.35 actor steps per
  chunk, utd 20 ~1.6 and ~0.08 (``ONLINE_UTD``, also the cube-single online row's). The replay's 50/50
  mix has no offline data here, so every row is online; publishing every 5 learner steps;
* final return: mean env return of the last 100 finished training episodes (5,000 env steps; the policy
  as it acts, with its sampling noise); also 50 deterministic evaluation episodes of the last published
  weights (return and the preset's 2 cm success);
* the curve: every 10 s, online env steps and the mean return of the last 20 finished episodes.

Added on 2026-12-07 (stop 42) for "against PPO and QAM per robot step", fixed before any run of it: side
``qam`` (only when named: ``learning.py --rlpd-algorithms qam``), QAM from scratch like the others: no
demonstrations, so no BC start (``bc_steps`` 0: the untrained flow is its start) and its 'ema' reference
clones the fleet's own rows (``reference_rows: all``); DIVL's support [-50, 0] (Reacher's discounted returns
lie within it; 201 atoms of 0.25, below one chunk's reward); otherwise the online cube cells' QAM (batch 256,
the flow chunk policy of the offline cells), publishing every 5 learner steps.
"""

from __future__ import annotations

import tempfile
from typing import Any

import common
import numpy as np
import offline_cells
import ppo_cells
import ray
import torch
from common import mean_sem, run_fleet_until, tasks_config, wait_for

from fleetrl.algorithms.rlpd import RLPDConfig
from fleetrl.platform.platform import Platform
from fleetrl.robots.protocol import specs_to_dict
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.plain_loop import evaluate

ENV, TASK = "Reacher-v5", "reacher"
ALGORITHMS = ("rlpd", "ppo")  # the part's default sides
OPTIONAL = ("qam",)  # sides run only when named (module doc)
ROBOTS, CONTROL_HZ, CHUNK_LEN = 4, 20.0, ppo_cells.CHUNK_LEN
LAST_EPISODES, CURVE_EVERY_S, CURVE_WINDOW = 100, 10.0, 20
EVAL_SEED = 10_000  # + seed: evaluation episodes no training episode used
ONLINE_UTD = 4  # RLPD's critic steps per learner step on this CPU (module doc)
LEARNERS: dict[str, dict[str, Any]] = {  # the learner entry of each side's task
    "ppo": {"algorithm": "ppo", "config": dict(ppo_cells.PPO), "segment_steps": 2048 // ROBOTS,
            "publish_every": 1, "checkpoint_every": 10},
    "rlpd": {"algorithm": "rlpd", "config": {"utd": ONLINE_UTD}, "publish_every": 5, "checkpoint_every": 200},
    "qam": {"algorithm": "qam", "config": {"batch_size": 256, "bc_steps": 0, "reference_rows": "all",
                                           "divl": {"value": {"v_min": -50.0, "v_max": 0.0}}},
            "publish_every": 5, "checkpoint_every": 200},
}  # fmt: skip
POLICIES: dict[str, dict[str, Any]] = {
    "ppo": {"family": "gaussian_mlp", "squash": False},  # part (a)'s: (64, 64), as CleanRL's
    "rlpd": {"family": "gaussian_mlp", "hidden": [256, 256], "squash": True},
    "qam": dict(offline_cells.POLICY),
}


def task_config(alg: str, seed: int) -> dict[str, Any]:
    """The cell's task, as a platform config's ``tasks`` entry."""
    learner = LEARNERS[alg]
    robot = SimRobot(ENV)
    task = {
        "name": TASK, "chunk_len": CHUNK_LEN,
        "observation": specs_to_dict(robot.observation_spec), "action": robot.action_spec.to_dict(),
        "policy": POLICIES[alg] | {"seed": seed},
        "inference": {"replicas": 1, "max_batch": 32},
        "learner": learner | {"config": learner["config"] | {"seed": seed}},
    }  # fmt: skip
    robot.close()
    return task


def served_policy(platform: Platform, alg: str, seed: int) -> tuple[int, torch.nn.Module]:
    """The latest published version and its weights in the side's policy."""
    return common.served_policy(platform, TASK, ENV, POLICIES[alg] | {"seed": seed}, CHUNK_LEN)


def run_cell(alg: str, seed: int, budget: dict[str, int]) -> dict[str, Any]:
    """One cell (see the module doc): its final return, evaluation, curve and the learner's pace."""
    online_steps, n_eval = budget["rlpd_env_steps"], budget["eval_episodes"]
    with tempfile.TemporaryDirectory(prefix="fleetrl-rlpd-") as state_dir:
        config = tasks_config(state_dir, [task_config(alg, seed)], recent_episodes=max(256, LAST_EPISODES))
        platform = Platform(config).start()
        try:
            learner = platform.learner(TASK)
            wait_for("version 0", lambda: ray.get(platform.weights.latest.remote(TASK)) is not None, 180)
            curve, shown = [], [0.0]

            def look(steps: int, elapsed: float) -> None:
                rollout = ray.get(platform.data.rollout_stats.remote(TASK, CURVE_WINDOW))
                point = {
                    "env_steps": steps,
                    "return": None if not rollout.get("episodes") else round(rollout["mean_return"], 3),
                    "learner_step": int(ray.get(learner.status.remote()).get("step", 0)),
                    "wall_s": round(elapsed, 1),
                }
                curve.append(point)
                if elapsed - shown[0] > 60:
                    shown[0] = elapsed
                    print(f"    {alg} seed {seed}: {point}", flush=True)

            clients, steps, wall = run_fleet_until(
                platform, ENV, ROBOTS, TASK, online_steps, poll_s=CURVE_EVERY_S, on_poll=look,
                seed=100 * (seed + 1), control_hz=CONTROL_HZ, lockstep=True,
            )  # fmt: skip
            rollout = ray.get(platform.data.rollout_stats.remote(TASK, LAST_EPISODES))
            status = ray.get(learner.status.remote())
            version, policy = served_policy(platform, alg, seed)
        finally:
            platform.stop()
    robot = SimRobot(ENV, seed=EVAL_SEED + seed)
    try:
        ev = evaluate(robot, policy, n_eval)
    finally:
        robot.close()
    updates = int(status.get("step", 0))
    critic_updates = updates * RLPDConfig(**LEARNERS["rlpd"]["config"]).utd if alg == "rlpd" else None
    return {
        "return": round(rollout["mean_return"], 3),
        "success": round(rollout["success_rate"], 3),
        "episodes_in_window": rollout["episodes"],
        "eval_return": round(ev.mean_return, 3),
        "eval_success": round(ev.success_rate, 3),
        "env_steps": steps,
        "robot_minutes": round(steps / CONTROL_HZ / 60, 2),
        "learner_steps": updates,
        "learner_end": status.get("losses"),  # the last report: losses and diagnostics (Q, distances)
        # RLPD's update-to-data ratio as realised: critic updates per online chunk collected
        "critic_updates_per_chunk": None
        if critic_updates is None
        else round(critic_updates / (steps / CHUNK_LEN), 3),
        "version": version,
        "hold_fraction": round(rollout["hold_fraction"], 4),
        "wall_s": round(wall, 1),
        "lockstep_waits": sum(c.counters["lockstep_waits"] for c in clients),
        "curve": curve,
    }


def summarize(cells: dict[int, dict]) -> dict[str, Any]:
    """Mean and standard error over seeds of one side's cells, the per-seed rows and curves kept."""
    out: dict[str, Any] = {}
    for key in ("return", "success", "eval_return", "eval_success"):
        out[key], out[f"{key}_sem"] = mean_sem([c[key] for c in cells.values()])
    out["env_steps"] = int(np.mean([c["env_steps"] for c in cells.values()]))
    out["seeds"] = sorted(cells)
    out["curve"] = {str(s): c["curve"] for s, c in cells.items()}
    out["per_seed"] = {str(s): {k: v for k, v in c.items() if k != "curve"} for s, c in cells.items()}
    return out


def rlpd_part(budget: dict[str, int], algorithms: tuple[str, ...] = ALGORITHMS) -> dict[str, Any]:
    """Every cell, seed-major (a cut run has every side), then each side's summary."""
    cells: dict[str, dict[int, dict]] = {alg: {} for alg in algorithms}
    for seed in range(budget["rlpd_seeds"]):
        for alg in algorithms:
            print(f"  rlpd_reacher {alg}/{seed} ...", flush=True)
            c = cells[alg][seed] = run_cell(alg, seed, budget)
            print(f"  rlpd_reacher {alg}/{seed}: return {c['return']:.2f} (eval {c['eval_return']:.2f}, "
                  f"success {c['eval_success']:.2f}) at {c['env_steps']} env steps, {c['learner_steps']} "
                  f"learner steps in {c['wall_s']} s", flush=True)  # fmt: skip
    return {
        "env": ENV,
        "setup": {
            "robots": ROBOTS,
            "control_hz": CONTROL_HZ,
            "chunk_len": CHUNK_LEN,
            "lockstep": True,
            "learners": LEARNERS,
            "policies": POLICIES,
        },  # fmt: skip
        "return_definition": f"mean env return of the last {LAST_EPISODES} finished training episodes "
        "(stochastic policy); mean and s.e.m. over seeds",
        "eval_definition": f"deterministic, {budget['eval_episodes']} episodes, {ENV} seed {EVAL_SEED} + seed",
        **{alg: summarize(c) for alg, c in cells.items()},
    }
