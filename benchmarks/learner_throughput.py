"""Learner throughput: updates/s of each algorithm inside the platform vs. the same update loop without Ray.

One platform with four Reacher-v5 tasks, one learner each: ``tp-ppo`` (gaussian_mlp, PPO) and ``tp-awr``,
``tp-bc``, ``tp-qam`` (flow_chunk). A learner without data idles (it polls its replay every 0.2-0.5 s), so
the algorithms are measured one after the other: data goes into one task's replay, its learner warms up,
``Learner.status()`` is read at the start and end of a measured window (step and loop time of its
reports: platform updates/s = d step / d time, publish, checkpoint, Ray sampling and reporting included),
then the learner is stopped. The baseline is the same algorithm class and config on a policy built from
the same config, in this process (no Ray), measured in the same run for the same window, half of it just
before and half just after the platform window (so a drift in machine load cancels):

* awr / bc / qam: ``sample_chunks`` from an in-process ``Replay`` (same replay config and episodes: the
  scripted Reacher demos) + ``algorithm.update``; ``plain_update_only_per_s`` times ``update`` alone.
* ppo: one update = ``steps_per_update`` fresh env steps. A pool of episodes is rolled out once with the
  initial policy; the platform side gets a copy of the pool ingested through the data server per update,
  stamped with the newest published version and fed one batch ahead of the learner (the learner takes
  all fresh steps at once, so ``platform_decisions_per_update`` shows if two batches ever merged); the
  plain side calls ``PPO.update`` on the same pool stamped with its current version, then ``published``.

    MUJOCO_GL=egl .venv/bin/python benchmarks/learner_throughput.py [--quick]

Writes ``benchmarks/results/learner_throughput.json``; ratio = platform / plain (goal for the update-only
ratio: >= 0.95); ``update_cpu_ratio`` is the same over the learner thread's CPU time, which leaves out the
cores the rest of the platform takes from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from common import REACHER_SPECS, run_header, tasks_config, write_json

from fleetrl.algorithms.base import PolicySpec, build_algorithm
from fleetrl.algorithms.batch import EpisodeBatch
from fleetrl.models.policies import build_policy
from fleetrl.platform.platform import Platform
from fleetrl.robots.demos import collect_scripted_demos, reacher_reach_policy
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.plain_loop import rollout_episodes
from fleetrl.workers.data.replay import Replay
from fleetrl.workers.task import TaskConfig

ROOT = Path(__file__).resolve().parent.parent
ENV_ID, CHUNK_LEN = "Reacher-v5", 4
FLOW = {"family": "flow_chunk", "hidden": [256, 256], "flow_steps": 8}
GAUSSIAN = {"family": "gaussian_mlp", "hidden": [64, 64]}
ALGORITHMS: dict[str, tuple[dict, dict]] = {  # name -> (policy, algorithm config); defaults otherwise
    # PPO trains on copies of one pool over and over: a tiny lr keeps it finite (cost per update is the same)
    "ppo": (
        GAUSSIAN,
        {"lr": 1e-6, "epochs": 5, "batch_size": 128, "gae_lambda": 0.9, "steps_per_update": 2048},
    ),
    "awr": (FLOW, {"batch_size": 256}),
    "bc": (FLOW, {"batch_size": 256}),
    "qam": (FLOW, {"batch_size": 256, "bc_steps": 10}),  # the window measures adjoint matching, not BC
}
FEED_POLL_S = 0.002  # the PPO feeder's look at the board between batches (a busy loop took a core)
LEARNER = {"publish_every": 10, "checkpoint_every": 200, "report_every_s": 0.25}  # PPO: publish_every 1


def task_config(alg: str, seed: int, learner_overrides: dict | None = None) -> dict:
    policy, config = ALGORITHMS[alg]
    learner = {**LEARNER, **(learner_overrides or {}), "algorithm": alg, "config": {**config, "seed": seed}}
    if alg == "ppo":
        learner["publish_every"] = 1  # on-policy: every update's weights are the next data's
    return {
        "name": f"tp-{alg}", "chunk_len": CHUNK_LEN, "policy": {**policy, "seed": seed}, "learner": learner,
        **REACHER_SPECS,
        "inference": {"replicas": 1, "num_cpus": 0},
    }  # fmt: skip


def stamp(ep: Any, version: int, tag: str, task: str | None = None) -> Any:
    """A copy of ``ep`` under a new id whose steps were (nominally) produced by ``version``."""
    cols = {**ep.columns, "policy_version": np.full_like(ep.columns["policy_version"], version)}
    return dataclasses.replace(ep, episode_id=f"{ep.episode_id}-{tag}", task=task or ep.task, columns=cols)


# -- the baseline: the same update loop in this process ------------------------------------------------
class PlainLoop:
    def __init__(self, task: TaskConfig, gamma: float, replay_cfg: Any, data: list, seed: int):
        torch.set_num_threads(1)
        spec = PolicySpec(task.observation_spec, task.action_spec, task.chunk_len, gamma)
        policy = build_policy(task.policy, task.observation_spec, task.action_spec, task.chunk_len)
        self.algo = build_algorithm(
            task.learner.algorithm, task.learner.config, policy, spec, task.policy.family
        )
        self.algo.published(0)
        self.version, self.pool = 0, data
        if self.algo.data == "chunks":
            self.replay = Replay.from_config(replay_cfg, chunk_len=task.chunk_len, seed=seed)
            for ep in data:
                self.replay.add(ep)
        self.updates, self.seconds, self.update_seconds, self.update_cpu_seconds = 0, 0.0, 0.0, 0.0

    def step(self) -> tuple[float, float]:
        """One learner step as the platform's loop does it; returns the seconds spent in ``update`` and
        this thread's CPU seconds in it."""
        if self.algo.data == "chunks":
            batch = self.replay.sample_chunks(self.algo.batch_request().size)
        else:
            eps = [stamp(ep, self.version, "plain") for ep in self.pool]
            batch = EpisodeBatch(eps, [0] * len(eps), 0)
        t0, cpu0 = time.perf_counter(), time.thread_time()
        self.algo.update(batch)
        took, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        if self.algo.data == "episodes":
            self.version += 1
            self.algo.published(self.version)
        return took, cpu

    def run(self, seconds: float, measure: bool = True) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            took, cpu = self.step()
            if measure:
                self.updates, self.update_seconds = self.updates + 1, self.update_seconds + took
                self.update_cpu_seconds += cpu
        if measure:
            self.seconds += time.perf_counter() - start


