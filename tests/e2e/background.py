"""End-to-end runs that take a minute of mostly waiting (a 3-node cluster failing over), started in their own
processes when the tests are collected, so they run beside the unit tests (which share the cores but not
their clocks: nothing there is timed). ``fleetrl run`` (``test_cli.py``) was tried here too: beside the
cluster scenario and the unit tests it made the three slower than it saved (252 s vs 229 s for unit + e2e). The tests that read them
open the e2e folder and wait for them, so they are over before any other e2e test starts a Ray: the
cluster's address file would otherwise name it to a bare ``ray.init()``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

RUNS = pytest.StashKey[dict]()
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 540


def cluster_scenario(folder: Path) -> tuple[list[str], dict[str, str]]:
    """``test_cluster.py``'s: the node-failure scenario, quick, writing ``node_failure.json``."""
    return ["-m", "fleetrl.testing.node_failure", "--quick", "--out", str(folder / "node_failure.json")], {}


# test file -> the run its tests read
BACKGROUND: dict[str, Callable[[Path], tuple[list[str], dict[str, str]]]] = {
    "test_cluster.py": cluster_scenario,
}


def start_runs(config: pytest.Config, files: set[str]) -> None:
    runs = {}
    for name in sorted(files & set(BACKGROUND)):
        folder = Path(tempfile.mkdtemp(prefix=f"fleetrl-e2e-{Path(name).stem}-"))
        argv, env = BACKGROUND[name](folder)
        proc = subprocess.Popen(
            [sys.executable, *argv],
            env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), **env},
            stdout=(folder / "stdout.txt").open("w"),
            stderr=(folder / "stderr.txt").open("w"),
            cwd=ROOT,
        )
        runs[name] = {"proc": proc, "folder": folder}
    config.stash[RUNS] = runs


def finished(config: pytest.Config, name: str) -> tuple[int | str, str, str, Path]:
    """The run of test file ``name`` once its process has ended: (exit code, stdout, stderr, its folder)."""
    run = config.stash[RUNS][name]
    try:
        code: int | str = run["proc"].wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        run["proc"].kill()
        code = f"timed out after {TIMEOUT_S} s"
    folder = run["folder"]
    return code, (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text(), folder


def stop_runs(config: pytest.Config) -> None:
    for run in config.stash.get(RUNS, {}).values():
        if run["proc"].poll() is None:
            run["proc"].kill()
