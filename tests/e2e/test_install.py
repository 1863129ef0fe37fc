"""The robot side installs alone: the wheel built from this repository, installed into a fresh venv, pulls
only the robot's dependencies (no Ray, torch, MuJoCo, gymnasium or transformers), its SDK imports, and a
platform command says which extra to install instead of failing with a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_ON_A_ROBOT = {"ray", "torch", "mujoco", "gymnasium", "transformers", "ogbench", "pyarrow", "fastapi"}


def run(*cmd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)


def test_the_robot_install_is_the_base_wheel_without_the_platform(tmp_path):
    wheels = tmp_path / "wheels"
    built = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, ROOT
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("fleetrl-*.whl")
    env = tmp_path / "robot-pc"
    # no pip of its own (ensurepip took half of this test): this pip installs into it (--python), resolving
    # the wheel's dependencies as the robot's own pip would
    venv.create(env, with_pip=False)
    pip = [sys.executable, "-m", "pip", "--python", env / "bin" / "python", "--disable-pip-version-check"]
    installed = run(*pip, "install", "-q", wheel)
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = json.loads(run(*pip, "list", "--format=json").stdout)
    names = {p["name"].lower() for p in listed}
    assert {"fleetrl", "numpy", "pyzmq", "msgpack", "httpx", "simplejpeg", "pillow"} <= names, names
    assert not names & NOT_ON_A_ROBOT, names & NOT_ON_A_ROBOT

    python = env / "bin" / "python"
    sdk = run(python, "-c", "from fleetrl.robots.client import FleetRunner, RobotClient, register; "
              "from fleetrl.robots.protocol import encode_frame; import fleetrl, pathlib; "
              "print(pathlib.Path(fleetrl.__file__).parent.joinpath('py.typed').exists())")  # fmt: skip
    assert sdk.returncode == 0 and sdk.stdout.strip() == "True", sdk.stderr[-3000:]
    fleetrl = env / "bin" / "fleetrl"
    assert run(fleetrl, "--version").stdout.strip() == "fleetrl 0.1.0"
    platform = run(fleetrl, "run", ROOT / "configs" / "local.yaml")
    assert platform.returncode == 2, platform.stderr[-3000:]
    (line,) = platform.stderr.strip().splitlines()  # one line that says what to install, no traceback
    assert re.fullmatch(
        r"error: fleetrl run needs \w+, which is not installed: pip install 'fleetrl\[platform\]'", line
    )
    # the operator's commands the README says a robot-only install runs: they import, and say in one line
    # that no platform answers here (no rich: their progress falls back to plain lines)
    evaluate = run(fleetrl, "rollout", "evaluate", "reach", "--sim", "Reacher-v5", "--api", "http://127.0.0.1:9",
                   "--token", "t")  # fmt: skip
    assert evaluate.returncode == 3 and "cannot reach the platform" in evaluate.stderr, evaluate.stderr[
        -3000:
    ]
