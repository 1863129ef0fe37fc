"""Lockstep sim robots: the robot waits for each chunk instead of holding, and each chunk is conditioned on
the observation right before it (learning measured apart from latency). Scripted gateway, fake clock."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zmq

from fleetrl.robots import protocol as P
from fleetrl.robots.client import ClientConfig, RobotClient, StepResult

os.environ.setdefault("MUJOCO_GL", "egl")


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


class Robot:
    control_hz = 10.0
    observation_spec = {"state": P.ArraySpec((3,), "float32")}
    action_spec = P.ArraySpec((2,), "float32", -1.0, 1.0)

    def __init__(self, lockstep: bool):
        self.lockstep, self.t, self.holds = lockstep, 0, 0

    def reset(self):
        self.t = 0
        return {"state": np.zeros(3, np.float32)}

    def act(self, action):
        self.t += 1
        return StepResult({"state": np.full(3, self.t, np.float32)}, 1.0, False, False, False)

    def hold(self):
        self.holds += 1
        return self.act(None)


@pytest.fixture(params=[True, False], ids=["lockstep", "asynchronous"])
def rig(request):
    ctx = zmq.Context()
    endpoint = f"inproc://lockstep-{request.node.name}"
    gw = ctx.socket(zmq.ROUTER)
    gw.setsockopt(zmq.LINGER, 0)
    gw.bind(endpoint)
    clock, robot = Clock(), Robot(request.param)
    # a round trip estimate of two control periods: an asynchronous robot asks two steps ahead
    cfg = ClientConfig(heartbeat_s=100.0, initial_latency_s=0.2, link_timeout_s=100.0, deadline_s=100.0)
    client = RobotClient(robot, "rbt_1", "tok", endpoint, context=ctx, config=cfg, clock=clock)
    yield client, gw, clock, robot
    client.close()
    gw.close()
    ctx.term()


def recv(gw: zmq.Socket) -> tuple[bytes, P.Message]:
    while True:
        assert gw.poll(1000), "the client sent nothing"
        ident, frame = gw.recv_multipart()
        msg = P.decode(frame)
        if not isinstance(msg, P.Steps):
            return ident, msg


def reply(gw: zmq.Socket, ident: bytes, obs: P.Obs, value: float) -> None:
    actions = np.full((3, 2), value, np.float32)
    msg = P.Action(
        robot_id="rbt_1", episode_id=obs.episode_id, step=obs.step, actions=actions, policy_version=1
    )
    gw.send_multipart([ident, P.encode(msg)])


def deliver(client: RobotClient) -> None:
    assert client.socket.poll(1000)
    client.on_readable()


def test_a_late_chunk_is_waited_for_in_lockstep_and_held_otherwise(rig):
    client, gw, clock, robot = rig
    client.tick()
    ident, hello = recv(gw)
    assert isinstance(hello, P.Hello)
    welcome = P.Welcome(robot_id="rbt_1", task="t", observation_spec={"state": {"shape": [3], "dtype": "float32"}},
                        action_spec={"shape": [2], "dtype": "float32"}, chunk_len=3)  # fmt: skip
    gw.send_multipart([ident, P.encode(welcome)])
    deliver(client)
    clock.t += 0.1
    client.tick()  # starts the episode and asks for the first chunk
    _, obs = recv(gw)
    for k in range(3):  # three chunks, each answered only after five control periods
        assert (obs.pending is None) == robot.lockstep or k == 0  # a lockstep robot asks with none left
        reply(gw, ident, obs, 0.1 * (k + 1))
        deliver(client)
        for _ in range(3):
            clock.t += 0.1
            client.tick()
        _, obs = recv(gw)
        for _ in range(5):
            clock.t += 0.1
            client.tick()
    steps = client._episode.steps
    if robot.lockstep:
        assert robot.holds == 0 and client.counters["holds"] == 0 and not any(s.held for s in steps)
        assert client.counters["lockstep_waits"] == 15 and len(steps) == 9
        # each chunk was asked for once the previous one had run out: conditioned on the step it starts at
        assert [s.obs_step for s in steps] == [0, 0, 0, 3, 3, 3, 6, 6, 6]
    else:  # the same late replies make an asynchronous robot hold (and its chunks lag their observations)
        assert robot.holds == client.counters["holds"] > 0 and any(s.held for s in steps)
        assert any(s.obs_step < s.step - 2 for s in steps if not s.held)


def test_sim_robots_are_not_lockstep_unless_asked():
    from fleetrl.robots.sim import SimRobot

    assert SimRobot("Reacher-v5").lockstep is False
    assert SimRobot("Reacher-v5", lockstep=True).lockstep is True
