"""The robot SDK's control loop against a scripted gateway (a bare ROUTER socket), on a fake clock.

The scripted ROUTER is a test double of the gateway for the SDK's unit tests only; the integration tests
run the SDK against the real gateway.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import zmq

from fleetrl.robots import protocol as P
from fleetrl.robots.client import ClientConfig, RobotClient, StepResult


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class CountingRobot:
    """Records what it was told to do; an episode ends after ``horizon`` steps (truncation)."""

    control_hz = 10.0
    observation_spec = {"state": P.ArraySpec((3,), "float32")}
    action_spec = P.ArraySpec((2,), "float32", -1.0, 1.0)

    def __init__(self, horizon: int = 1000):
        self.horizon = horizon
        self.actions: list[np.ndarray] = []
        self.holds = 0
        self.t = 0

    def reset(self):
        self.t = 0
        return {"state": np.zeros(3, np.float32)}

    def _step(self, a) -> StepResult:
        self.t += 1
        obs = {"state": np.full(3, self.t, np.float32)}
        return StepResult(obs, 0.0, False, self.t >= self.horizon, False)

    def act(self, action):
        self.actions.append(np.array(action))
        return self._step(action)

    def hold(self):
        self.holds += 1
        return self._step(None)


class ScriptedGateway:
    def __init__(self, ctx: zmq.Context, endpoint: str):
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.ident: bytes | None = None
        self.steps: list[P.Steps] = []

    def recv(self, timeout_ms: int = 1000) -> P.Message:
        """The next frame that is not a ``steps`` upload (those are kept in ``self.steps``)."""
        while True:
            assert self.sock.poll(timeout_ms), "the client sent nothing"
            self.ident, frame = self.sock.recv_multipart()
            msg = P.decode(frame)
            if not isinstance(msg, P.Steps):
                return msg
            self.steps.append(msg)

    def pending(self) -> bool:
        return bool(self.sock.poll(50))

    def send(self, msg: P.Message) -> None:
        self.sock.send_multipart([self.ident, P.encode(msg)])

    def welcome(self, robot_id: str, chunk_len: int = 3) -> None:
        self.send(
            P.Welcome(
                robot_id=robot_id,
                task="t",
                observation_spec={"state": {"shape": [3], "dtype": "float32"}},
                action_spec={"shape": [2], "dtype": "float32"},
                chunk_len=chunk_len,
            )
        )

    def chunk(self, obs: P.Obs, actions: np.ndarray, version: int = 7) -> None:
        self.send(
            P.Action(
                robot_id=obs.robot_id,
                episode_id=obs.episode_id,
                step=obs.step,
                actions=actions.astype(np.float32),
                policy_version=version,
                replica="r/0",
            )
        )


@pytest.fixture()
def rig(request):
    ctx = zmq.Context()
    endpoint = f"inproc://gw-{request.node.name}"
    gw = ScriptedGateway(ctx, endpoint)
    clock = FakeClock()
    robot = CountingRobot()
    cfg = ClientConfig(
        deadline_s=0.5, link_timeout_s=3.0, heartbeat_s=100.0, ack_timeout_s=1.0, initial_latency_s=0.05
    )
    client = RobotClient(robot, "rbt_1", "tok", endpoint, context=ctx, config=cfg, clock=clock)
    yield client, gw, clock, robot
    client.close()
    gw.sock.close()
    ctx.term()


def deliver(client: RobotClient) -> None:
    assert client.socket.poll(1000)
    client.on_readable()


def connect(client, gw, clock) -> P.Obs:
    """hello → welcome → the first tick starts an episode and asks for its first chunk."""
    client.tick()
    hello = gw.recv()
    assert isinstance(hello, P.Hello) and hello.token == "tok"
    gw.welcome("rbt_1")
    deliver(client)
    assert client.connected
    clock.t += 0.1
    client.tick()
    obs = gw.recv()
    assert isinstance(obs, P.Obs) and obs.step == 0
    return obs


def test_chunks_execute_in_order_and_the_next_is_asked_for_early(rig):
    client, gw, clock, robot = rig
    obs0 = connect(client, gw, clock)
    first = np.array([[0.1, 0.1], [0.2, 0.2], [5.0, -5.0]])
    gw.chunk(obs0, first)
    deliver(client)
    for _ in range(2):  # remaining 2, then 1 (<= lookahead of 1 step at 50 ms / 100 ms): ask now
        clock.t += 0.1
        client.tick()
    early = gw.recv()
    assert isinstance(early, P.Obs) and early.step == 2  # asked while one action of the chunk is left
    # it says which actions still run before the reply's chunk starts (a policy may read them)
    assert obs0.pending is None and early.pending.tolist() == [[5.0, -5.0]]
    gw.chunk(early, np.full((3, 2), 0.5))
    deliver(client)
    for _ in range(3):
        clock.t += 0.1
        client.tick()
    executed = np.array(robot.actions)
    np.testing.assert_allclose(executed[:3], [[0.1, 0.1], [0.2, 0.2], [1.0, -1.0]], rtol=1e-6)  # clipped
    # the record keeps the sample the chunk's log-prob belongs to (PPO's ratio), not the clipped action
    np.testing.assert_allclose(client._episode.actions[2], [5.0, -5.0], rtol=1e-6)
    np.testing.assert_allclose(executed[3:], 0.5)  # the new chunk starts where the old one ended
    assert robot.holds == 0 and client.counters["holds"] == 0
    steps = client._episode.steps
    assert [s.obs_step for s in steps] == [0, 0, 0, 2, 2]
    assert all(s.policy_version == 7 and s.replica == "r/0" for s in steps)
    assert client.counters["replies"] == 2 and client.replies[0][0] >= 0


def test_late_chunk_holds_then_watchdog_resends(rig):
    client, gw, clock, robot = rig
    obs0 = connect(client, gw, clock)
    gw.chunk(obs0, np.zeros((3, 2)))
    deliver(client)
    for _ in range(3):
        clock.t += 0.1
        client.tick()
    asked = gw.recv()  # the early request, which the scripted gateway leaves unanswered
    clock.t += 0.1
    client.tick()  # chunk exhausted, no new one: hold instead of running past the chunk
    assert robot.holds == 1 and len(robot.actions) == 3
    clock.t += 0.5
    client.tick()  # past the deadline: a watchdog trip and the request goes out again (same step)
    assert client.counters["watchdog_trips"] == 1
    again = gw.recv()
    assert isinstance(again, P.Obs) and again.episode_id == asked.episode_id
    gw.chunk(again, np.full((3, 2), 0.3))
    deliver(client)
    clock.t += 0.1
    client.tick()
    np.testing.assert_allclose(robot.actions[-1], 0.3)


def test_stale_reply_is_ignored(rig):
    client, gw, clock, robot = rig
    obs0 = connect(client, gw, clock)
    gw.send(
        P.Action(robot_id="rbt_1", episode_id=obs0.episode_id, step=99, actions=np.zeros((3, 2), np.float32))
    )
    deliver(client)
    assert client.counters["stale_replies"] == 1
    clock.t += 0.1
    client.tick()
    assert robot.actions == []  # nothing executed from a reply to another request


def test_link_loss_holds_and_reconnects(rig):
    client, gw, clock, robot = rig
    obs0 = connect(client, gw, clock)
    gw.chunk(obs0, np.zeros((3, 2)))
    deliver(client)
    clock.t += 0.1
    client.tick()  # the robot is moving: one action executed
    clock.t += 3.5  # nothing heard for longer than link_timeout_s
    client.tick()
    assert client.counters["link_losses"] == 1 and not client.connected
    while gw.pending():
        if isinstance(gw.recv(), P.Hello):
            break
    else:
        pytest.fail("no hello after the link was lost")
    holds, executed = robot.holds, len(robot.actions)
    clock.t += 0.1
    client.tick()
    assert robot.holds == holds + 1 and len(robot.actions) == executed  # not connected: hold, do not execute
    gw.welcome("rbt_1")
    deliver(client)
    assert client.connected and client.counters["reconnects"] == 1


def test_unknown_session_error_triggers_a_new_hello(rig):
    client, gw, clock, _ = rig
    connect(client, gw, clock)
    gw.send(P.Error(robot_id="rbt_1", code="unknown_session", message="send hello first"))
    deliver(client)
    assert not client.connected
    clock.t += 1.1
    client.tick()
    msgs = [gw.recv()]
    while gw.pending():
        msgs.append(gw.recv())
    assert any(isinstance(m, P.Hello) for m in msgs)


def run_two_step_episode(client, gw, clock, robot) -> None:
    """Connect, answer with a 3-step chunk, and run the robot's 2-step episode to its end."""
    robot.horizon = 2
    obs0 = connect(client, gw, clock)
    gw.chunk(obs0, np.zeros((3, 2)))
    deliver(client)
    for _ in range(2):
        clock.t += 0.1
        client.tick()