# -- the platform side ---------------------------------------------------------------------------------
def feed_ppo(
    platform: Platform, task: str, pool: list, stop: threading.Event, errors: list, took: list
) -> None:
    """Ingest one copy of ``pool`` per PPO update, one batch ahead, as a fleet would: batch k goes in
    while the learner updates on batch k-1 (once version k-1 is out, i.e. update k-2 is done), stamped
    with the newest version (at most one behind when the learner uses it; its lag limit is 2)."""
    try:
        _feed_ppo(platform, task, pool, stop, took)
    except Exception as exc:  # noqa: BLE001 - reported by the measuring loop
        errors.append(exc)


def _feed_ppo(platform: Platform, task: str, pool: list, stop: threading.Event, took: list) -> None:
    k = 0
    while not stop.wait(0 if k == 0 else FEED_POLL_S):  # a fleet does not spin on the board either
        latest = ray.get(platform.weights.latest.remote(task))
        version = latest[0] if latest else 0
        if version >= k - 1:
            t0 = time.perf_counter()
            ray.get([platform.data.ingest.remote(stamp(ep, version, f"f{k}", task)) for ep in pool])
            took.append(time.perf_counter() - t0)
            k += 1
        else:
            time.sleep(0.005)


def measure_platform(platform: Platform, alg: str, data: list, args: argparse.Namespace) -> dict:
    task = f"tp-{alg}"
    learner = platform.learner(task)
    stop, errors, ingest_s = threading.Event(), [], []
    if alg == "ppo":
        feeder = threading.Thread(
            target=feed_ppo, args=(platform, task, data, stop, errors, ingest_s), daemon=True
        )
        feeder.start()
    else:
        ray.get([platform.data.ingest.remote(stamp(ep, -1, alg, task)) for ep in data])
    first, decisions = None, []
    deadline = time.monotonic() + args.window + 90
    while time.monotonic() < deadline and not errors:
        s = ray.get(learner.status.remote())
        if s.get("state") == "failed":
            raise RuntimeError(f"learner {task} failed: {s['error']}")
        if "decisions" in s.get("losses", {}) and first is not None:
            decisions.append(s["losses"]["decisions"])
        if first is None and s["step"] >= args.warmup_updates:
            first = s
        elif first is not None and s["time"] - first["time"] >= args.window:
            break
        time.sleep(0.1)
    stop.set()
    ray.get(learner.stop.remote(), timeout=60)
    if errors:
        raise errors[0]
    if first is None:
        raise RuntimeError(f"learner {task} did not warm up; last status {s}")
    out = {"platform_updates_per_s": (s["step"] - first["step"]) / max(s["time"] - first["time"], 1e-9)}
    out["platform_updates"] = s["step"] - first["step"]
    # The same steps over the learner's time inside Algorithm.update only: the learner's own speed,
    # apart from waiting for data (PPO's fresh episodes) and the loop's I/O.
    out["platform_update_only_per_s"] = round(
        out["platform_updates"] / max(s["update_s"] - first["update_s"], 1e-9), 3
    )
    # ... and over the learner thread's CPU time in it: the update's own cost, apart from cores taken by
    # the rest of the platform on this machine (data server, feeder, replicas)
    out["platform_update_cpu_ms"] = round(1000 * (s["update_cpu_s"] - first["update_cpu_s"]) / max(
        out["platform_updates"], 1), 3)  # fmt: skip
    out["platform_last_reported_updates_per_s"] = round(s["updates_per_s"], 3)
    if ingest_s:  # seconds to ingest one update's episodes through the data server (store + replay)
        out["platform_ingest_s_per_update"] = round(float(np.median(ingest_s)), 3)
    if decisions:
        out["platform_decisions_per_update"] = round(float(np.mean(decisions)), 1)
    return out


