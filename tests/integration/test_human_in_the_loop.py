"""Human in the loop on the session platform, with OGBench cube robots: operators take over and hand back
(the gateway sends no chunk meanwhile and none stale after), the simulated operator's interventions are
stored as online steps and counted, demonstrations recorded through the SDK land in the demo buffer, and
robots return to recorded failure states (the simulator replays its way there exactly)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from fleetrl.robots import protocol as P
from fleetrl.robots.client import RobotClient, register
from fleetrl.robots.operator import OracleOperator
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.net import RawRobotSocket
from tests.conftest import ADMIN_TOKEN, delete_task
from tests.integration.helpers import FleetThread

CUBE = "cube-single-singletask-task1-v0"


def cube_task(name: str, failure_fraction: float = 0.0, learner: dict | None = None) -> dict:
    return {
        "task": {
            "learner": learner,
            "name": name,
            "observation": {"state": {"shape": [28], "dtype": "float32"}},
            "action": {"shape": [5], "dtype": "float32", "low": -1.0, "high": 1.0},
            "chunk_len": 5,
            "policy": {"family": "flow_chunk", "hidden": [32, 32], "flow_steps": 2},
            "inference": {"replicas": 1, "max_batch": 8, "num_cpus": 0},
            "return_and_explore": {"failure_fraction": failure_fraction},
        }
    }


@pytest.fixture(scope="module")
def cube(api):
    # BC with VLAC eq. 6 demonstration replay: the demo test checks the learner replays recorded demos
    learner = {"algorithm": "bc", "config": {"batch_size": 32}, "publish_every": 10, "max_updates_per_s": 5,
               "report_every_s": 0.3, "num_cpus": 0.25, "demo_replay": {"weight": 0.5, "batch_size": 16}}  # fmt: skip
    r = api.post("/v1/tasks", json=cube_task("cube-hil", learner=learner), timeout=120)
    assert r.status_code == 201, r.text
    yield "cube-hil"
    delete_task(api, "cube-hil")  # its learner trains until then


class Cubes(FleetThread):
    """Cube robots registered over REST and driven by a FleetRunner thread."""

    def __init__(self, platform, task: str, n: int, steps: int, seed: int, operators: bool = False):
        self.robots = [
            SimRobot(CUBE, seed=seed + i, control_hz=50.0, max_episode_steps=steps) for i in range(n)
        ]
        clients = []
        for i, robot in enumerate(self.robots):
            info = register(platform.rest_url, ADMIN_TOKEN, f"{task}-{seed}-{i}", task, robot)
            client = RobotClient.from_registration(robot, info)
            if operators:
                client.supervisor = OracleOperator(
                    robot, stall_steps=8, assist_steps=12, rescue_steps=15, max_steps=steps
                )
            clients.append(client)
        super().__init__(clients)

    def acked(self) -> list:
        return [ep for c in self.clients for ep in c.episodes if ep.acked]

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}: {[c.counters for c in self.clients]}"
            )
            time.sleep(0.1)


def _raw_robot(platform, api, task: str) -> tuple[RawRobotSocket, str]:
    body = {"name": "raw-hil", "task": task, "observation_spec": {"state": {"shape": [28], "dtype": "float32"}},
            "action_spec": {"shape": [5], "dtype": "float32"}}  # fmt: skip
    creds = api.post("/v1/robots", json=body).json()
    raw = RawRobotSocket(creds["endpoint"], creds.get("curve"))
    assert isinstance(raw.request(P.Hello(robot_id=creds["robot_id"], token=creds["token"])), P.Welcome)
    return raw, creds["robot_id"]


def _obs(rid: str, step: int) -> P.Obs:
    state = np.zeros(28, np.float32)
    return P.Obs(
        robot_id=rid, episode_id="hil-1", step=step, t_robot=time.monotonic(), observation={"state": state}
    )


def test_no_chunks_under_human_control_and_none_stale_after_hand_back(platform, api, cube):
    raw, rid = _raw_robot(platform, api, cube)
    assert isinstance(raw.request(_obs(rid, 0)), P.Action)
    raw.send(P.Control(robot_id=rid, episode_id="hil-1", step=1, mode="human", operator="alice"))
    refused = raw.request(_obs(rid, 1))  # a robot under human control asks for nothing; refused if it does
    assert isinstance(refused, P.Error) and refused.code == "human_control"
    row = api.get(f"/v1/robots/{rid}").json()
    assert (
        row["control"] == "human" and row["stats"]["operator"] == "alice" and row["stats"]["takeovers"] == 1
    )
    raw.send(P.Control(robot_id=rid, episode_id="hil-1", step=5, mode="autonomous"))
    raw.send(_obs(rid, 3))  # taken before the hand-back at step 5: its chunk is stale and never sent
    for _ in range(3):  # pings keep the session's lease (1.5 s here) alive; a stale chunk would arrive first
        time.sleep(0.5)
        assert isinstance(raw.request(P.Ping(robot_id=rid)), P.Pong)
    reply = raw.request(_obs(rid, 5))
    assert isinstance(reply, P.Action) and reply.step == 5
    assert api.get(f"/v1/robots/{rid}").json()["control"] == "autonomous"
    raw.send(P.Control(robot_id=rid, episode_id="hil-1", step=6, mode="pilot"))
    assert raw.recv().code == "bad_message"
    raw.close()


def test_simulated_operator_interventions_are_stored_as_online_steps_and_counted(platform, api, cube):
    with Cubes(platform, cube, n=2, steps=60, seed=0, operators=True) as fleet:
        fleet.wait_for(lambda: len(fleet.acked()) >= 4, 120, "4 acked episodes")
    assert sum(c.supervisor.takeovers for c in fleet.clients) > 0
    stored = {
        ep_id: ray.get(platform.data.get_episode.remote(ep_id))
        for ep_id in (e.episode_id for e in fleet.acked())
    }
    mixed = [
        ep
        for ep in stored.values()
        if ep.columns["intervention"].any() and not ep.columns["intervention"].all()
    ]
    assert mixed, "no episode mixes autonomous and operator steps"
    for ep in stored.values():
        assert ep.source == "online"
        human = ep.columns["intervention"]
        assert (ep.columns["policy_version"][human] == -1).all()  # operator steps carry no policy version
        assert (ep.columns["policy_version"][~human & ~ep.columns["held"]] >= 0).all()
    stats = ray.get(platform.data.rollout_stats.remote(cube))
    assert 0 < stats["intervention_rate"] < 1 and stats["intervened_episodes"] > 0
    assert stats["success_without_intervention"] <= stats["success_rate"]
    rows = {r["robot_id"]: r for r in api.get("/v1/robots", params={"task": cube}).json()}
    assert sum(rows[c.robot_id]["stats"]["takeovers"] for c in fleet.clients) > 0


def test_demonstrations_recorded_through_the_client_go_to_the_demo_buffer(platform, api, cube):
    before = api.get(f"/v1/tasks/{cube}/data").json()["replay"]["offline_episodes"]
    with Cubes(platform, cube, n=1, steps=150, seed=20) as fleet:
        client, robot = fleet.clients[0], fleet.robots[0]
        client.record_demos(OracleOperator(robot).act, n=1, operator="bob")
        fleet.wait_for(
            lambda: any(ep.source == "offline" and ep.acked for ep in client.episodes), 60, "the demo"
        )
    demo = next(ep for ep in client.episodes if ep.source == "offline")
    stored = ray.get(platform.data.get_episode.remote(demo.episode_id))
    assert stored.source == "offline" and stored.meta["demonstrator"] == "bob"
    assert stored.columns["intervention"].all() and stored.outcome == "success"  # the oracle solves it
    assert api.get(f"/v1/tasks/{cube}/data").json()["replay"]["offline_episodes"] == before + 1
    assert not client.under_human_control  # the demo handed back when it ended
    learner = platform.learner(cube)  # the learner now replays the demo buffer (VLAC eq. 6) between updates
    deadline = time.monotonic() + 150  # includes the Ray Train worker's start on a busy machine
    while (status := ray.get(learner.status.remote())).get(
        "demo_replay"
    ) != "active" or "demo_loss" not in status["losses"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert np.isfinite(status["losses"]["demo_loss"])


def test_robots_return_to_recorded_failure_states(platform, api):
    task = "cube-explore"
    assert api.post("/v1/tasks", json=cube_task(task, failure_fraction=1.0), timeout=120).status_code == 201
    with Cubes(platform, task, n=1, steps=25, seed=40) as fleet:  # 25 steps: the random policy times out
        client = fleet.clients[0]
        fleet.wait_for(
            lambda: api.get(f"/v1/tasks/{task}/failure_states").json()["count"] > 0, 60, "a failure"
        )
        r = api.post(f"/v1/robots/{client.robot_id}/reset", json={"failure": True})
        assert r.status_code == 200, r.text
        asked = r.json()
        fleet.wait_for(
            lambda: any(
                ep.meta.get("reset_from_episode") == asked["episode_id"] and ep.outcome
                for ep in client.episodes
            ),
            60,
            "an episode started from the failure state",
        )
        # per-task reset-point sampling (failure_fraction 1): later episodes start from failure states too
        fleet.wait_for(
            lambda: sum(bool(ep.meta.get("reset_from_episode")) for ep in client.episodes) >= 3,
            60,
            "sampled resets",
        )
    source = ray.get(platform.data.get_episode.remote(asked["episode_id"]))
    restored = next(ep for ep in client.episodes if ep.meta.get("reset_from_episode") == asked["episode_id"])
    # the simulator replayed the stored episode's actions: it stands exactly where that episode was
    np.testing.assert_allclose(
        restored.observations[0]["state"], source.observations["state"][asked["step"]], atol=1e-5
    )
    states = api.get(f"/v1/tasks/{task}/failure_states").json()
    assert sum(states["histogram"]) == states["count"] and states["recent"][0]["outcome"] in (
        "failure",
        "timeout",
    )
    reset = f"/v1/robots/{client.robot_id}/reset"
    assert api.post(reset, json={"state": "initial", "failure": True}).status_code == 422  # one target only
    assert api.post("/v1/robots/rbt_nobody/reset", json={"state": "initial"}).status_code == 404
    time.sleep(2.5)  # the lease (1.5 s in the test config) runs out: the robot is offline
    r = api.post(reset, json={"state": "initial"})
    assert r.status_code == 409 and "not connected" in r.text
    delete_task(api, task)