def test_episode_end_is_resent_until_acked(rig):
    client, gw, clock, robot = rig
    run_two_step_episode(client, gw, clock, robot)
    ends = []
    while gw.pending():
        m = gw.recv()
        if isinstance(m, P.EpisodeEnd):
            ends.append(m)
    assert len(ends) == 1 and ends[0].outcome == "timeout" and ends[0].steps == 2
    clock.t += 1.1
    client.tick()  # no ack yet: sent again
    resent = [
        m for m in iter(lambda: gw.recv() if gw.pending() else None, None) if isinstance(m, P.EpisodeEnd)
    ]
    assert [m.episode_id for m in resent] == [ends[0].episode_id]
    assert client.counters["resent_episode_ends"] == 1
    gw.send(P.Ack(robot_id="rbt_1", episode_id=ends[0].episode_id))
    deliver(client)
    assert client.episodes[-1].acked
    clock.t += 1.1
    client.tick()
    later = [
        m for m in iter(lambda: gw.recv() if gw.pending() else None, None) if isinstance(m, P.EpisodeEnd)
    ]
    assert later == []


class OperatorRobot(CountingRobot):
    """An operator overrides the commanded action at step 1 (an intervention)."""

    def act(self, action):
        result = super().act(action)
        if self.t == 2:
            return result._replace(executed_action=np.array([0.9, -0.9], np.float32))
        return result


