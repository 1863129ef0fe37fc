"""Learning: PPO through the whole platform vs. a plain loop, and BC / AWR / QAM on cube-single from demos.

(a) ``ppo_reacher``: PPO on Reacher-v5 with CleanRL's ``ppo_continuous_action`` settings (``PPOConfig``'s
defaults, 2048 env steps per update), 200k env steps, seeds 0-2, the same policy config, seeds and env-step
budget on three sides: the platform asynchronous (``--robots`` sim robots at ``--hz``, faster than real
time), the platform in lockstep, and the plain single-process loop (``ppo_cells.py`` says how each side runs
and what the final return, the ratio and the evaluation are). The hold fraction is reported beside them.

(a') ``ppo_reacher_normalized_obs`` (``--only ppo_norm``): part (a) again with the Gaussian policy's running
observation normalisation (``normalize_obs``, CleanRL's ``NormalizeObservation`` + clip 10) on all three
sides. Added after part (a)'s asynchronous seed 2 collapsed twice into a policy that spins Reacher's first
joint (observation entries up to ~50, gradient norms 20-75 under the 0.5 clip); part (a) stays as it was.

(a'') ``ppo_mujoco`` (``--only ppo_mujoco --envs Hopper-v5,HalfCheetah-v5 [--cleanrl DIR]``): the same
comparison on more gymnasium MuJoCo tasks (fixed before running: Hopper-v5, which terminates, and
HalfCheetah-v5, which does not; the same budget, seeds, robots and rate as part (a)) with both of CleanRL's
normalisations on every side (``normalize_obs`` and PPO's ``normalize_rewards``: returns run to the
hundreds there), and CleanRL's own script's figure beside. The platform's learner trains on pieces of
running episodes (``--segment-steps``, default 2048 / robots = 256, CleanRL's rollout length per environment;
results before 2026-12-05 trained on whole episodes and have no ``segment_steps`` key).

(b) ``offline``: BC, AWR, QAM and RLPD on OGBench cube-single tasks 1 and 4 from an expert and a
mixed-quality dataset, several seeds each, in worker processes (``offline_cells.py`` says what was fixed
before any outcome: datasets, budget, seeds, evaluation). ``offline.{expert,mixed}.{task}.{alg}`` holds
``success_mean``, ``success_sem`` and ``seeds``.

(c) ``online``: QAM, AWR and BC on cube-single task 1 through the whole platform, from an offline start on
the expert dataset, success vs robot time (``online_cells.py`` says what was fixed before any outcome).
``online.task1.{alg}`` holds ``success_start``, ``success_end``, ``robot_minutes`` and ``curve`` (per seed).

(d) ``rlpd_reacher``: RLPD against PPO on Reacher-v5 through the whole platform from scratch, per robot step:
the same robots, rate (the preset's 20 Hz, lockstep) and env-step budget for both (``rlpd_cells.py`` says
what was fixed before any outcome). ``rlpd_reacher.{rlpd,ppo}`` holds ``return``, ``eval_return``,
``eval_success`` (mean, ``_sem``) and ``curve`` (per seed); ``--rlpd-algorithms qam`` adds QAM from scratch
as a third side (the other sides keep their figures).

    MUJOCO_GL=egl .venv/bin/python benchmarks/learning.py [--quick]
        [--only ppo|ppo_norm|ppo_mujoco|offline|online|rlpd_reacher]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import time
from pathlib import Path

import numpy as np
import offline_cells
import online_cells
import ppo_cells
import rlpd_cells
import torch
from common import run_header, write_json

from fleetrl.algorithms.base import registry

ROOT = Path(__file__).resolve().parent.parent
PARTS = {  # --only: result key
    "ppo": "ppo_reacher",
    "ppo_norm": "ppo_reacher_normalized_obs",
    "ppo_mujoco": "ppo_mujoco",
    "offline": "offline",
    "online": "online",
    "rlpd_reacher": "rlpd_reacher",
}
REACHER = "Reacher-v5"
BUDGETS = {  # quick / full
    "ppo_env_steps": (12_288, 200_704),
    "ppo_seeds": (1, 3),
    "eval_episodes": (5, 50),
    "offline_updates": (40, 1000),
    "offline_seeds": (1, 3),
    "online_env_steps": (2_000, 30_000),
    "online_seeds": (1, 3),
    "rlpd_env_steps": (2_000, 20_000),
    "rlpd_seeds": (1, 3),
}


# -- (a) PPO: platform vs plain (ppo_cells.py) -----------------------------------------------------------
def ppo_reacher(args: argparse.Namespace, normalize_obs: bool = False) -> dict:
    """Part (a); ``normalize_obs``: the same with the policy's running observation normalisation (CleanRL's
    NormalizeObservation), on all three sides."""
    result = ppo_cells.ppo_part(args, REACHER, normalize_obs)
    result["cleanrl_reference"] = (
        "CleanRL ppo_continuous_action, Reacher: about -18 at this budget (issue figure)"
    )
    return result


def ppo_mujoco(args: argparse.Namespace) -> dict:
    """Part (a''): the same comparison on more MuJoCo tasks with both of CleanRL's normalisations, CleanRL's
    own script beside."""
    cleanrl = Path(args.cleanrl) if args.cleanrl else None
    return {env: ppo_cells.ppo_part(args, env, True, True, cleanrl) for env in args.envs.split(",")}


# -- (b) offline: algorithms x datasets x tasks x seeds -------------------------------------------------
def offline_names() -> list[str]:
    """The offline cells' algorithms: the registered ones and their named settings (variants)."""
    names = [*offline_cells.ALGORITHMS, *offline_cells.VARIANTS]
    return [a for a in names if offline_cells.resolve(a)[0] in registry()]