def run_algorithm(platform: Platform, alg: str, data: list, args: argparse.Namespace) -> dict:
    task = next(t for t in platform.cfg.tasks if t.name == f"tp-{alg}")
    replay_cfg = ray.get(platform.data.replay_config.remote(task.name))
    plain = PlainLoop(task, replay_cfg.gamma, replay_cfg, data, args.seed)
    plain.run(args.warmup_s, measure=False)
    plain.run(args.window / 2)
    result = measure_platform(platform, alg, data, args)
    plain.run(args.window / 2)
    result["plain_updates_per_s"] = plain.updates / plain.seconds
    result["plain_update_only_per_s"] = round(plain.updates / plain.update_seconds, 3)
    result["plain_update_cpu_ms"] = round(1000 * plain.update_cpu_seconds / max(plain.updates, 1), 3)
    result["update_cpu_ratio"] = round(result["plain_update_cpu_ms"] / result["platform_update_cpu_ms"], 3)
    result["ratio"] = round(result["platform_updates_per_s"] / result["plain_updates_per_s"], 3)
    result["update_only_ratio"] = round(
        result["platform_update_only_per_s"] / result["plain_update_only_per_s"], 3
    )
    for key in ("platform_updates_per_s", "plain_updates_per_s"):
        result[key] = round(result[key], 3)
    if alg == "ppo":
        result["plain_decisions_per_update"] = float(sum(-(-len(e) // CHUNK_LEN) for e in data))
    print(f"  {alg}: {result}", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 s windows, fewer demos (about two minutes)")
    ap.add_argument("--algorithms", default="ppo,awr,bc,qam")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=LEARNER["checkpoint_every"], help="diagnosis")
    ap.add_argument("--publish-every", type=int, default=LEARNER["publish_every"], help="diagnosis (not PPO)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learner_throughput.json"))
    args = ap.parse_args(argv)
    args.window, args.warmup_s = (6.0, 2.0) if args.quick else (30.0, 5.0)
    args.warmup_updates, args.demos = (12, 20) if args.quick else (20, 100)
    algorithms = args.algorithms.split(",")
    logging.basicConfig(level=logging.WARNING)
    t0 = time.monotonic()
    demos = collect_scripted_demos(ENV_ID, reacher_reach_policy, args.demos, seed=args.seed, log_every=0)
    ppo_task = TaskConfig.model_validate(task_config("ppo", args.seed))
    policy = build_policy(ppo_task.policy, ppo_task.observation_spec, ppo_task.action_spec, CHUNK_LEN)
    robot, pool = SimRobot(ENV_ID, seed=args.seed + 1), []
    while sum(len(e) for e in pool) < ALGORITHMS["ppo"][1]["steps_per_update"]:
        pool += rollout_episodes(robot, policy, 1, task="tp-ppo", robot_id="bench")
    print(
        f"{len(demos)} demos, a PPO pool of {len(pool)} episodes ({time.monotonic() - t0:.1f} s)", flush=True
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-") as state_dir:
        overrides = {"checkpoint_every": args.checkpoint_every, "publish_every": args.publish_every}
        cfg = tasks_config(state_dir, [task_config(a, args.seed, overrides) for a in algorithms])
        platform = Platform(cfg).start()
        print(f"platform up in {time.monotonic() - t0:.1f} s", flush=True)
        try:
            for alg in algorithms:
                results[alg] = run_algorithm(platform, alg, pool if alg == "ppo" else demos, args)
        finally:
            platform.stop()
    result = {
        **run_header(args),
        "window_s": args.window,
        "warmup_updates": args.warmup_updates,
        "measured": "platform: d step / d time of Learner.status() over the window (loop timestamps); plain: "
        "sample + update (+ published for PPO) in this process, half the window before and half after; "
        "ratio = platform / plain. PPO: one update = steps_per_update fresh env steps.",
        "algorithms": {a: {"policy": ALGORITHMS[a][0], "config": ALGORITHMS[a][1]} for a in algorithms},
        "learner": LEARNER | overrides | {"ppo_publish_every": 1, "torch_threads": 1},
        "demos": args.demos,
        "wall_s": round(time.monotonic() - t0, 1),
        **results,
    }
    out = write_json(result, args.out)
    print(f"wrote {out} ({result['wall_s']} s)")
    print(
        "learner_throughput: platform/plain updates/s "
        + ", ".join(f"{a} {r['platform_updates_per_s']:.1f}/{r['plain_updates_per_s']:.1f} = {r['ratio']:.2f}"
                    for a, r in results.items())
        + "; update-only (wall / CPU) "
        + ", ".join(f"{a} {r['update_only_ratio']:.2f} / {r['update_cpu_ratio']:.2f}" for a, r in results.items())
        + " (goal >= 0.95)"
    )  # fmt: skip


if __name__ == "__main__":
    main()
