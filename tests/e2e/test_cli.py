"""The user-facing commands, run as a user would (subprocesses; `fleetrl run` starts its own local Ray)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from fleetrl.testing.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def _fleetrl(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleetrl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": "egl", **(env or {})},
    )


def test_config_check_accepts_the_shipped_config():
    r = _fleetrl("config", "check", "configs/local.yaml")
    assert r.returncode == 0, r.stderr
    assert "reach" in r.stdout and "cube-single" in r.stdout


def test_config_check_names_file_key_and_allowed_values(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/local.yaml").read_text())
    cfg["tasks"][0]["inference"]["replica"] = 3
    cfg["gateway"]["lease_timeout_s"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = _fleetrl("config", "check", str(bad))
    assert r.returncode == 2
    assert str(bad) in r.stderr
    assert "tasks[0].inference.replica: unknown key" in r.stderr and "replicas" in r.stderr
    assert "gateway.lease_timeout_s" in r.stderr and "greater than 0" in r.stderr


def test_run_starts_platform_and_robots_then_stops_cleanly(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/local.yaml").read_text())
    cfg["state_dir"] = str(tmp_path / "state")
    cfg["rest"]["port"] = free_port()
    cfg["gateway"]["bind"] = f"tcp://127.0.0.1:{free_port()}"
    cfg["sim_robots"] = [
        {"env": "Reacher-v5", "task": "reach", "count": 3},
        {"env": "cube-single-singletask-task1-v0", "task": "cube-single", "count": 1},
    ]
    cfg["oracle_demos"][0]["n"] = 3  # a short run: a few demos are enough to start the offline learner
    cfg["tasks"][0]["learner"]["config"]["steps_per_update"] = 200  # PPO updates within the run
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _fleetrl(
        "run",
        str(path),
        "--duration",
        "150",
        "--until-version",
        "1",
        "--plain",
        env={"FLEETRL_ADMIN_TOKEN": "e2e"},
    )
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    assert "stopped." in out
    last = [line for line in out.splitlines() if line.startswith("[")][-1]
    reach = re.search(r"reach: (\d+)/(\d+) online, (\d+) steps, (\d+) episodes", last)
    cube = re.search(r"cube-single: (\d+)/(\d+) online, (\d+) steps", last)
    assert reach and cube, last
    assert reach.group(1) == reach.group(2) == "3" and int(reach.group(3)) > 100 and int(reach.group(4)) >= 3
    assert cube.group(2) == "1" and int(cube.group(3)) > 20
    assert re.search(r"obs→action p50 [\d.]+ ms", last)
    assert "cube-single: 3 demos stored" in out
    # Both learners ran inside Ray Train and published new weights to the fleet.
    ppo = re.search(r"ppo (?:offline |online )?step (\d+) v(\d+)", last)  # the line shows the phase
    qam = re.search(r"qam (?:offline |online )?step (\d+) v(\d+)", last)
    assert ppo and qam, last
    # The run stops once both learners have published (at most 150 s: a cold, loaded CI machine is slow).
    assert "every learner has published version 1: stopping" in out, out[-3000:]
    assert int(ppo.group(1)) >= 1 and int(ppo.group(2)) >= 1, out[-3000:]
    assert int(qam.group(1)) >= 50 and int(qam.group(2)) >= 1, out[-3000:]  # cube-single publishes every 50
