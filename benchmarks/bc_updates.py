"""BC alone on the online cells' expert dataset (cube-single task 1, 100 plan-oracle demos), evaluated at the
update counts the learners of ``learning.py``'s cells reach: the offline cells' 1,000 and 2,000, 12,000, and
the online cells' AWR (~33,000 at 100 robot-minutes) and BC (~90,000 at 50). Why: whether BC's rise when it
continues on the fleet's stream comes from the fleet's data or from more updates on the demonstrations, and
where BC on expert data ends rather than how fast it starts.

Fixed before the first run: seeds 0-2, 50 deterministic evaluation episodes per mark (evaluation seeds as the
offline cells'), the offline cells' policy, replay and batch size.

    MUJOCO_GL=egl .venv/bin/python benchmarks/bc_updates.py [--quick] [--seeds 0,1,2] [--out results/bc_updates.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import offline_cells
from common import mean_sem, write_json

MARKS = {False: (2_000, 12_000, 33_000, 90_000), True: (50, 200)}  # full / quick
EVAL_EPISODES = {False: 50, True: 5}


def run_seed(seed: int, episodes: list, marks: tuple[int, ...], n_eval: int) -> list[dict]:
    """Train BC on ``episodes``; success at every mark (the same policy trained on, not restarted)."""
    from fleetrl.testing.plain_loop import evaluate

    robot, policy, algo, replay = offline_cells.build_cell("task1", "bc", seed, episodes)
    points, done, t0 = [], 0, time.monotonic()
    for mark in marks:
        while done < mark:
            algo.update(replay.sample_chunks(algo.config.batch_size, 1.0))
            done += 1
        success = float(evaluate(robot, policy, n_eval).success_rate)
        points.append({"updates": mark, "success": success, "wall_s": round(time.monotonic() - t0, 1)})
        print(f"  seed {seed}: {points[-1]}", flush=True)
    robot.close()
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small marks, 5 evaluation episodes")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bc_updates.json"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    marks = MARKS[args.quick]
    episodes = offline_cells.build_dataset("task1", "expert", args.quick)
    per_seed = {s: run_seed(s, episodes, marks, EVAL_EPISODES[args.quick]) for s in seeds}
    rows = []
    for i, mark in enumerate(marks):
        xs = [per_seed[s][i]["success"] for s in seeds]
        success, success_sem = mean_sem(xs)
        rows.append({"updates": mark, "success": success, "success_sem": success_sem, "per_seed": xs})
    result = {"task": offline_cells.TASKS["task1"], "dataset": "expert", "seeds": seeds, "quick": args.quick,
              "eval_episodes": EVAL_EPISODES[args.quick], "marks": rows, "per_seed": per_seed}  # fmt: skip
    out = write_json(result, args.out)
    print(f"wrote {out}")
    print("bc_updates: " + ", ".join(f"{r['updates']} updates {r['success']:.2f}" for r in rows))


if __name__ == "__main__":
    main()
