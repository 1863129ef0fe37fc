"""What AWR's binary filter keeps on mixed-quality data, over training: of the chunks from successful episodes
and of those from failing ones, the share whose advantage is positive (the chunks it clones).

Why: ``awr_mixed`` (critics on observed returns, a data baseline at expectile 0.7, binary weights) beat BC by
0.39 on cube-single task 1 mixed data after 1,000 updates and fell to 0.00 after 5,000 (``learning.json``,
``offline.mixed.task1.awr_mixed_5000u``). This measures the mechanism on a task the offline benchmark does not
score (cube-single task 2, ``offline_cells.py``'s ``mixed`` dataset): trained long, the baseline V(s) fits Q of
every row it learns from (V - Q on the data shrinks to a few return units), so A is noise and the filter
keeps failing chunks as often as successful ones. ``cross_fit`` (AWRConfig) subtracts a baseline that never
learnt from the row's episode.

Each setting trains like an offline cell (``offline_cells.run_cell``: ``bc_steps`` = U, then U AWR updates,
``--seed``) and every U / 5 AWR updates reads the filter on a fixed probe of 4,096 chunks; at the end 50
deterministic evaluation episodes. ``awr_filter.json``: per setting, U, the probe rows and the success.

    MUJOCO_GL=egl .venv/bin/python benchmarks/awr_filter.py [--quick] [--updates 5000] [--settings awr_mixed,awr_xfit]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import offline_cells
from common import run_header, write_json

ROOT = Path(__file__).resolve().parent.parent
TASK = "task2"  # a development task (offline_cells.DEV_TASKS): not scored by learning.py
PROBE_ROWS = 4096


def run_setting(setting: str, updates: int, eval_episodes: int, quick: bool, seed: int) -> dict:
    """Train ``setting`` (an offline cell's algorithm name) as an offline cell does, reading its filter."""
    from fleetrl.testing.plain_loop import evaluate

    episodes = offline_cells.build_dataset(TASK, "mixed", quick)
    success = {e.episode_id: bool(e.success) for e in episodes}
    robot, policy, algo, replay = offline_cells.build_cell(TASK, setting, seed, episodes, bc_steps=updates)
    probe = replay.sample_chunks(PROBE_ROWS, 1.0)
    ok = np.array([success[str(e)] for e in probe.episode_id])
    rows, t0 = [], time.monotonic()
    for i in range(1, 2 * updates + 1):
        algo.update(replay.sample_chunks(algo.config.batch_size, 1.0))
        if i > updates and (i - updates) % max(1, updates // 5) == 0:
            rows.append(
                {
                    "awr_updates": i - updates,
                    **filter_reading(algo, probe, ok),
                    "s": round(time.monotonic() - t0),
                }
            )
            print(f"  {setting} {rows[-1]}", flush=True)
    stats = evaluate(robot, policy, eval_episodes)
    return {"updates": updates, "probe_success_rows": round(float(ok.mean()), 3), "rows": rows,
            "success": float(stats.success_rate)}  # fmt: skip


def filter_reading(algo, probe, ok: np.ndarray) -> dict:
    """The share of the probe's chunks from successful / failing episodes with A > 0, the mean A of each,
    and the RMS of A (how far the baseline is from Q on the data)."""
    adv = algo.data_advantages(algo.tensors(probe)).numpy()
    keep = adv > 0
    return {
        "kept_success": round(float(keep[ok].mean()), 3),
        "kept_fail": round(float(keep[~ok].mean()), 3),
        "adv_success_mean": round(float(adv[ok].mean()), 2),
        "adv_fail_mean": round(float(adv[~ok].mean()), 2),
        "adv_rms": round(float(np.sqrt((adv**2).mean())), 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 updates, a fifth of the data, 5 episodes")
    ap.add_argument("--updates", type=int, default=5000, help="U: BC warm start and AWR updates each")
    ap.add_argument("--settings", default="awr_mixed,awr_xfit", help="offline_cells algorithm names")
    ap.add_argument("--seed", type=int, default=0, help="training seed (the dataset is fixed)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "awr_filter.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    updates, episodes = (40, 5) if args.quick else (args.updates, 50)
    result = {
        **run_header(args),
        "task": TASK[1],
        "dataset": "mixed",
        "probe_rows": PROBE_ROWS,
        "settings": {},
    }
    for setting in args.settings.split(","):
        result["settings"][setting] = run_setting(setting, updates, episodes, args.quick, args.seed)
    out = write_json(result, args.out)
    print(f"wrote {out}")
    for setting, r in result["settings"].items():
        last = r["rows"][-1] if r["rows"] else {}
        print(f"awr_filter: {setting} after {r['updates']} updates: keeps {last.get('kept_success')} of successful "
              f"chunks, {last.get('kept_fail')} of failing ones; success {r['success']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
