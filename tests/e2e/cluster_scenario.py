"""The multi-node scenario of ``test_cluster.py`` (``python -m fleetrl.testing.node_failure --quick``), started
in its own process when the tests are collected, so its 3-node cluster comes up and fails over while the unit
tests run (they share the cores but not their clocks: nothing there is timed); its tests then wait for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCENARIO = pytest.StashKey[dict]()
TIMEOUT_S = 540


def start_scenario(config: pytest.Config) -> None:
    folder = Path(tempfile.mkdtemp(prefix="fleetrl-cluster-scenario-"))
    out, log = folder / "node_failure.json", (folder / "output.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetrl.testing.node_failure", "--quick", "--out", str(out)],
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=config.rootpath,
    )
    config.stash[SCENARIO] = {"proc": proc, "out": out, "log": folder / "output.txt"}


def scenario_result(config: pytest.Config) -> dict:
    """The scenario's result JSON, once its process has ended (it failed the test if it did not succeed)."""
    run = config.stash[SCENARIO]
    try:
        code = run["proc"].wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        run["proc"].kill()
        code = "timed out"
    assert code == 0, f"scenario failed ({code}):\n{run['log'].read_text()[-8000:]}"
    return json.loads(run["out"].read_text())


def stop_scenario(config: pytest.Config) -> None:
    run = config.stash.get(SCENARIO, None)
    if run is not None and run["proc"].poll() is None:
        run["proc"].kill()