def offline(args: argparse.Namespace) -> dict:
    """Every offline cell (or those of ``--offline-datasets`` x ``--offline-tasks`` x ``--offline-algorithms``),
    ``args.workers`` at a time; seeds 3 and 4 where RL and BC are within 0.2. A budget other than the contract's
    (``--offline-updates N``) makes rows of their own, ``{alg}_{N}u``, beside the contract's in ``--out``."""
    algs = args.offline_algorithms
    b = args.budget
    seeds = offline_cells.SEEDS[: b["offline_seeds"]]
    suffix = "" if args.offline_updates is None else f"_{b['offline_updates']}u"
    data = {(d, task): offline_cells.build_dataset(task, d, args.quick)
            for d in args.offline_datasets for task in args.offline_tasks}  # fmt: skip
    partial = Path(args.out).with_suffix(".cells.json")  # every finished cell, should the run be cut short
    cells: dict[tuple, dict] = {}
    if args.resume and partial.exists():  # cells a cut-short run finished are not run again
        cells = {tuple(int(p) if p.isdigit() else p for p in k.split("/")): v
                 for k, v in json.loads(partial.read_text()).items()}  # fmt: skip
        print(f"  resuming: {len(cells)} finished cells from {partial}", flush=True)
    results = {k: c["success"] for k, c in cells.items()}

    def run(keys: list[tuple]) -> None:
        keys = [k for k in keys if k not in cells]
        if not keys:
            return
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.workers) as pool:
            jobs = {
                k: pool.apply_async(offline_cells.run_cell, (k[1], k[2].removesuffix(suffix), k[3],
                                    data[(k[0], k[1])], b["offline_updates"], b["eval_episodes"]))
                for k in keys
            }  # fmt: skip
            for k, job in jobs.items():
                cells[k] = job.get()
                results[k] = cells[k]["success"]
                partial.write_text(json.dumps({"/".join(map(str, c)): v for c, v in cells.items()}, indent=1))
                print(
                    f"  {'/'.join(map(str, k))}: success {results[k]:.2f} ({cells[k]['train_s']} s)",
                    flush=True,
                )

    rows = [f"{alg}{suffix}" for alg in algs]
    run([(d, task, row, s) for (d, task) in data for row in rows for s in seeds])
    bc = f"bc{suffix}"
    if not args.quick and not args.no_extra_seeds and bc in rows:  # the contract: 5 seeds where RL and BC
        close = [(d, task, row) for (d, task) in data for row in rows if row != bc  # are within 0.2
                 and abs(mean_of(results, d, task, row) - mean_of(results, d, task, bc)) < offline_cells.CLOSE]  # fmt: skip
        close += sorted({(d, task, bc) for d, task, _ in close})
        run([(*cell, s) for cell in close for s in offline_cells.EXTRA_SEEDS])
    out: dict = {}
    for (d, task), episodes in data.items():
        row = out.setdefault(d, {}).setdefault(task, {"dataset": offline_cells.dataset_stats(episodes)})
        for name in rows:
            keys = sorted(k for k in results if k[:3] == (d, task, name))
            row[name] = offline_cells.summarize([results[k] for k in keys], [k[3] for k in keys])
            row[name]["cells"] = [cells[k] for k in keys]
            if keys and all("reference_success" in cells[k] for k in keys):  # QAM: its f_beta alone
                ref = offline_cells.summarize(
                    [cells[k]["reference_success"] for k in keys], [k[3] for k in keys]
                )
                row[name]["reference"] = {k: ref[k] for k in ("success_mean", "success_sem", "per_seed")}
            if suffix:
                row[name]["updates_budget"] = b["offline_updates"]
    return merge_kept_rows(out, args.out)


