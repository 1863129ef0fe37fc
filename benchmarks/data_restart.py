"""Data-server restart with a large store: how soon it answers, and how long its replay takes to refill.

A synthetic store of ``--store-episodes`` stored episodes (Reacher-shaped: 10-D state, 2-D action, 50
steps, online; built once with ``EpisodeStore.put`` and kept under ``--store-dir`` for later runs) is
opened by a data-server actor on a local Ray, as Ray restarts one after a crash. Measured:

* ``answer_s``: actor created -> ``ready()`` answered (the store open, its catalog reconciled with the
  files, the refill started): what a fleet waits for after a restart; the issue's bound is 5 s;
* ``first_sample_s`` / ``first_ingest_s``: actor created -> first ``sample_chunks(256)`` that returns a
  batch (asked again every 10 ms while the replay is still empty, as a learner does) / first new episode
  stored and acked, while the refill is under way;
* ``refill_s``, ``refill_episodes``: the background refill, newest first, up to the replay's capacity
  (``--capacity`` rows, the config default 1,000,000) and the catalog rows it planned;
* ``ingest_during_refill_ms``: ``ingest`` latency percentiles of episodes sent while the refill runs;
* ``baseline_full_rebuild_s``: the same store read back whole in-process (``iter_episodes`` into a
  ``Replay``), what the data server did before it answered until this change, measured in the same run.

    MUJOCO_GL=egl .venv/bin/python benchmarks/data_restart.py [--quick] [--store-episodes 100000]

Writes ``benchmarks/results/data_restart.json`` and prints a summary, then a one-line summary last.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import ray
from common import percentiles, run_header, write_json

from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.replay import Replay
from fleetrl.workers.data.server import DataConfig, DataServer
from fleetrl.workers.data.store import EpisodeStore
from fleetrl.workers.task import TaskConfig

ROOT = Path(__file__).resolve().parent.parent
TASK, STEPS, OBS = "reach", 50, {"state": ((10,), "float32")}
INGEST_SAMPLES = 50
TARGET_ANSWER_S = 5.0


def task_config() -> TaskConfig:
    return TaskConfig(
        name=TASK,
        observation={"state": {"shape": [10]}},
        action={"shape": [2], "low": -1, "high": 1},
        chunk_len=4,
    )


def build_store(root: Path, n: int) -> float:
    """Fill ``root`` up to ``n`` episodes (kept between runs); returns the seconds spent adding."""
    t0 = time.monotonic()
    with EpisodeStore(str(root)) as store:
        have = store.stats()["episodes"]
        for i in range(have, n):
            ep = synthetic_episode(
                STEPS, task=TASK, episode_id=f"ep-{i:07d}", robot_id=f"robot-{i % 64}", obs_spec=OBS, seed=i
            )
            store.put(ep)
            if (i + 1) % 5000 == 0:
                print(f"  store: {i + 1} / {n} episodes ({time.monotonic() - t0:.0f} s)", flush=True)
    return time.monotonic() - t0


def full_rebuild(root: Path, capacity: int) -> tuple[float, int]:
    """The previous restart path, in-process: every stored episode into a replay before answering."""
    t0 = time.monotonic()
    replay = Replay(chunk_len=4, gamma=0.99, capacity=capacity)
    with EpisodeStore(str(root)) as store:
        n = sum(replay.add(ep, snapshot) for snapshot, ep in store.iter_episodes())
    return time.monotonic() - t0, n


def restart(root: Path, capacity: int) -> dict[str, Any]:
    """A data-server actor opening ``root``: when it answers, samples and ingests, and its refill."""
    cfg = DataConfig(replay={"capacity": capacity})
    actor_cls = ray.remote(num_cpus=0)(DataServer)
    t0 = time.monotonic()
    server = actor_cls.remote(cfg, [task_config()], str(root))
    ready = ray.get(server.ready.remote(), timeout=600)
    answer_s = time.monotonic() - t0
    while True:  # as a learner does: an empty replay answers "no data" and it asks again
        try:
            ray.get(server.sample_chunks.remote(TASK, 256), timeout=600)
            break
        except ray.exceptions.RayTaskError:
            time.sleep(0.01)
    first_sample_s = time.monotonic() - t0
    ingest_ms: list[float] = []
    first_ingest_s = None
    for i in range(INGEST_SAMPLES):
        ep = synthetic_episode(STEPS, task=TASK, episode_id=f"new-{time.time_ns()}-{i}", obs_spec=OBS, seed=i)
        t = time.monotonic()
        assert ray.get(server.ingest.remote(ep), timeout=600)["stored"]
        ingest_ms.append(1000 * (time.monotonic() - t))
        first_ingest_s = first_ingest_s or time.monotonic() - t0
    during = not ray.get(server.stats.remote(TASK))["refill"]["done"]
    while not ray.get(server.wait_refilled.remote(5.0), timeout=60):
        refill = ray.get(server.stats.remote(TASK))["refill"]
        print(f"  refill: {refill['loaded']} / {refill['episodes']} episodes", flush=True)
    stats = ray.get(server.stats.remote(TASK))
    ray.get(server.stop.remote())
    ray.kill(server)
    return {
        "answer_s": round(answer_s, 3),
        "first_sample_s": round(first_sample_s, 3),
        "first_ingest_s": round(first_ingest_s, 3),
        "ingest_during_refill_ms": percentiles(ingest_ms, 2),
        "ingests_all_during_refill": during,
        "refill_s": stats["refill"]["seconds"],
        "refill_episodes": stats["refill"]["episodes"],
        "refill_store_open_s": stats["refill"]["open_s"],
        "replay_online_episodes": stats["replay"]["online_episodes"],
        "snapshot_at_answer": ready["snapshot"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 5,000-episode store")
    ap.add_argument(
        "--store-episodes", type=int, default=None, help="episodes in the store (100000; quick 5000)"
    )
    ap.add_argument(
        "--capacity", type=int, default=1_000_000, help="replay capacity in rows (config default)"
    )
    ap.add_argument("--store-dir", default="/tmp/fleetrl-restart-store", help="where the store is kept")
    ap.add_argument("--seed", type=int, default=0, help="unused (the store is deterministic); in the header")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_restart.json"))
    args = ap.parse_args(argv)
    if args.store_episodes is None:
        args.store_episodes = 5_000 if args.quick else 100_000
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.monotonic()
    root = Path(args.store_dir) / f"n{args.store_episodes}"
    print(f"store of {args.store_episodes} episodes at {root} ...", flush=True)
    built_s = build_store(root, args.store_episodes)
    print(f"  ready ({built_s:.0f} s spent adding); baseline: full rebuild in-process ...", flush=True)
    rebuild_s, rebuilt = full_rebuild(root, args.capacity)
    print(f"  {rebuilt} episodes in {rebuild_s:.1f} s; restarting a data-server actor on it ...", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        run = restart(root, args.capacity)
    finally:
        ray.shutdown()
    result = {
        **run_header(args),
        "wall_s": round(time.monotonic() - t0, 1),
        "store_episodes": args.store_episodes,
        "episode_steps": STEPS,
        "replay_capacity_rows": args.capacity,
        **run,
        "baseline_full_rebuild_s": round(rebuild_s, 2),
        "baseline_full_rebuild_episodes": rebuilt,
        "target_answer_s": TARGET_ANSWER_S,
    }
    out = write_json(result, args.out)
    print(
        f"answered {result['answer_s']:.2f} s after start (target {TARGET_ANSWER_S:.0f} s; before: after the "
        f"whole rebuild, {rebuild_s:.1f} s here), first sample {result['first_sample_s']:.2f} s, ingest "
        f"p99 {result['ingest_during_refill_ms']['p99']} ms during the refill, refill of "
        f"{result['refill_episodes']} episodes in {result['refill_s']} s\n{out}",
        flush=True,
    )
    print(summary_line(result))


def summary_line(r: dict[str, Any]) -> str:
    return (
        f"data_restart: {r['store_episodes']} episodes stored, answers in {r['answer_s']:.2f} s (was "
        f"{r['baseline_full_rebuild_s']:.1f} s), replay refilled in {r['refill_s']} s"
    )


if __name__ == "__main__":
    main()
