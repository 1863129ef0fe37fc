"""The online cells of ``learning.py``: from an offline start, the fleet learns through the whole platform.

One cell = one algorithm, one seed, on OGBench cube-single task 1: a platform (gateway, inference replica,
data server, learner on Ray Train, REST) whose offline replay holds the ``expert`` dataset of
``offline_cells`` (100 ``plan``-oracle demos at noise 0.1). The learner first trains offline only
(``offline_steps``: QAM and AWR a BC start of ``offline_updates`` steps then as many of their own; BC
``offline_updates`` steps, as in the offline cells), then sim robots register over REST and run over
ZeroMQ (lockstep: their simulated time waits for late chunks, so the figure is learning, not latency)
and the learner trains on LWD's 1:1 offline/online mix until the replay holds the budget of online env
steps. Plain BC continuing on the same stream is the reference.

Fixed before any outcome was seen:

* task cube-single-singletask-task1-v0, chunk length 5, the offline cells' policy, replay reward
  (``aloe``: -1 per step, -200 on failure) and algorithm configs; ``offline_fraction`` 0.5 online;
* 4 robots; budget 30,000 online env steps = 50 robot-minutes at the task's 10 Hz (quick: 2,000);
* the robots run at the task's real 10 Hz (lockstep), so the learner gets the wall time a real fleet gives it.
  Changed on 2026-12-05 from 50 Hz (five times faster than real time), before any 3-seed run at 10 Hz: at 50 Hz
  the learners' steps, not robot time, bounded the cells (BC's cheap update made 20k online steps, QAM's ~900,
  AWR's ~2,000). Seen before this was fixed: one exploratory cell each at 10 Hz, seed 0, AWR (``awr_mixed``, 12k
  online steps, deterministic success 0.38 -> 0.82) and BC (99k steps, 0.40 -> 1.00). Cells record their
  ``control_hz`` and a resumed run reuses only cells of the current rate;
* AWR runs with the offline cells' ``awr_mixed`` setting (critics on returns, the data's value as baseline, the
  binary filter; ``SETTINGS``): online data mixes successes and failures by nature. Decided on the same day, for
  that reason, before any 3-seed online run of it;
* success start / end: 50 deterministic evaluation episodes (evaluation seeds no training episode used)
  of the weights the fleet was served when the robots started, and of the last published weights;
* the curve: every ~15 s, online env steps (as robot-minutes at 10 Hz) and the success rate of the
  fleet's last 20 finished episodes (the policy as it acts, with its sampling noise);
* seeds 0, 1, 2.

Added on 2026-12-06 for a longer, stated robot-time budget (``learning.py --online-minutes M``; such rows are
named ``{alg}_{M}min``): the weights served at each quarter of the budget are kept and evaluated after the run
like the end ones (50 deterministic episodes), so a row's ``success_at`` and ``success_end`` are the
deterministic success-vs-robot-time curve. Added before any run with it; nothing the robots or learner see changes.

Added on 2026-12-07: a row may be one of the offline cells' named settings of these algorithms
(``--online-algorithms qam_filtered_t10_all``; ``offline_cells.VARIANTS`` says when and why each was fixed);
its learner trains the variant's base algorithm with the variant's config, everything else as above.

Added on 2026-12-07 for RLPD against QAM per robot step (issue 15, item 5), fixed before any run of it: row
``rlpd`` (only when named) runs ``offline_cells``' ``rlpd_online`` setting, the RLPD reference's defaults (10
LayerNorm critics, batch 256) with utd 4, set from this CPU's cost (``offline_cells`` says how), the offline
cells' squashed Gaussian policy, the same 1:1 offline/online mix (RLPD's symmetric sampling), and no offline
pretraining (``offline_steps`` 0: RLPD's recipe; the robots start after the first published version).

Added on 2026-12-07 (stop 42) for item 4's "from an offline start of about 50 %", fixed before its run:
``learning.py --online-own-updates N`` gives QAM and AWR rows N updates of their own after the BC start
instead of as many as it (rows ``{alg}_own{N}``). Its use: ``qam_filtered_t10_all_ref8`` with N = 125, so that
its reference clones 1,000 + 125 x 8 = 2,000 BC steps offline, as ``qam_filtered_t10_all``'s (1 per update)
did from the same demos (that row started at 0.51; the ref8 row with 1,000 own updates started at 0.79).

Added on 2026-12-07 (stop 42) for item 5's "against PPO per robot step" on cube-single, fixed before any run
of it: row ``ppo`` (only when named) trains PPO with part (a)'s CleanRL settings (``PPO_LEARNER``,
``PPO_POLICY``: the Reacher cells' PPO side) from scratch on the robots' episodes (on-policy, it has no use
for the demonstrations, which stay in the replay), with the same replay reward, robots, rate and budget.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import common
import numpy as np
import offline_cells
import ray
import rlpd_cells
import torch
from common import mean_sem, run_fleet_until, tasks_config, wait_for

from fleetrl.platform.platform import Platform
from fleetrl.robots.protocol import specs_to_dict
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.plain_loop import evaluate

TASK, ENV = "cube-task1", offline_cells.TASKS["task1"]
ALGORITHMS = ("qam", "awr", "bc")  # the default rows (the contract's)
OPTIONAL = ("rlpd", "ppo")  # rows run only when named (``--online-algorithms rlpd``)
# an algorithm's offline-cell setting where it is not its default
SETTINGS = {"awr": "awr_mixed", "rlpd": "rlpd_online"}
ROBOTS, CONTROL_HZ, ROBOT_HZ = 4, 10.0, 10.0  # sim rate (lockstep) / the task's real rate for robot time
CURVE_EVERY_S, CURVE_WINDOW, PUBLISH_EVERY = 15.0, 20, 20
SNAPSHOTS = 3  # served weights kept at 1/4, 2/4 and 3/4 of the budget, evaluated after the run
# PPO (on-policy: no offline phase, no demonstrations): the Reacher cells' PPO side (CleanRL's settings, its
# (64, 64) unsquashed Gaussian, 2,048 env steps per update in pieces of 512 rows, publishing every update)
PPO_POLICY = dict(rlpd_cells.POLICIES["ppo"])
PPO_LEARNER = {k: rlpd_cells.LEARNERS["ppo"][k] for k in ("config", "segment_steps", "publish_every")}


def names() -> list[str]:
    """What ``--online-algorithms`` takes: the contract's algorithms, then the offline cells' named settings
    of them (a variant's row is named after it and runs its settings, e.g. ``qam_filtered_t10_all``)."""
    known = (*ALGORITHMS, *OPTIONAL)
    variants = [v for v, (base, _) in offline_cells.VARIANTS.items() if base in known]
    return [*known, *variants]


def algorithm(alg: str) -> str:
    """The registered algorithm an online row trains (a variant's base)."""
    return "ppo" if alg == "ppo" else offline_cells.resolve(alg)[0]


def policy_of(alg: str) -> dict[str, Any]:
    """The policy family an online row trains (without its seed)."""
    return dict(PPO_POLICY) if alg == "ppo" else offline_cells.policy_family(algorithm(alg))


def task_config(
    alg: str, seed: int, offline_updates: int, own_updates: int | None = None
) -> tuple[dict, int]:
    """The cell's task (as a platform config's ``tasks`` entry) and its number of offline-only steps:
    QAM and AWR a BC start of ``offline_updates``, then ``own_updates`` of their own (default as many)."""
    base, config = (
        ("ppo", PPO_LEARNER["config"]) if alg == "ppo" else offline_cells.resolve(SETTINGS.get(alg, alg))
    )
    config = config | {"seed": seed}
    learner = {"publish_every": PUBLISH_EVERY, "checkpoint_every": 1000}
    offline_steps = offline_updates
    if base in ("qam", "awr"):
        config["bc_steps"] = offline_updates
        offline_steps = offline_updates + (offline_updates if own_updates is None else own_updates)
    elif base == "rlpd":  # RLPD's reference does not pretrain: the demos enter through the 50/50 mix
        offline_steps = 0
    elif base == "ppo":  # on-policy: it learns from the robots' episodes only
        offline_steps = 0
        learner |= {k: v for k, v in PPO_LEARNER.items() if k != "config"}
    robot = SimRobot(ENV)
    task = {
        "name": TASK,
        "observation": specs_to_dict(robot.observation_spec),
        "action": robot.action_spec.to_dict(),
        "chunk_len": offline_cells.CHUNK_LEN,
        "policy": policy_of(alg) | {"seed": seed},
        "inference": {"replicas": 1, "max_batch": 32},
        "learner": {"algorithm": base, "config": config, "offline_steps": offline_steps} | learner,
    }  # fmt: skip
    robot.close()
    return task, offline_steps


def served_policy(platform: Platform, alg: str, seed: int) -> tuple[int, torch.nn.Module]:
    """The latest published version and its weights in a policy of the cell's family."""
    return common.served_policy(platform, TASK, ENV, policy_of(alg) | {"seed": seed}, offline_cells.CHUNK_LEN)


def success_of(policy: torch.nn.Module, seed: int, n: int) -> float:
    robot = SimRobot(ENV, seed=offline_cells.EVAL_SEED + seed)
    try:
        return float(evaluate(robot, policy, n).success_rate)
    finally:
        robot.close()


def run_cell(alg: str, seed: int, episodes: list, budget: dict[str, int]) -> dict[str, Any]:
    """One online cell (see the module doc); its start/end success, robot time and curve."""
    task, offline_steps = task_config(alg, seed, budget["offline_updates"], budget.get("online_own_updates"))
    online_steps, n_eval = budget["online_env_steps"], budget["eval_episodes"]
    with tempfile.TemporaryDirectory(prefix="fleetrl-online-") as state_dir:
        platform = Platform(
            tasks_config(state_dir, [task], **(offline_cells.REPLAY | {"offline_fraction": 0.5}))
        ).start()
        try:
            t0 = time.monotonic()
            ray.get([platform.data.ingest.remote(dataclasses.replace(e, task=TASK)) for e in episodes])
            learner = platform.learner(TASK)

            def step() -> int:
                return int(ray.get(learner.status.remote()).get("step", 0))

            # the offline phase, and a version published after it (the learner trains on offline data
            # until the robots' first episodes arrive); PPO has nothing to train on before them
            if algorithm(alg) == "ppo":
                wait_for("version 0", lambda: ray.get(platform.weights.latest.remote(TASK)) is not None, 180)
            else:
                wait_for(
                    f"{offline_steps} offline steps", lambda: step() >= offline_steps + PUBLISH_EVERY, 3600
                )
            offline_s = time.monotonic() - t0
            start_version, start_policy = served_policy(platform, alg, seed)
            curve, shown = [], [0.0]
            snapshots: list[tuple[float, int, torch.nn.Module]] = []  # (robot-minutes, version, policy)

            def look(steps: int, elapsed: float) -> None:
                rollout = ray.get(platform.data.rollout_stats.remote(TASK, CURVE_WINDOW))
                point = {
                    "robot_minutes": round(steps / ROBOT_HZ / 60, 2),
                    "success": rollout.get("success_rate"),
                    "episodes": rollout.get("episodes", 0),
                    "learner_step": step(),
                    "wall_s": round(elapsed, 1),
                }
                curve.append(point)
                mark = online_steps * (len(snapshots) + 1) / (SNAPSHOTS + 1)
                if len(snapshots) < SNAPSHOTS and mark <= steps < online_steps:  # the end's: below
                    snapshots.append((point["robot_minutes"], *served_policy(platform, alg, seed)))
                if elapsed - shown[0] > 60:
                    shown[0] = elapsed
                    print(f"    {alg} seed {seed}: {point}", flush=True)

            t1 = time.monotonic()
            _, steps, _ = run_fleet_until(
                platform, ENV, ROBOTS, TASK, online_steps, poll_s=CURVE_EVERY_S, on_poll=look,
                seed=100 * (seed + 1), control_hz=CONTROL_HZ, lockstep=True,
            )  # fmt: skip
            end_version, end_policy = served_policy(platform, alg, seed)
            status = ray.get(learner.status.remote())
        finally:
            platform.stop()
    success_at = [
        {"robot_minutes": minutes, "version": version, "success": success_of(policy, seed, n_eval)}
        for minutes, version, policy in snapshots
    ]
    return {
        "success_start": success_of(start_policy, seed, n_eval),
        "success_end": success_of(end_policy, seed, n_eval),
        "success_at": success_at,
        "robot_minutes": round(steps / ROBOT_HZ / 60, 2),
        "online_env_steps": steps,
        "versions": [start_version, end_version],
        "learner_steps": status.get("step"),
        "learner_end": status.get("losses"),  # the last report: losses and diagnostics (Q, distances)
        "control_hz": CONTROL_HZ,
        "setting": SETTINGS.get(alg, alg),  # PPO: PPO_LEARNER
        "offline_steps": offline_steps,
        "offline_wall_s": round(offline_s, 1),
        "online_wall_s": round(time.monotonic() - t1, 1),
        "curve": curve,
    }


def summarize(cells: dict[int, dict]) -> dict[str, Any]:
    """Mean and standard error over seeds of a (task, algorithm)'s cells, the per-seed curves kept."""

    def stat(key: str) -> tuple[float, float | None]:
        return mean_sem([c[key] for c in cells.values()])

    (start, start_sem), (end, end_sem) = stat("success_start"), stat("success_end")
    success_at = []  # the deterministic curve before the end: the i-th snapshot of every seed
    for i in range(min(len(c.get("success_at", [])) for c in cells.values())):
        points = [c["success_at"][i] for c in cells.values()]
        success, success_sem = mean_sem([p["success"] for p in points])
        minutes = round(float(np.mean([p["robot_minutes"] for p in points])), 2)
        success_at.append({"robot_minutes": minutes, "success": success, "success_sem": success_sem})
    return {
        "success_start": start, "success_start_sem": start_sem,
        "success_end": end, "success_end_sem": end_sem,
        "robot_minutes": stat("robot_minutes")[0],
        **({"success_at": success_at} if success_at else {}),
        "seeds": sorted(cells),
        "curve": {str(s): c["curve"] for s, c in cells.items()},
        "per_seed": {str(s): {k: v for k, v in c.items() if k != "curve"} for s, c in cells.items()},
    }  # fmt: skip
