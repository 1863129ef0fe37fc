"""The PPO cells of ``learning.py``: PPO on one gymnasium MuJoCo task through the whole platform
(asynchronous and in lockstep) beside the plain single-process loop, same policy config, seeds and env-step
budget; optionally beside CleanRL's own ``ppo_continuous_action.py`` run on the same task and budget.

Sides, per seed:

* plain: ``train_plain_ppo`` (synchronous, single process) over ``--robots`` sim robots;
* platform: as many sim robots over REST + ZeroMQ (``run_sim_fleet``, as ``fleetrl robot`` runs them) at
  ``--hz``, asynchronous: the learner on Ray Train takes whatever fresh steps arrived, replicas reload
  published weights at batch boundaries, a robot whose chunk is late holds. The run ends when the data
  server's replay holds the budget of online env steps;
* lockstep: the same, the sim robots' time waiting for late chunks instead of holding (learning separated
  from latency).

Final return (primary) = mean env return of the finished training episodes of the last ``LAST_STEPS`` env
steps (stochastic policy, what the robots experienced; the platform's: as many of its last episodes as the
plain loop had in that window, from the replay's ``rollout_stats``), mean and s.e.m. over seeds. Also: a
deterministic evaluation of the final weights (``eval_*``), the hold fraction, and the ratio platform/plain
(oriented so that 1.0 = equal and < 1 = the platform learned less, whatever the sign of the returns).

CleanRL: ``--cleanrl DIR`` reads ``out_<env>_<seed>.json`` files that a run of CleanRL's
``ppo_continuous_action.py`` wrote (``{"episodes": [[global_step, return, length], ...]}``) and reports
the same last-window figure for them. CleanRL is not part of this repository; the JSON says which commit
and what was patched to run it under gymnasium 1.x.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from common import run_fleet_until, sem, tasks_config

from fleetrl.algorithms.ppo import PPOConfig
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.platform.platform import Platform
from fleetrl.robots.protocol import specs_to_dict
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.plain_loop import evaluate
from fleetrl.testing.plain_ppo import train_plain_ppo
from fleetrl.workers.weights import to_torch_state

# CleanRL's ppo_continuous_action settings on our config (PPOConfig's defaults are CleanRL's: lr 3e-4, 10
# epochs, clip 0.2, GAE lambda 0.95, value coef 0.5, max grad norm 0.5, advantages standardised per
# minibatch-set; 2048 env steps per update). Ours acts in chunks of 4, so a minibatch of 64 decisions is
# 256 env steps.
PPO = {"steps_per_update": 2048}
CHUNK_LEN = 4  # part (a)'s, and the default of --chunk-len
LAST_STEPS = 10_000  # "final return": mean over the episodes of the last 10k env steps (CleanRL's figure)
TASK = "ppo-task"


def policy_config(seed: int, normalize_obs: bool) -> GaussianMLPConfig:
    return GaussianMLPConfig(seed=seed, normalize_obs=normalize_obs)


def segment_steps(args: argparse.Namespace) -> int:
    """Rows per piece of a running episode the learner trains on (``--segment-steps``; default: the update's
    steps over the robots, CleanRL's rollout length per environment; 0: whole episodes)."""
    if args.segment_steps is not None:
        return args.segment_steps
    return PPO["steps_per_update"] // args.robots


def task_config(
    env: str, seed: int, normalize_obs: bool, ppo: dict, chunk_len: int = CHUNK_LEN, segments: int = 0
) -> dict:
    """The platform task: ``env``'s own observation and action specs, PPO (``ppo``) publishing every update,
    trained on pieces of ``segments`` rows of running episodes (0: whole episodes)."""
    robot = SimRobot(env)
    learner = {
        "algorithm": "ppo",
        "config": {**ppo, "seed": seed},
        "segment_steps": segments,
        "publish_every": 1,
        "checkpoint_every": 10,
    }
    return {
        "name": TASK, "chunk_len": chunk_len, "learner": learner,
        "policy": policy_config(seed, normalize_obs).model_dump(),
        "observation": specs_to_dict(robot.observation_spec), "action": robot.action_spec.to_dict(),
        "inference": {"replicas": 2, "max_batch": 32},
    }  # fmt: skip


def load_policy(env: str, state: dict, seed: int, normalize_obs: bool, chunk_len: int) -> torch.nn.Module:
    robot = SimRobot(env)
    cfg = policy_config(seed, normalize_obs)
    policy = build_policy(cfg, robot.observation_spec, robot.action_spec, chunk_len)
    policy.load_state_dict(to_torch_state(state))
    return policy


def run_platform(
    args: argparse.Namespace,
    env: str,
    seed: int,
    budget: int,
    k: int,
    lockstep: bool,
    normalize_obs: bool,
    ppo: dict,
) -> dict:
    """Run the fleet until the replay holds ``budget`` online env steps; the last-K return, final weights."""
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-") as state_dir:
        config = tasks_config(
            state_dir,
            [task_config(env, seed, normalize_obs, ppo, args.chunk_len, segment_steps(args))],
            recent_episodes=max(256, k),
        )
        platform = Platform(config).start()
        try:
            deadline = time.monotonic() + 180  # robots start once the learner has published version 0
            while ray.get(platform.weights.latest.remote(TASK)) is None and time.monotonic() < deadline:
                time.sleep(0.5)
            shown = [0.0]

            def progress(steps: int, elapsed: float) -> None:
                if elapsed - shown[0] > 30:
                    shown[0] = elapsed
                    print(f"    platform: {steps}/{budget} env steps after {elapsed:.0f} s", flush=True)

            clients, _, wall = run_fleet_until(
                platform, env, args.robots, TASK, budget, on_poll=progress,
                seed=seed, control_hz=args.hz, lockstep=lockstep,
            )  # fmt: skip
            status = ray.get(platform.learner(TASK).status.remote())
            version, refs, _ = ray.get(platform.weights.latest.remote(TASK))
            rollout = ray.get(platform.data.rollout_stats.remote(TASK, k))
            return {
                "return": rollout["mean_return"],
                "hold_fraction": round(rollout["hold_fraction"], 4),
                "env_steps": ray.get(platform.data.stats.remote(TASK))["replay"]["online_transitions"],
                "policy": load_policy(env, ray.get(refs[0]), seed, normalize_obs, args.chunk_len),
                "wall_s": round(wall, 1),
                "updates": status["step"],
                "version": version,
                "dropped_stale_episodes": status["dropped_stale_episodes"],
                "partly_stale_episodes": status["partly_stale_episodes"],
                "fleet": {key: sum(c.counters[key] for c in clients) for key in clients[0].counters},
            }
        finally:
            platform.stop()


def last_window(iterations: list, steps: int) -> tuple[float, int]:
    """Mean return and episode count of the plain loop's iterations covering its last ``steps`` env steps."""
    rows = [it for it in iterations if it.env_steps > iterations[-1].env_steps - steps]
    k = sum(it.episodes for it in rows)
    return sum(it.mean_return * it.episodes for it in rows) / k, k


def run_seed(args: argparse.Namespace, env: str, seed: int, normalize_obs: bool, ppo: dict) -> dict:
    """One seed: the plain loop, then the platform asynchronous and in lockstep, same seeds and budget."""
    budget, n_eval = args.budget["ppo_env_steps"], args.budget["eval_episodes"]
    t0 = time.monotonic()
    robots = [SimRobot(env, seed=seed + i) for i in range(args.robots)]
    cfg = policy_config(seed, normalize_obs)
    plain = train_plain_ppo(robots, cfg, PPOConfig(**ppo, seed=seed), budget, seed, chunk_len=args.chunk_len)
    plain_return, k = last_window(plain.iterations, LAST_STEPS)
    last = plain.iterations[-1]
    print(f"  {env} seed {seed} plain: {last.env_steps} env steps in {time.monotonic() - t0:.0f} s, "
          f"return {plain_return:.2f}", flush=True)  # fmt: skip

    def score(policy: torch.nn.Module) -> float:
        return round(evaluate(SimRobot(env, seed=10_000 + seed), policy, n_eval).mean_return, 3)

    row = {
        "plain_return": round(plain_return, 3),
        "plain_env_steps": last.env_steps,
        "plain_first_update_return": round(plain.iterations[0].mean_return, 3),
        "plain_wall_s": round(last.wall_s, 1),
        "eval_plain_return": score(plain.policy),
        "episodes_in_window": k,
    }
    for name, lockstep in (("platform", False), ("lockstep", True)):
        run = run_platform(args, env, seed, budget, k, lockstep, normalize_obs, ppo)
        print(f"  {env} seed {seed} {name}: {run['env_steps']} env steps, return {run['return']:.2f}, "
              f"hold fraction {run['hold_fraction']:.3f}", flush=True)  # fmt: skip
        row[f"{name}_return"] = round(run.pop("return"), 3)
        row[f"eval_{name}_return"] = score(run.pop("policy"))
        row[name] = run
    return row


def ratio(platform: float, plain: float) -> float:
    """platform vs plain, 1.0 = equal and < 1 = the platform learned less, for returns of either sign."""
    return round(plain / platform if plain < 0 else platform / plain, 3)


def cleanrl_returns(directory: Path, env: str, seeds: list[int]) -> dict | None:
    """The last-window return of each CleanRL run found in ``directory`` (None if there is none)."""
    rows = {}
    for seed in seeds:
        path = directory / f"out_{env}_{seed}.json"
        if not path.exists():
            continue
        run = json.loads(path.read_text())
        end = run["total_timesteps"]
        window = [r for step, r, _ in run["episodes"] if step > end - LAST_STEPS]
        rows[str(seed)] = {"return": round(float(np.mean(window)), 3), "episodes_in_window": len(window),
                           "wall_s": round(run["wall_s"], 1)}  # fmt: skip
    if not rows:
        return None
    xs = [r["return"] for r in rows.values()]
    meta = directory / "cleanrl_run.json"  # what was run: commit, patches
    return {
        "return": {"mean": round(float(np.mean(xs)), 3), "sem": round(sem(xs) or 0.0, 3)},
        "seeds": rows,
        "run": json.loads(meta.read_text()) if meta.exists() else None,
    }


def ppo_part(
    args: argparse.Namespace,
    env: str,
    normalize_obs: bool,
    normalize_rewards: bool = False,
    cleanrl: Path | None = None,
) -> dict:
    """Every seed of one task, then the spread over seeds, the ratio and the evaluation of the initial
    policy; ``normalize_obs`` / ``normalize_rewards``: CleanRL's two normalisations, on every side."""
    seeds = [args.seed + i for i in range(args.budget["ppo_seeds"])]
    ppo = {**PPO, "normalize_rewards": normalize_rewards}
    rows = {str(s): run_seed(args, env, s, normalize_obs, ppo) for s in seeds}

    def stat(value, digits: int = 3) -> dict:
        xs = [value(r) for r in rows.values()]
        return {"mean": round(float(np.mean(xs)), digits), "sem": round(sem(xs) or 0.0, digits)}

    spread = {name: stat(lambda r, key=key: r[key]) for name, key in (
        ("platform", "platform_return"), ("plain", "plain_return"), ("lockstep", "lockstep_return"),
        ("eval_platform", "eval_platform_return"), ("eval_plain", "eval_plain_return"),
        ("eval_lockstep", "eval_lockstep_return"))}  # fmt: skip
    platform, plain = spread["platform"], spread["plain"]
    robot = SimRobot(env)
    initial = build_policy(
        policy_config(seeds[0], normalize_obs), robot.observation_spec, robot.action_spec, args.chunk_len
    )
    n_eval = args.budget["eval_episodes"]
    result = {
        "env": env,
        "platform_return": platform["mean"],
        "plain_return": plain["mean"],
        "lockstep_return": spread["lockstep"]["mean"],
        "spread": spread,
        "ratio": ratio(platform["mean"], plain["mean"]),
        "lockstep_ratio": ratio(spread["lockstep"]["mean"], plain["mean"]),
        "ratio_definition": "platform vs plain return: plain/platform for negative returns, platform/plain "
        "for positive ones (1.0 = equal, < 1 = platform worse)",
        "return_definition": f"mean env return of the finished training episodes of the last {LAST_STEPS} env "
        "steps (stochastic policy; the platform's: as many of its last episodes); mean and s.e.m. over seeds",
        "normalize_obs": normalize_obs,
        "normalize_rewards": normalize_rewards,
        "chunk_len": args.chunk_len,
        "env_steps": args.budget["ppo_env_steps"],
        "robots": args.robots,
        "control_hz": args.hz,
        "segment_steps": segment_steps(args),
        "hold_fraction": {
            m: stat(lambda r, m=m: r[m]["hold_fraction"], 4)["mean"] for m in ("platform", "lockstep")
        },
        "seeds": rows,
        "eval_initial_return": round(evaluate(SimRobot(env, seed=10_000), initial, n_eval).mean_return, 3),
        "eval_definition": f"deterministic return, {n_eval} episodes, {env} seed 10000 + seed",
    }
    if cleanrl is not None:
        result["cleanrl"] = cleanrl_returns(cleanrl, env, seeds)
    return result
