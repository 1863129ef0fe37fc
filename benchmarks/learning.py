"""Learning: PPO through the whole platform vs. a plain loop, and BC / AWR / QAM on cube-single from demos.

(a) ``ppo_reacher``: PPO on Reacher-v5 with the hyper-parameters of ``tests/unit/algorithms/test_learning_ppo.py``
(lr 1e-3, epochs 5, batch 128, gae_lambda 0.9, steps_per_update 2048), same policy config and seed, the
same env-step budget on both sides:

* platform: ``--robots`` sim robots over REST + ZeroMQ (``run_sim_fleet``, as ``fleetrl robot`` runs them)
  at ``--hz`` (faster than real time), asynchronous: the learner on Ray Train takes whatever fresh steps
  arrived, replicas reload published weights at batch boundaries. The run ends when the data server's
  replay holds the budget of online env steps;
* plain: ``train_plain_ppo`` (synchronous, single process) over as many robots with the same seeds.

Final return (primary) = mean env return of the last K finished training episodes (stochastic policy, what
the robots experienced; K = the plain loop's last iteration's episode count; the platform's from the
replay's ``rollout_stats``). Returns are negative, so ``ratio = plain_return / platform_return`` (1.0 =
equal, < 1 = the platform learned less). Also reported: a deterministic evaluation of both final weights
on the same evaluation robot (``eval_*``), and of the initial policy.

(b) ``cube_single``: cube-single-singletask-task1 from OGBench ``plan``-oracle demos, in-process (algorithm
classes + a ``Replay`` with the local config's ALOE reward; the platform path is covered by (a)). Per
algorithm a fresh flow_chunk policy (the local config's): offline stage = updates on the demos only
(offline fraction 1.0); online stage = rounds of plain stochastic rollouts of the current policy
(``rollout_episodes``, added as online episodes) and updates on the 1:1 offline/online mix. Success rate
after each stage = deterministic ``evaluate`` on ``SimRobot(cube-single...)`` (same evaluation seeds).

    MUJOCO_GL=egl .venv/bin/python benchmarks/learning.py [--quick] [--only ppo|cube]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

import ray
import torch
from common import REACHER_SPECS, run_header, tasks_config, write_json

from fleetrl.algorithms.base import PolicySpec, build_algorithm
from fleetrl.algorithms.ppo import PPOConfig
from fleetrl.models.flow import FlowChunkConfig, FlowChunkPolicy
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.platform.platform import Platform
from fleetrl.robots.demos import collect_oracle_demos
from fleetrl.robots.sim import SimRobot, run_sim_fleet
from fleetrl.testing.plain_loop import evaluate, rollout_episodes
from fleetrl.testing.plain_ppo import train_plain_ppo
from fleetrl.workers.data.replay import Replay
from fleetrl.workers.task import ReplayConfig

ROOT = Path(__file__).resolve().parent.parent
REACHER, CUBE = "Reacher-v5", "cube-single-singletask-task1-v0"
PPO = {"lr": 1e-3, "epochs": 5, "batch_size": 128, "gae_lambda": 0.9, "steps_per_update": 2048}
CUBE_REPLAY = ReplayConfig(offline_fraction=0.5, reward="aloe", c_fail=200.0)  # configs/local.yaml
CUBE_POLICY = FlowChunkConfig(hidden=(256, 256, 256), flow_steps=10)
CUBE_ALGORITHMS = {  # batch 256 everywhere; QAM's value support covers ALOE returns (local.yaml)
    "bc": {"batch_size": 256},
    "awr": {"batch_size": 256},
    "qam": {"batch_size": 256, "divl": {"value": {"n_atoms": 101, "v_min": -250.0, "v_max": 0.0}}},
}
BUDGETS = {  # quick / full
    "ppo_env_steps": (12_288, 81_920),
    "eval_episodes": (5, 30),
    "cube_demos": (30, 100),
    "cube_offline_updates": (150, 1500),
    "cube_online_rounds": (1, 4),
    "cube_episodes_per_round": (3, 10),
    "cube_updates_per_round": (50, 250),
}


def reach_task(seed: int) -> dict:
    learner = {
        "algorithm": "ppo",
        "config": {**PPO, "seed": seed},
        "publish_every": 1,
        "checkpoint_every": 10,
    }
    return {
        "name": "reach", "chunk_len": 4, "policy": GaussianMLPConfig(seed=seed).model_dump(), "learner": learner,
        **REACHER_SPECS,
        "inference": {"replicas": 2, "max_batch": 32},
    }  # fmt: skip


def load_policy(state: dict, seed: int) -> torch.nn.Module:
    robot = SimRobot(REACHER)
    policy = build_policy(GaussianMLPConfig(seed=seed), robot.observation_spec, robot.action_spec, 4)
    policy.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    return policy


# -- (a) PPO: platform vs plain ------------------------------------------------------------------------
def ppo_platform(args: argparse.Namespace, budget: int, k: int) -> dict:
    """Run the fleet until the replay holds ``budget`` online env steps; the last-K return, final weights."""
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-") as state_dir:
        platform = Platform(tasks_config(state_dir, [reach_task(args.seed)])).start()
        try:
            deadline = time.monotonic() + 180  # robots start once the learner has published version 0
            while ray.get(platform.weights.latest.remote("reach")) is None and time.monotonic() < deadline:
                time.sleep(0.5)
            stop, clients = threading.Event(), []
            fleet = threading.Thread(
                target=run_sim_fleet,
                args=(REACHER, args.robots, platform.rest_url, platform.admin_token, "reach"),
                kwargs={"seed": args.seed, "control_hz": args.hz, "stop": stop, "on_start": clients.extend},
                daemon=True,
            )
            t0, shown = time.monotonic(), 0.0
            fleet.start()
            while (
                steps := ray.get(platform.data.stats.remote("reach"))["replay"]["online_transitions"]
            ) < budget:
                if time.monotonic() - shown > 10:
                    shown = time.monotonic()
                    print(f"  platform: {steps}/{budget} env steps after {shown - t0:.0f} s", flush=True)
                time.sleep(0.5)
            wall = time.monotonic() - t0
            stop.set()
            fleet.join(30)
            status = ray.get(platform.learner("reach").status.remote())
            version, refs, _ = ray.get(platform.weights.latest.remote("reach"))
            rollout = ray.get(platform.data.rollout_stats.remote("reach", k))
            return {
                "return": rollout["mean_return"],
                "env_steps": ray.get(platform.data.stats.remote("reach"))["replay"]["online_transitions"],
                "policy": load_policy(ray.get(refs[0]), args.seed),
                "wall_s": round(wall, 1),
                "updates": status["step"],
                "version": version,
                "dropped_stale_episodes": status["dropped_stale_episodes"],
                "fleet": {key: sum(c.counters[key] for c in clients) for key in clients[0].counters},
            }
        finally:
            platform.stop()


def ppo_reacher(args: argparse.Namespace) -> dict:
    budget, n_eval = args.budget["ppo_env_steps"], args.budget["eval_episodes"]
    t0 = time.monotonic()
    robots = [SimRobot(REACHER, seed=args.seed + i) for i in range(args.robots)]
    cfg = GaussianMLPConfig(seed=args.seed)
    plain = train_plain_ppo(robots, cfg, PPOConfig(**PPO, seed=args.seed), budget, args.seed)
    last, k = plain.iterations[-1], plain.iterations[-1].episodes
    print(
        f"  plain: {last.env_steps} env steps in {time.monotonic() - t0:.0f} s, return {last.mean_return:.2f}"
    )
    platform = ppo_platform(args, budget, k)
    print(f"  platform: {platform['env_steps']} env steps, return {platform['return']:.2f}", flush=True)

    def score(policy: torch.nn.Module) -> float:
        return round(evaluate(SimRobot(REACHER, seed=10_000 + args.seed), policy, n_eval).mean_return, 3)

    spec = robots[0]
    initial = build_policy(cfg, spec.observation_spec, spec.action_spec, 4)
    platform_return = platform.pop("return")
    return {
        "platform_return": round(platform_return, 3),
        "plain_return": round(last.mean_return, 3),
        "ratio": round(last.mean_return / platform_return, 3),
        "ratio_definition": "plain_return / platform_return (returns < 0; 1.0 = equal, < 1 = platform worse)",
        "return_definition": f"mean env return of the last K={k} finished training episodes (stochastic policy)",
        "env_steps": {"platform": platform.pop("env_steps"), "plain": last.env_steps},
        "eval_platform_return": score(platform.pop("policy")),
        "eval_plain_return": score(plain.policy),
        "eval_initial_return": score(initial),
        "eval_definition": f"deterministic return, {n_eval} episodes, Reacher-v5 seed {10_000 + args.seed}",
        "plain_first_update_return": round(plain.iterations[0].mean_return, 3),
        "plain_updates": len(plain.iterations),
        "plain_wall_s": round(last.wall_s, 1),
        "platform": platform,
    }


# -- (b) cube-single: offline, then online -------------------------------------------------------------
def cube_single(alg: str, demos: list, args: argparse.Namespace) -> dict:
    b, seed = args.budget, args.seed
    torch.manual_seed(seed)
    robot = SimRobot(CUBE, seed=seed + 1)
    spec = PolicySpec(robot.observation_spec, robot.action_spec, chunk_len=5, gamma=CUBE_REPLAY.gamma)
    policy = FlowChunkPolicy(CUBE_POLICY.model_copy(update={"seed": seed}), spec.observation_spec,
                             spec.action_spec, spec.chunk_len)  # fmt: skip
    config = CUBE_ALGORITHMS[alg] | {"seed": seed}
    if alg == "qam":
        config["bc_steps"] = b["cube_offline_updates"] // 2  # BC reference, then adjoint matching, offline
    algo = build_algorithm(alg, config, policy, spec, "flow_chunk")
    replay = Replay.from_config(CUBE_REPLAY, chunk_len=spec.chunk_len, seed=seed)
    for ep in demos:
        replay.add(ep)

    def success() -> float:
        return evaluate(SimRobot(CUBE, seed=10_000 + seed), policy, b["eval_episodes"]).success_rate

    t0 = time.monotonic()
    for _ in range(b["cube_offline_updates"]):
        algo.update(replay.sample_chunks(algo.config.batch_size, 1.0))
    out = {"offline": success(), "offline_wall_s": round(time.monotonic() - t0, 1)}
    online_successes = []
    for r in range(b["cube_online_rounds"]):
        episodes = rollout_episodes(robot, policy, b["cube_episodes_per_round"], "cube-single", version=r + 1)
        online_successes += [e.success for e in episodes]
        for ep in episodes:
            replay.add(ep)
        for _ in range(b["cube_updates_per_round"]):
            algo.update(replay.sample_chunks(algo.config.batch_size))
    out |= {
        "online": success(),
        "online_training_success": round(sum(online_successes) / len(online_successes), 3),
    }
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print(f"  {alg}: {out}", flush=True)
    return out


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small budgets (about two minutes)")
    ap.add_argument("--only", choices=("ppo", "cube"), help="run one part only")
    ap.add_argument("--robots", type=int, default=8, help="sim robots (platform) = robots (plain loop)")
    ap.add_argument("--hz", type=float, default=100.0, help="sim robots' control rate (Reacher preset: 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learning.json"))
    args = ap.parse_args(argv)
    args.budget = {k: v[0] if args.quick else v[1] for k, v in BUDGETS.items()}
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("fleetrl.robots.client").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    t0 = time.monotonic()
    result = {
        **run_header(args),
        "budgets": args.budget | {"robots": args.robots, "control_hz": args.hz},
        "ppo_config": PPO,
        "cube_algorithms": CUBE_ALGORITHMS,
        "cube_policy": CUBE_POLICY.model_dump(),
        "cube_replay": CUBE_REPLAY.model_dump(),
    }
    if args.only in (None, "ppo"):
        print("(a) PPO on Reacher-v5: plain loop, then the platform ...", flush=True)
        result["ppo_reacher"] = ppo_reacher(args)
    if args.only in (None, "cube"):
        demos = collect_oracle_demos(CUBE, args.budget["cube_demos"], "plan", seed=args.seed, task="cube-single",
                                     log_every=0)  # fmt: skip
        rate = sum(e.success for e in demos) / len(demos)
        print(f"(b) cube-single: {len(demos)} oracle demos ({rate:.0%} successful) ...", flush=True)
        result["cube_single"] = {a: cube_single(a, demos, args) for a in CUBE_ALGORITHMS}
        result["cube_single"]["demo_success_rate"] = rate
    result["wall_s"] = round(time.monotonic() - t0, 1)
    out = write_json(result, args.out)
    print(f"wrote {out} ({result['wall_s']} s)")
    line = "learning:"
    if "ppo_reacher" in result:
        p = result["ppo_reacher"]
        line += f" PPO Reacher return platform {p['platform_return']:.2f} vs plain {p['plain_return']:.2f} "
        line += f"(ratio {p['ratio']:.2f}, goal >= 0.95) at {p['env_steps']['platform']} env steps;"
    if "cube_single" in result:
        c = result["cube_single"]
        line += " cube-single success offline/online " + ", ".join(
            f"{a} {c[a]['offline']:.2f}/{c[a]['online']:.2f}" for a in CUBE_ALGORITHMS
        )
    print(line)


if __name__ == "__main__":
    main()
