"""Startup: ``fleetrl run configs/local.yaml`` from the command to the first robot step, and where the time goes.

Each run starts the shipped local config as a user would (its own process, a fresh state folder, free ports),
polls ``GET /v1/robots`` every 0.25 s, and records when the REST API first answers and when the first robot
has a step; the platform's own phase timings (Ray, registry, actors, REST, learners: the ``platform ... up
in`` log line) come from its output. ``--quick``: one run; full: three (medians reported).

    MUJOCO_GL=egl .venv/bin/python benchmarks/startup.py [--quick]

Writes ``benchmarks/results/startup.json`` and prints a summary. Goal (the speed issue): first robot step in
under 30 s on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from common import ROOT, run_header, write_json

from fleetrl.testing.net import free_port

PHASES = re.compile(r"up in ([\d.]+) s \(([^)]*)\)")


def one_run(workdir: Path) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    port = free_port()
    cfg.update(state_dir=str(workdir / "state"))
    cfg["rest"]["port"] = port
    cfg["gateway"]["bind"] = f"tcp://127.0.0.1:{free_port()}"
    path = workdir / "local.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = workdir / "run.log"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    fleetrl = Path(sys.executable).with_name("fleetrl")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(fleetrl), "run", str(path), "--duration", "10", "--plain"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)  # fmt: skip
    token_file, rest_s, first_step_s = workdir / "state" / "admin_token", None, None
    while proc.poll() is None and first_step_s is None and time.monotonic() - t0 < 240:
        time.sleep(0.25)
        if not token_file.exists():
            continue
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/v1/robots", timeout=2,
                          headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})  # fmt: skip
        except httpx.HTTPError:
            continue
        if r.status_code != 200:
            continue
        rest_s = rest_s or round(time.monotonic() - t0, 2)
        if any((x.get("stats") or {}).get("steps", 0) > 0 for x in r.json()):
            first_step_s = round(time.monotonic() - t0, 2)
    proc.wait(timeout=120)
    found = PHASES.search(log.read_text())
    phases = {}
    if found:
        phases = {
            k: float(v.removesuffix(" s")) for k, v in (p.split(" ", 1) for p in found.group(2).split(", "))
        }
        phases["platform_total"] = float(found.group(1))
    return {"rest_answers_s": rest_s, "first_robot_step_s": first_step_s, "platform_phases_s": phases}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run instead of three")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.json"))
    args = ap.parse_args(argv)
    runs = []
    for i in range(1 if args.quick else 3):
        with tempfile.TemporaryDirectory(prefix="fleetrl-startup-") as tmp:
            runs.append(one_run(Path(tmp)))
        print(f"  run {i + 1}: {runs[-1]}", flush=True)
    median = {k: statistics.median(r[k] for r in runs if r[k] is not None)
              for k in ("rest_answers_s", "first_robot_step_s")}  # fmt: skip
    result = {
        **run_header(args),
        "config": "configs/local.yaml",
        "runs": runs,
        "median": median,
        "goal_s": 30,
    }
    write_json(result, args.out)
    print(f"startup: first robot step {median['first_robot_step_s']:.1f} s after `fleetrl run` "
          f"(REST answering at {median['rest_answers_s']:.1f} s), goal < 30 s -> {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