def merge_kept_rows(out: dict, path: str) -> dict:
    """The offline section with the rows of ``path``'s that this run did not produce kept beside (other
    datasets, tasks, algorithms or budgets), each marked with the run that made it; earlier entries first."""
    earlier = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    run = earlier.get("part_runs", {}).get("offline") or {k: earlier.get(k) for k in ("command", "date")}
    kept = {d: {task: {name: cell if name == "dataset" else {**cell, "run": cell.get("run") or run}
                       for name, cell in row.items()} for task, row in tasks.items()}
            for d, tasks in earlier.get("offline", {}).items()}  # fmt: skip
    return union(kept, out, lambda tasks, new: union(tasks, new, lambda row, new: union(row, new, None)))


def union(old: dict, new: dict, both) -> dict:
    """``old``'s keys in their order, then ``new``'s others; ``new``'s value where only it has the key (or
    ``both`` is None), ``both(old's, new's)`` where both have it."""
    keys = [*old, *(k for k in new if k not in old)]
    return {k: old[k] if k not in new else new[k] if k not in old or both is None else both(old[k], new[k])
            for k in keys}  # fmt: skip


def mean_of(results: dict, d: str, task: str, alg: str) -> float:
    return float(np.mean([v for k, v in results.items() if k[:3] == (d, task, alg)]))


