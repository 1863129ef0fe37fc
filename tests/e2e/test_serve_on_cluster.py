"""`fleetrl serve` on a running Ray cluster: attached with ``--address``, and submitted with ``ray job
submit`` (Ray's job API, which sets RAY_ADDRESS). It prints the REST URL and the robot endpoint with the
head's IP (the gateway binds 0.0.0.0), a robot registered at that URL gets actions, and Ctrl-C stops it.
A task created over REST in the first run is served again by the second (same state folder).
The cluster is ``ray.cluster_utils.Cluster``; this process only talks HTTP to it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml
from ray._common import utils as ray_utils
from ray.cluster_utils import Cluster
from ray.job_submission import JobStatus, JobSubmissionClient

from fleetrl.robots.client import FleetRunner, RobotClient, register
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.net import free_port
from tests.conftest import reacher_task

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "serve-on-cluster-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXTRA_TASK = reacher_task("reach-extra", chunk_len=2)  # created over REST while the first run serves


def platform_yaml(tmp_path: Path) -> tuple[Path, int, int]:
    cfg = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    reach = next(t for t in cfg["tasks"] if t["name"] == "reach")
    reach.pop("learner")  # serving only: keeps the run short
    reach["inference"]["replicas"] = 1
    rest_port, gw_port = free_port(), free_port()
    cfg.update(
        state_dir=str(tmp_path / "state"),
        tasks=[reach],
        sim_robots=[],
        oracle_demos=[],
        data={"replay": cfg["data"]["replay"]},
        rest={"host": "127.0.0.1", "port": rest_port},
        gateway={"bind": f"tcp://0.0.0.0:{gw_port}", "resources": {"robot_gateway": 1}},
    )
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, rest_port, gw_port


def wait_line(proc: subprocess.Popen, pattern: str, timeout: float, seen: list[str]) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no line matching {pattern!r}; output so far:\n{''.join(seen)}")


def robot_gets_actions(api: str, task: str = "reach") -> None:
    """Register one Reacher at ``api`` and drive it until it has received action chunks."""
    robot = SimRobot("Reacher-v5", seed=0, control_hz=50.0)
    info = register(api, TOKEN, f"remote-{time.monotonic_ns()}", task, robot)
    client = RobotClient.from_registration(robot, info)
    runner, stop = FleetRunner([client]), threading.Event()
    thread = threading.Thread(target=runner.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while client.counters["replies"] < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(10)
        runner.close()
    assert client.counters["replies"] >= 5, client.counters


def shutdown_within(cluster: Cluster, seconds: float) -> None:
    """``cluster.shutdown()``, or SIGKILL for every process of its head after ``seconds``: Ray's dashboard
    once ignored its SIGTERM, spinning, and Ray's shutdown waited on it for good (then the test session's
    own Ray would have attached to the half-dead cluster its address file still named)."""
    done = threading.Thread(target=cluster.shutdown, daemon=True)
    done.start()
    done.join(seconds)
    if done.is_alive() and cluster.head_node is not None:
        for infos in cluster.head_node.all_processes.values():
            for info in infos:
                info.process.kill()
        done.join(10)
    ray_utils.reset_ray_address()


def test_serve_attaches_to_a_running_cluster_and_runs_as_a_ray_job(tmp_path):
    dashboard_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,
            "resources": {"robot_gateway": 1},
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
        },
    )
    head_ip = cluster.address.split(":")[0]
    config, rest_port, gw_port = platform_yaml(tmp_path)
    env = {**os.environ, "FLEETRL_ADMIN_TOKEN": TOKEN, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    try:
        # 1. on the head, attached to the running cluster
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetrl.cli", "serve", str(config), "--address", cluster.address],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        seen: list[str] = []
        try:
            api = wait_line(proc, r"^REST (\S+)", 180, seen).group(1)
            endpoint = wait_line(proc, r"robots connect to (\S+)", 10, seen).group(1)
            assert api == f"http://127.0.0.1:{rest_port}"
            assert endpoint == f"tcp://{head_ip}:{gw_port}"  # 0.0.0.0 made concrete: the gateway node's IP
            robot_gets_actions(api)
            created = httpx.post(f"{api}/v1/tasks", json=EXTRA_TASK, headers=AUTH, timeout=120)
            assert created.status_code == 201, created.text
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, "".join(seen) + out
        assert "stopped." in out

        # 2. the same entrypoint through Ray's job API
        jobs = JobSubmissionClient(f"http://127.0.0.1:{dashboard_port}")
        job = jobs.submit_job(
            entrypoint=f"{sys.executable} -m fleetrl.cli serve {config}",
            runtime_env={"env_vars": {"FLEETRL_ADMIN_TOKEN": TOKEN, "MUJOCO_GL": env["MUJOCO_GL"]}},
        )
        try:
            deadline = time.monotonic() + 180
            while "robots connect to" not in jobs.get_job_logs(job):
                status = jobs.get_job_status(job)
                assert status == JobStatus.RUNNING or status == JobStatus.PENDING, jobs.get_job_logs(job)
                assert time.monotonic() < deadline, jobs.get_job_logs(job)
                time.sleep(1)
            assert httpx.get(f"http://127.0.0.1:{rest_port}/healthz").status_code == 200
            robot_gets_actions(f"http://127.0.0.1:{rest_port}")
            extra = httpx.get(f"http://127.0.0.1:{rest_port}/v1/tasks/reach-extra", headers=AUTH)
            assert extra.status_code == 200 and extra.json()["chunk_len"] == 2, extra.text  # restored
            robot_gets_actions(f"http://127.0.0.1:{rest_port}", task="reach-extra")
        finally:
            jobs.stop_job(job)
            deadline = time.monotonic() + 60
            while jobs.get_job_status(job) not in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED):
                assert time.monotonic() < deadline
                time.sleep(0.5)
    finally:
        shutdown_within(cluster, 60)