def test_steps_upload_pairs_each_observation_with_the_executed_action(rig):
    client, gw, clock, _ = rig
    client.robot = robot = OperatorRobot()
    client.cfg.steps_per_upload = 1  # upload with every request (the default batches 16 rows)
    obs0 = connect(client, gw, clock)
    gw.send(
        P.Action(
            robot_id="rbt_1",
            episode_id=obs0.episode_id,
            step=0,
            actions=np.full((3, 2), 0.25, np.float32),
            log_prob=-1.5,
            policy_version=7,
            replica="r/0",
        )
    )
    deliver(client)
    for _ in range(3):
        clock.t += 0.1
        client.tick()
    gw.recv()  # the early request carries the steps executed so far
    rows = gw.steps
    assert [f.first_step for f in rows] == [0] and rows[0].episode_id == obs0.episode_id
    frame = rows[0]
    n = len(frame.actions)
    assert n == 2  # steps 0 and 1 were executed before the request at step 2
    np.testing.assert_array_equal(
        frame.observations["state"][:, 0], [0.0, 1.0]
    )  # observation before each action
    np.testing.assert_allclose(
        frame.actions, [[0.25, 0.25], [0.9, -0.9]]
    )  # the operator's action was executed
    assert frame.columns["intervention"].tolist() == [False, True]
    assert frame.columns["policy_version"].tolist() == [7, -1]
    assert frame.columns["log_prob"][0] == np.float32(-1.5) and np.isnan(frame.columns["log_prob"][1])
    assert client.counters["interventions"] == 1 and len(robot.actions) == 3