def plot_offline(offline_result: dict, path: Path) -> None:
    """Success (mean +- s.e.m. over seeds) per algorithm, one panel per dataset x task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, task) for d in offline_result for task in offline_result[d]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), sharey=True, squeeze=False)
    for ax, (d, task) in zip(axes[0], panels, strict=True):
        row = offline_result[d][task]
        algs = [a for a in row if a != "dataset"]
        means = [row[a]["success_mean"] for a in algs]
        sems = [row[a]["success_sem"] or 0.0 for a in algs]
        ax.bar(algs, means, yerr=sems, capsize=3, color="#4c72b0")
        ax.set_title(f"{d} / {task}", fontsize=9)
        ax.tick_params(axis="x", labelrotation=40, labelsize=8)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("success rate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- (c) online: from an offline start, through the platform --------------------------------------------
def online(args: argparse.Namespace) -> dict:
    """Every online cell, one at a time (each is a whole platform); finished cells kept for ``--resume``.
    A budget other than the contract's (``--online-minutes``, ``--online-own-updates``) makes rows of their
    own, ``{alg}_own{N}_{M}min``."""
    b = args.budget
    episodes = offline_cells.build_dataset("task1", "expert", args.quick)
    partial = Path(args.out).with_suffix(".online.cells.json")
    cells: dict[str, dict] = json.loads(partial.read_text()) if args.resume and partial.exists() else {}
    cells = {k: c for k, c in cells.items() if c.get("control_hz") == online_cells.CONTROL_HZ}  # same setup
    minutes = b["online_env_steps"] / online_cells.ROBOT_HZ / 60
    suffix = "" if args.online_own_updates is None else f"_own{args.online_own_updates}"
    suffix += "" if args.online_minutes is None else f"_{minutes:g}min"
    for seed in offline_cells.SEEDS[: b["online_seeds"]]:  # seed-major: a cut run has every algorithm
        for alg in args.online_algorithms:
            key = f"{alg}{suffix}/{seed}"
            if key in cells:
                continue
            print(f"  online {key} ...", flush=True)
            cells[key] = online_cells.run_cell(alg, seed, episodes, b)
            partial.write_text(json.dumps(cells, indent=1))
            c = cells[key]
            print(f"  online {key}: success {c['success_start']:.2f} -> {c['success_end']:.2f} in "
                  f"{c['robot_minutes']} robot-minutes", flush=True)  # fmt: skip
    by_row: dict[str, dict[int, dict]] = {}
    for key, cell in cells.items():
        row, seed = key.split("/")
        if row in {f"{alg}{suffix}" for alg in args.online_algorithms}:
            by_row.setdefault(row, {})[int(seed)] = cell
    rows = {row: online_cells.summarize(c) for row, c in by_row.items()}
    earlier = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    run = earlier.get("part_runs", {}).get("online") or {k: earlier.get(k) for k in ("command", "date")}
    for row, kept in earlier.get("online", {}).get("task1", {}).items():  # not rerun: kept, with their run
        if row not in rows:
            rows[row] = {**kept, "run": kept.get("run") or run}
    # the platform's algorithms first, then rows of other settings kept from --out (e.g. qam_reference_all)
    known = [a for a in online_cells.ALGORITHMS if a in rows]
    return {"task1": {a: rows[a] for a in known + sorted(rows.keys() - set(known))}}


def plot_online(online_result: dict, path: Path) -> None:
    """Two panels over robot-minutes, one colour per row: left, the fleet's own success (its last 20 episodes,
    one thin line per seed); right, the deterministic evaluations (50 episodes per seed: start, the quarters
    where a row has them, end), mean over seeds with the s.e.m. as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (fleet, evaluated) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for i, (alg, row) in enumerate(online_result["task1"].items()):
        color = plt.get_cmap("tab10")(i % 10)
        for points in row["curve"].values():
            xs = [p["robot_minutes"] for p in points if p["success"] is not None]
            ys = [p["success"] for p in points if p["success"] is not None]
            fleet.plot(xs, ys, color=color, alpha=0.45, linewidth=0.8)
        at = row.get("success_at", [])
        xs = [0.0] + [p["robot_minutes"] for p in at] + [row["robot_minutes"]]
        ys = [row["success_start"]] + [p["success"] for p in at] + [row["success_end"]]
        errs = [row["success_start_sem"]] + [p["success_sem"] for p in at] + [row["success_end_sem"]]
        evaluated.errorbar(xs, ys, yerr=errs, color=color, marker="o", markersize=3, capsize=2, label=alg)
    fleet.set_title("the fleet's last 20 episodes (per seed)", fontsize=9)
    evaluated.set_title("evaluated: 50 episodes per seed, mean ± s.e.m.", fontsize=9)
    for ax in (fleet, evaluated):
        ax.set_xlabel("robot-minutes (10 Hz)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    fleet.set_ylabel("success")
    evaluated.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("cube-single task 1 online through the platform, from an offline start", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- (d) RLPD against PPO on Reacher, per robot step ----------------------------------------------------
def rlpd_with_kept_sides(part: dict, out: str) -> dict:
    """Part (d) with the sides this run left out (``--rlpd-algorithms``) kept from ``out``, each marked with
    the run that produced it."""
    earlier = json.loads(Path(out).read_text()) if Path(out).exists() else {}
    run = earlier.get("part_runs", {}).get("rlpd_reacher") or {k: earlier.get(k) for k in ("command", "date")}
    for side in (*rlpd_cells.ALGORITHMS, *rlpd_cells.OPTIONAL):
        if side in earlier.get("rlpd_reacher", {}) and side not in part:
            kept = earlier["rlpd_reacher"][side]
            part[side] = {**kept, "run": kept.get("run") or run}
    return part


def plot_rlpd(part: dict, path: Path) -> None:
    """Mean return of the fleet's last 20 episodes vs online env steps, one line per side and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, alg in enumerate(a for a in (*rlpd_cells.ALGORITHMS, *rlpd_cells.OPTIONAL) if a in part):
        for j, points in enumerate(part[alg]["curve"].values()):
            xs = [p["env_steps"] for p in points if p["return"] is not None]
            ys = [p["return"] for p in points if p["return"] is not None]
            ax.plot(xs, ys, color=f"C{i}", alpha=0.8, label=alg if j == 0 else None)
    ax.set_xlabel(f"online env steps ({rlpd_cells.ROBOTS} robots at {rlpd_cells.CONTROL_HZ:g} Hz, lockstep)")
    ax.set_ylabel("return (last 20 episodes)")
    ax.set_title("Reacher-v5 through the platform, from scratch", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small budgets (a few minutes)")
    ap.add_argument("--only", choices=tuple(PARTS), help="run one part only")
    ap.add_argument("--robots", type=int, default=8, help="sim robots (platform) = robots (plain loop)")
    ap.add_argument("--hz", type=float, default=100.0, help="sim robots' control rate (Reacher preset: 20)")
    ap.add_argument("--workers", type=int, default=2, help="offline cells run at once (one core each)")
    ap.add_argument("--seed", type=int, default=0, help="PPO's seed (offline cells use their own list)")
    ap.add_argument("--resume", action="store_true", help="reuse the offline cells a cut-short run finished")
    ap.add_argument("--online-seeds", type=int, help="online cells: seeds 0..N-1 (default: 3, quick 1)")
    ap.add_argument(
        "--online-minutes",
        type=float,
        help="online cells: a robot-time budget other than the contract's 50 (rows {alg}_{M}min)",
    )
    ap.add_argument(
        "--online-own-updates",
        type=int,
        help="online cells: QAM/AWR's own offline updates after their BC start (default: as many as it; "
        "rows {alg}_own{N})",
    )
    ap.add_argument(
        "--offline-updates",
        type=int,
        help="offline cells: an update budget other than the contract's 1000 (rows {alg}_{N}u)",
    )
    # flag: (what it picks, the known names[, the default when not all]); cells left out keep their figures
    subsets = {
        "--online-algorithms": (
            "online cells of these algorithms (or variants)",
            online_cells.names(),
            list(online_cells.ALGORITHMS),
        ),
        "--rlpd-algorithms": (
            "part (d)'s sides",
            [*rlpd_cells.ALGORITHMS, *rlpd_cells.OPTIONAL],
            list(rlpd_cells.ALGORITHMS),
        ),
        "--offline-datasets": ("offline cells on these datasets", list(offline_cells.DATASETS)),
        "--offline-tasks": ("offline cells on these tasks", list(offline_cells.TASKS)),
        "--offline-algorithms": ("offline cells of these algorithms (or variants)", offline_names()),
    }
    for flag, (what, known, *default) in subsets.items():
        ap.add_argument(
            flag,
            default=",".join(default[0] if default else known),
            help=f"{what} only; the others keep their figures in --out",
        )
    ap.add_argument("--no-extra-seeds", action="store_true", help="skip seeds 3 and 4 of close cells")
    ap.add_argument("--chunk-len", type=int, default=ppo_cells.CHUNK_LEN, help="PPO parts: steps per chunk")
    ap.add_argument("--envs", default="Hopper-v5,HalfCheetah-v5", help="part (a''): MuJoCo tasks")
    ap.add_argument(
        "--segment-steps",
        type=int,
        help="PPO parts: the learner trains on pieces of running episodes of this many rows (0: whole "
        "episodes; default: 2048 steps per update / robots)",
    )
    ap.add_argument(
        "--cleanrl", help="part (a''): folder of CleanRL runs' out_<env>_<seed>.json to report beside"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learning.json"))
    args = ap.parse_args(argv)
    contract = {k: v[0] if args.quick else v[1] for k, v in BUDGETS.items()}
    args.budget = dict(contract)  # --offline-updates, --online-minutes and --online-seeds change this run's
    for flag, (_, known, *_default) in subsets.items():
        chosen = getattr(args, flag[2:].replace("-", "_")).split(",")
        if unknown := set(chosen) - set(known):
            ap.error(f"{flag}: unknown {sorted(unknown)}; known: {', '.join(known)}")
        setattr(args, flag[2:].replace("-", "_"), chosen)
    if args.offline_updates is not None:
        if args.offline_updates <= 0:
            ap.error("--offline-updates must be positive")
        args.budget["offline_updates"] = args.offline_updates
    if args.online_minutes is not None:
        if args.online_minutes <= 0:
            ap.error("--online-minutes must be positive")
        args.budget["online_env_steps"] = round(args.online_minutes * 60 * online_cells.ROBOT_HZ)
    if args.online_own_updates is not None:
        if args.online_own_updates < 0:
            ap.error("--online-own-updates must be >= 0")
        if others := [a for a in args.online_algorithms if online_cells.algorithm(a) not in ("qam", "awr")]:
            ap.error(f"--online-own-updates: only QAM and AWR rows have updates of their own, not {others}")
        args.budget["online_own_updates"] = args.online_own_updates
    if args.online_seeds is not None:  # a run cut to fewer seeds than the contract's (say so when reporting)
        args.budget["online_seeds"] = args.online_seeds
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("fleetrl.robots.client").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    t0 = time.monotonic()
    result = {
        **run_header(args),
        "budgets": contract | {"robots": args.robots, "control_hz": args.hz},
        "budget_overrides": {k: v for k, v in args.budget.items() if contract.get(k) != v},  # this run's
        "ppo_config": ppo_cells.PPO,
        "offline_setup": {
            "tasks": offline_cells.TASKS,
            "datasets": {
                d: [dict(zip(("oracle", "noise", "episodes"), s, strict=True)) for s in spec]
                for d, spec in offline_cells.DATASETS.items()
            },  # fmt: skip
            "algorithms": offline_cells.ALGORITHMS,
            "variants": {k: {"algorithm": a, "config": c} for k, (a, c) in offline_cells.VARIANTS.items()},
            "policy": offline_cells.POLICY,
            "replay": offline_cells.REPLAY,
            "chunk_len": offline_cells.CHUNK_LEN,
            "budget_rule": "BC: offline_updates steps; QAM and AWR: a BC start of offline_updates steps "
            "(bc_steps), then offline_updates steps of their own; RLPD: offline_updates steps (utd 1)",
        },
    }
    if args.only in (None, "ppo"):
        print("(a) PPO on Reacher-v5: plain loop, then the platform ...", flush=True)
        result["ppo_reacher"] = ppo_reacher(args)
    if args.only in (None, "ppo_norm"):
        print("(a') the same with running observation normalisation ...", flush=True)
        result["ppo_reacher_normalized_obs"] = ppo_reacher(args, normalize_obs=True)
    if args.only in (None, "ppo_mujoco"):
        print(f"(a'') PPO on {args.envs}: plain loop, then the platform ...", flush=True)
        result["ppo_mujoco"] = ppo_mujoco(args)
    if args.only in (None, "offline"):
        print("(b) offline cells on cube-single ...", flush=True)
        result["offline"] = offline(args)
        plot_offline(result["offline"], Path(args.out).with_suffix(".png"))
    if args.only in (None, "online"):
        print("(c) online cells on cube-single through the platform ...", flush=True)
        result["online"] = online(args)
        result["online_setup"] = {
            "robots": online_cells.ROBOTS,
            "control_hz": online_cells.CONTROL_HZ,
            "robot_hz": online_cells.ROBOT_HZ,
            "settings": online_cells.SETTINGS,
        }
        plot_online(result["online"], Path(args.out).with_name(Path(args.out).stem + "_online.png"))
    if args.only in (None, "rlpd_reacher"):
        print("(d) RLPD against PPO on Reacher-v5 through the platform ...", flush=True)
        result["rlpd_reacher"] = rlpd_with_kept_sides(
            rlpd_cells.rlpd_part(args.budget, tuple(args.rlpd_algorithms)), args.out
        )
        plot_rlpd(result["rlpd_reacher"], Path(args.out).with_name(Path(args.out).stem + "_rlpd_reacher.png"))
    result["wall_s"] = round(time.monotonic() - t0, 1)
    if args.only and Path(args.out).exists():  # one part rerun: the other parts' figures stay in the file
        earlier = json.loads(Path(args.out).read_text())
        kept_from = {"command": earlier.get("command"), "date": earlier.get("date")}
        for part, key in PARTS.items():  # the run that produced each kept part (older files: the file's)
            if part != args.only and key in earlier:
                result.setdefault("part_runs", {})[key] = earlier.get("part_runs", {}).get(key, kept_from)
        for key, value in earlier.items():  # the kept parts and their notes (e.g. offline_provenance)
            result.setdefault(key, value)
        if args.only == "ppo_mujoco":  # tasks left out of --envs keep their earlier figures, marked so
            for env, part in earlier.get("ppo_mujoco", {}).items():
                if env not in result["ppo_mujoco"]:
                    run = part.get("run") or {"command": earlier.get("command"), "date": earlier.get("date")}
                    result["ppo_mujoco"][env] = {**part, "run": run}
    out = write_json(result, args.out)
    print(f"wrote {out} ({result['wall_s']} s)")
    line = "learning:"
    for key, label in (("ppo_reacher", ""), ("ppo_reacher_normalized_obs", " (normalised obs)")):
        if key in result:
            p = result[key]
            line += f" PPO Reacher{label} return platform {p['platform_return']:.2f} vs plain "
            line += f"{p['plain_return']:.2f} (ratio {p['ratio']:.2f}, goal >= 0.95), lockstep "
            line += f"{p['lockstep_return']:.2f}, at {p['env_steps']} env steps, {len(p['seeds'])} seeds;"
    for env, p in result.get("ppo_mujoco", {}).items():
        clean = p.get("cleanrl") or {}
        line += (
            f" PPO {env} platform {p['platform_return']:.1f} / lockstep {p['lockstep_return']:.1f} / plain "
        )
        line += (
            f"{p['plain_return']:.1f}" + (f" / CleanRL {clean['return']['mean']:.1f}" if clean else "") + ";"
        )
    if "offline" in result:
        parts = []
        for d, tasks in result["offline"].items():
            for task, row in tasks.items():
                algs = " ".join(f"{a} {row[a]['success_mean']:.2f}" for a in row if a != "dataset")
                parts.append(f"{d}/{task}: {algs}")
        line += " offline success " + "; ".join(parts) + ";"
    if "online" in result:
        row = result["online"]["task1"]
        line += " online task1 success " + ", ".join(
            f"{a} {r['success_start']:.2f}->{r['success_end']:.2f}" for a, r in row.items()
        )
    if "rlpd_reacher" in result:
        r = result["rlpd_reacher"]
        line += (
            " Reacher per robot step ("
            + f"{r['rlpd']['env_steps']} env steps): "
            + ", ".join(
                f"{a} return {r[a]['return']:.2f} (eval success {r[a]['eval_success']:.2f})"
                for a in (*rlpd_cells.ALGORITHMS, *rlpd_cells.OPTIONAL)
                if a in r
            )
        )
    print(line)


if __name__ == "__main__":
    main()
