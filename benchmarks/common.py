"""Shared by the benchmark scripts: the platform config they run, percentile summaries, machine facts."""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fleetrl.platform.config import PlatformConfig, parse_config
from fleetrl.robots.sim import run_sim_fleet
from fleetrl.testing.net import free_port

ROOT = Path(__file__).resolve().parent.parent


def reach_config(
    state_dir: str, chunk_len: int, task_name: str = "reach", inference: dict[str, Any] | None = None
) -> PlatformConfig:
    """The shipped local config's ``reach`` task only (2 replicas, max_batch 32, no learner); free ports, a
    temp state dir; ``inference``: more of the task's inference settings."""
    data = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    task = next(t for t in data["tasks"] if t["name"] == task_name)
    task["chunk_len"] = chunk_len
    task["inference"].update(replicas=2, max_batch=32, **(inference or {}))
    task.pop("learner", None)  # serving benchmarks measure the serving path, not a learner sharing the CPUs
    data.pop("oracle_demos", None)
    data.update(state_dir=state_dir, tasks=[task], sim_robots=[])
    data.get("data", {}).pop("tasks", None)  # per-task settings of the tasks left out
    data["rest"]["port"] = free_port()
    data["gateway"]["bind"] = f"tcp://127.0.0.1:{free_port()}"
    return parse_config(data, "benchmark config")


REACHER_SPECS = {  # Reacher-v5 as a task sees it
    "observation": {"state": {"shape": [10], "dtype": "float32"}},
    "action": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
}


def tasks_config(state_dir: str, tasks: list[dict], **replay: Any) -> PlatformConfig:
    """Just these tasks, free ports, a temp state dir, no sim robots; ``replay``: ``data.replay`` keys."""
    rest, gateway = {"host": "127.0.0.1", "port": free_port()}, {"bind": f"tcp://127.0.0.1:{free_port()}"}
    data = {"name": "bench", "state_dir": state_dir, "rest": rest, "gateway": gateway, "tasks": tasks}
    if replay:
        data["data"] = {"replay": replay}
    return parse_config(data, "benchmark config")


def run_fleet_until(
    platform: Any,
    env_id: str,
    n: int,
    task: str,
    online_steps: int,
    poll_s: float = 0.5,
    on_poll: Callable[[int, float], None] | None = None,
    **fleet: Any,
) -> tuple[list, int, float]:
    """``n`` sim robots (``run_sim_fleet`` in a thread, ``fleet``: its keyword arguments) on ``platform``
    until the task's replay holds ``online_steps`` online env steps; ``on_poll(steps, elapsed_s)`` after
    every look. Returns (the robot clients, the steps seen last, the wall time until then)."""
    import ray

    stop, clients = threading.Event(), []
    runner = threading.Thread(
        target=run_sim_fleet,
        args=(env_id, n, platform.rest_url, platform.admin_token, task),
        kwargs={**fleet, "stop": stop, "on_start": clients.extend},
        daemon=True,
    )
    t0, steps = time.monotonic(), 0
    runner.start()
    while steps < online_steps:
        time.sleep(poll_s)
        steps = ray.get(platform.data.stats.remote(task))["replay"]["online_transitions"]
        if on_poll is not None:
            on_poll(steps, time.monotonic() - t0)
    wall = time.monotonic() - t0
    stop.set()
    runner.join(60)
    return clients, steps, wall


def sem(xs: Any) -> float | None:
    """Standard error of the mean over seeds (None for a single seed)."""
    a = np.asarray(xs, np.float64)
    return float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None


def mean_sem(xs: Any) -> tuple[float, float | None]:
    """Mean and standard error over seeds, rounded for a result file (no spread for one seed)."""
    spread = sem(xs)
    return round(float(np.mean(xs)), 4), None if spread is None else round(spread, 4)


def seed_means(cells: dict[int, dict[str, Any]], keys: tuple[str, ...], digits: int = 2) -> dict[str, float]:
    """Each of ``keys`` averaged over the seeds' cells, and the seeds themselves with their cells."""
    means = {k: round(float(np.mean([c[k] for c in cells.values()])), digits) for k in keys}
    return means | {"seeds": sorted(cells), "per_seed": {str(s): c for s, c in cells.items()}}


def percentiles(values: list[float], digits: int = 4) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), digits),
        "p99": round(float(np.percentile(a, 99)), digits),
        "max": round(float(a.max()), digits),
        "n": len(a),
    }


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return {"nproc": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1)}


def run_header(args: Any) -> dict[str, Any]:
    """The fields every result JSON starts with (docs/architecture.md, "Benchmarks"): command, seed, mode, machine, date."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed,
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write a benchmark's result (benchmarks/results/<script>.json)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, poll_s: float = 0.5) -> None:
    """Poll ``check`` until it is true; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout_s:.0f} s")
        time.sleep(poll_s)


def served_policy(
    platform: Any, task: str, env_id: str, policy: dict[str, Any], chunk_len: int
) -> tuple[int, Any]:
    """The task's latest published version and its weights loaded into a policy built from ``policy`` (a
    platform config's ``policy`` entry) for ``env_id``'s specs."""
    import ray
    from pydantic import TypeAdapter

    from fleetrl.models.policies import PolicyConfig, build_policy
    from fleetrl.robots.sim import SimRobot
    from fleetrl.workers.weights import to_torch_state

    version, refs, _ = ray.get(platform.weights.latest.remote(task))
    robot = SimRobot(env_id)
    try:
        cfg = TypeAdapter(PolicyConfig).validate_python(policy)
        built = build_policy(cfg, robot.observation_spec, robot.action_spec, chunk_len)
    finally:
        robot.close()
    built.load_state_dict(to_torch_state(ray.get(refs[0])))
    return version, built