def test_incomplete_episode_makes_the_client_resend_its_rows(rig):
    client, gw, clock, robot = rig
    run_two_step_episode(client, gw, clock, robot)
    end = gw.recv()
    assert isinstance(end, P.EpisodeEnd) and end.steps == 2 and end.truncated and not end.terminated
    assert end.final_observation["state"][0] == 2.0
    assert sum(len(f.actions) for f in gw.steps) == 2
    gw.steps.clear()
    gw.send(P.Error(robot_id="rbt_1", code="incomplete_episode", step=1, episode_id=end.episode_id))
    deliver(client)
    again = gw.recv()
    assert isinstance(again, P.EpisodeEnd) and again.episode_id == end.episode_id
    assert [(f.first_step, len(f.actions)) for f in gw.steps] == [(1, 1)]  # only the missing row
    assert client.counters["resent_steps"] == 1


def test_an_ended_episode_refused_for_good_is_no_longer_resent(rig):
    client, gw, clock, robot = rig
    run_two_step_episode(client, gw, clock, robot)
    end = gw.recv()
    assert isinstance(end, P.EpisodeEnd)
    gw.send(
        P.Error(
            robot_id="rbt_1", code="episode_conflict", message="stored already", episode_id=end.episode_id
        )
    )
    deliver(client)
    refused = client.episodes[-1]
    assert (refused.episode_id, refused.refused, refused.acked) == (end.episode_id, "episode_conflict", False)
    assert client.counters["episodes_refused"] == 1 and not client.uploads.unacked
    clock.t += 1.1
    client.tick()  # past the ack timeout: nothing goes again
    resent = [
        m for m in iter(lambda: gw.recv() if gw.pending() else None, None) if isinstance(m, P.EpisodeEnd)
    ]
    assert resent == []


def test_the_running_episode_refused_for_good_is_abandoned_for_a_new_one(rig):
    client, gw, clock, robot = rig
    obs0 = connect(client, gw, clock)
    gw.chunk(obs0, np.zeros((3, 2)))
    deliver(client)
    clock.t += 0.1
    client.tick()
    running = obs0.episode_id
    gw.send(P.Error(robot_id="rbt_1", code="episode_cut", message="cut by the lease", episode_id=running))
    deliver(client)
    assert client.episodes[-1].episode_id == running and client.episodes[-1].refused == "episode_cut"
    clock.t += 0.1
    client.tick()  # a new episode: the robot is reset and asks for its first chunk
    obs = [m for m in iter(lambda: gw.recv() if gw.pending() else None, None) if isinstance(m, P.Obs)]
    assert obs and obs[-1].episode_id != running and obs[-1].step == 0 and robot.t == 0
    assert client.counters["episodes_refused"] == 1


def test_the_sdk_logger_silences_every_part_of_the_client(rig, caplog):
    # benchmarks quieten the SDK with logging.getLogger("fleetrl.robots.client"): each part logs below it
    client, gw, clock, _ = rig
    connect(client, gw, clock)
    caplog.set_level(logging.WARNING, logger="fleetrl.robots.client")
    gw.sock.send_multipart([gw.ident, b"\xc1 not msgpack"])
    deliver(client)
    gw.send(
        P.Action(
            robot_id="rbt_1",
            episode_id=client._episode.episode_id,
            step=0,
            actions=np.zeros((2, 5), np.float32),
        )
    )
    deliver(client)
    assert client.counters["errors"] == 2
    assert len(caplog.records) == 2
    assert all(r.name.startswith("fleetrl.robots.client.") for r in caplog.records)
    caplog.clear()
    caplog.set_level(logging.ERROR, logger="fleetrl.robots.client")
    gw.sock.send_multipart([gw.ident, b"\xc1 not msgpack"])
    deliver(client)
    assert client.counters["errors"] == 3 and not caplog.records
