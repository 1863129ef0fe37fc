"""Human in the loop: online training with the simulated operator vs. without, on OGBench cube-single
task 1 (horizontal move) and task 4 (diagonal move: the cube travels 0.43 m instead of 0.2 m).

One platform, four tasks trained side by side under the same machine load: ``<env>-op`` (robots with an
``OracleOperator`` that takes over when progress stalls or the time limit nears) and ``<env>-auto``
(robots alone). Every task starts from the same scripted-oracle demonstrations in its offline partition
(the demo buffer) and the same learner, BC with offline pretraining first, then on a 1:1 offline/online
mix. ``--bc-rows human`` (default) clones only what people produced: demonstrations and the chunks an
operator drove (HG-DAgger); ``--bc-rows all`` clones every online chunk too, the fleet's own actions
included (plain self-imitation).
Robots run the SDK against the platform over ZeroMQ; interventions flow through the real path
(take-over frames, intervention steps in the stored episodes).

Reported per task and condition: ``curve`` (every ``sample_s``: robot-hours at the robots' nominal 10 Hz,
episodes, success of the last 20 episodes counting only those finished without an operator, the
intervention rate), ``final_success`` (the final published policy evaluated alone, no operator, in
a local simulator, ``eval_episodes`` episodes), and the intervention rate over time. The value-reliability
metrics (Robo-ValueRL §3.4) come from ``fleetrl value report`` on task 1's stored episodes without the
operator (its demonstrations succeed, its own rollouts mostly fail: both kinds the metrics need; with the
operator nearly every episode ends in success). Plus ``benchmarks/results/hil.png`` (success and intervention curves).

    MUJOCO_GL=egl .venv/bin/python benchmarks/hil.py [--quick]

Writes ``benchmarks/results/hil.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
import torch
from common import ROOT, run_header, tasks_config, write_json

from fleetrl.cli import main as fleetrl_main
from fleetrl.models.flow import FlowChunkConfig, FlowChunkPolicy
from fleetrl.platform.platform import Platform
from fleetrl.robots.client import FleetRunner, RobotClient, register
from fleetrl.robots.demos import collect_oracle_demos
from fleetrl.robots.operator import OracleOperator
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.plain_loop import evaluate

ENVS = {"c1": "cube-single-singletask-task1-v0", "c4": "cube-single-singletask-task4-v0"}
NOMINAL_HZ = 10.0  # what robot-hours are counted at (OGBench cube's control rate), whatever the sim runs at
POLICY = FlowChunkConfig(hidden=(256, 256, 256), flow_steps=10)
BUDGETS = {  # quick / full
    "demos": (10, 30),
    "offline_steps": (200, 1500),
    "online_s": (90, 900),
    "robots_per_task": (1, 2),
    "eval_episodes": (5, 30),
    "value_steps": (200, 2000),
}


def make_robot(env: str, seed: int, hz: float) -> SimRobot:
    return SimRobot(env, seed=seed, success="info_success", control_hz=hz, max_episode_steps=200)


def task_config(name: str, offline_steps: int, seed: int, bc_rows: str) -> dict:
    return {
        "name": name,
        "observation": {"state": {"shape": [28], "dtype": "float32"}},
        "action": {"shape": [5], "dtype": "float32", "low": -1.0, "high": 1.0},
        "chunk_len": 5,
        "policy": {**POLICY.model_dump(), "seed": seed},
        "inference": {"replicas": 1, "max_batch": 8, "num_cpus": 0.25},
        "learner": {
            "algorithm": "bc",
            "config": {"batch_size": 256, "seed": seed, "human_only": bc_rows == "human"},
            "offline_steps": offline_steps,
            "publish_every": 25,
            "checkpoint_every": 1000,
            "max_updates_per_s": 6,  # four learners share two cores with eight robots
            "num_cpus": 0.25,
        },
    }


def load_policy(state: dict, robot: SimRobot) -> FlowChunkPolicy:
    policy = FlowChunkPolicy(POLICY, robot.observation_spec, robot.action_spec, 5)
    policy.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return policy.eval()


def sample(platform: Platform, tasks: list[str], t0: float) -> dict[str, dict[str, Any]]:
    out = {}
    for task in tasks:
        stats = ray.get(platform.data.rollout_stats.remote(task, 20))
        steps = ray.get(platform.data.stats.remote(task))["replay"]["online_transitions"]
        out[task] = {
            "wall_s": round(time.monotonic() - t0, 1),
            "robot_hours": round(steps / NOMINAL_HZ / 3600, 4),
            "episodes": stats.get("episodes", 0),
            "success": stats.get("success_without_intervention"),
            "intervention_rate": stats.get("intervention_rate"),
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    b = args.budget
    names = [f"{short}-{cond}" for short in ENVS for cond in ("op", "auto")]
    with tempfile.TemporaryDirectory(prefix="fleetrl-hil-") as state_dir:
        cfg = tasks_config(
            state_dir, [task_config(n, b["offline_steps"], args.seed, args.bc_rows) for n in names]
        )
        platform = Platform(cfg).start()
        runner = thread = None
        stop = threading.Event()
        try:
            for short, env in ENVS.items():  # the same demonstrations in both conditions' demo buffers
                demos = collect_oracle_demos(env, n=b["demos"], oracle="plan", noise=0.1, seed=args.seed)
                print(
                    f"{env}: {sum(d.success for d in demos)}/{len(demos)} oracle demos succeeded", flush=True
                )
                for cond in ("op", "auto"):
                    name = f"{short}-{cond}"
                    for d in demos:
                        ray.get(platform.data.ingest.remote(dataclasses.replace(d, task=name,
                                                                                episode_id=f"{name}-{d.episode_id}")))  # fmt: skip
            learners = {n: platform.learner(n) for n in names}
            deadline = time.monotonic() + 1800
            while (
                min(ray.get(learners[n].status.remote()).get("step", 0) for n in names) < b["offline_steps"]
            ):
                assert time.monotonic() < deadline, "offline pretraining did not finish"
                time.sleep(2)
            print(f"offline pretraining done ({b['offline_steps']} BC steps per task)", flush=True)

            clients, operators = [], {}
            for i, name in enumerate(names):
                env = ENVS[name.split("-")[0]]
                for r in range(b["robots_per_task"]):
                    robot = make_robot(env, seed=args.seed + 1000 * i + r, hz=args.hz)
                    info = register(platform.rest_url, platform.admin_token, f"{name}-{r}", name, robot)
                    client = RobotClient.from_registration(robot, info)
                    if name.endswith("-op"):
                        client.supervisor = operators.setdefault(client.robot_id, OracleOperator(robot))
                    clients.append(client)
            runner = FleetRunner(clients)
            thread = threading.Thread(target=runner.run, kwargs={"stop": stop}, daemon=True)
            t0 = time.monotonic()
            thread.start()
            curves: dict[str, list] = {n: [] for n in names}
            while time.monotonic() - t0 < b["online_s"]:
                time.sleep(args.sample_s)
                now = sample(platform, names, t0)
                for n in names:
                    curves[n].append(now[n])
                line = "  ".join(
                    f"{n} {now[n]['episodes']}ep s={now[n]['success'] if now[n]['success'] is None else round(now[n]['success'], 2)}"
                    f" i={now[n]['intervention_rate'] if now[n]['intervention_rate'] is None else round(now[n]['intervention_rate'], 2)}"
                    for n in names
                )  # fmt: skip
                print(f"  {now[names[0]]['wall_s']:.0f} s: {line}", flush=True)
            stop.set()
            thread.join(30)
            finals = {}
            for i, name in enumerate(names):
                version, refs, _ = ray.get(platform.weights.latest.remote(name))
                robot = make_robot(ENVS[name.split("-")[0]], seed=50_000 + args.seed + i, hz=NOMINAL_HZ)
                policy = load_policy(ray.get(refs[0]), robot)
                finals[name] = {
                    "version": version,
                    **dataclasses.asdict(evaluate(robot, policy, b["eval_episodes"])),
                }
                print(
                    f"  {name}: final policy v{version} success {finals[name]['success_rate']:.2f}",
                    flush=True,
                )
            store_stats = {n: ray.get(platform.data.stats.remote(n)) for n in names}
        finally:
            stop.set()
            if thread is not None:
                thread.join(30)
            if runner is not None:
                runner.close()
            platform.stop()
        value_dir = Path(state_dir) / "value"
        fleetrl_main(["value", "report", "--episodes", str(Path(state_dir) / "episodes"), "--task", "c1-auto",
                      "--steps", str(b["value_steps"]), "--out", str(value_dir), "--seed", str(args.seed)])  # fmt: skip
        value = json.loads((value_dir / "report.json").read_text())
        plot = value_dir / "value_curves.png"
        if plot.exists():
            (ROOT / "benchmarks" / "results" / "hil_value.png").write_bytes(plot.read_bytes())

    tasks = {}
    for short, env in ENVS.items():
        op, auto = f"{short}-op", f"{short}-auto"
        tasks[env] = {
            "with_operator": {"final_success": finals[op]["success_rate"], "curve": curves[op], "final": finals[op]},
            "without_operator": {"final_success": finals[auto]["success_rate"], "curve": curves[auto],
                                 "final": finals[auto]},
            "intervention_rate": [{"robot_hours": c["robot_hours"], "rate": c["intervention_rate"]} for c in curves[op]],
            "store": {"with_operator": store_stats[op], "without_operator": store_stats[auto]},
        }  # fmt: skip
    return {"tasks": tasks, "value_reliability": value.get("metrics", value), "value_report": value}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for env, t in result["tasks"].items():
        label = env.replace("cube-single-singletask-", "").replace("-v0", "")
        for cond, style in (("with_operator", "-"), ("without_operator", "--")):
            c = [p for p in t[cond]["curve"] if p["success"] is not None]
            axes[0].plot(
                [p["robot_hours"] for p in c], [p["success"] for p in c], style, label=f"{label} {cond}"
            )
        c = [p for p in t["intervention_rate"] if p["rate"] is not None]
        axes[1].plot([p["robot_hours"] for p in c], [p["rate"] for p in c], label=label)
    axes[0].set(xlabel="robot-hours (10 Hz)", ylabel="success without intervention (last 20)", ylim=(0, 1))
    axes[1].set(xlabel="robot-hours (10 Hz)", ylabel="intervention rate (steps)", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller budgets (about three minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hz", type=float, default=20.0, help="simulated robots' control rate")
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between curve points")
    ap.add_argument("--bc-rows", choices=("human", "all"), default="human", help="what the BC learner clones")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hil.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.budget = {k: v[0] if args.quick else v[1] for k, v in BUDGETS.items()}
    torch.set_num_threads(1)
    t0 = time.monotonic()
    result = {
        **run_header(args),
        "budget": args.budget,
        "robot_hz": args.hz,
        "bc_rows": args.bc_rows,
        **run(args),
    }
    result["wall_s"] = round(time.monotonic() - t0, 1)
    out = write_json(result, args.out)
    plot(result, Path(args.out).with_suffix(".png"))
    parts = []
    for env, t in result["tasks"].items():
        rate = [p["rate"] for p in t["intervention_rate"] if p["rate"] is not None]
        parts.append(
            f"{env.split('-')[2]}-{env.split('-')[3]}: success {t['with_operator']['final_success']:.2f} with operator vs "
            f"{t['without_operator']['final_success']:.2f} without, interventions "
            f"{rate[0] if rate else float('nan'):.2f} -> {rate[-1] if rate else float('nan'):.2f}"
        )
    mor = result["value_reliability"].get("mor")
    print(f"hil ({result['mode']}): " + "; ".join(parts) + f"; value MOR {mor} -> {out}")


if __name__ == "__main__":
    main()
