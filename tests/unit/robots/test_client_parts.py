"""The SDK client's parts built alone with plain fakes of what they are given: the uploads (a ``send`` list
and a ``connected`` flag), the take-over (the same, plus the owner's callbacks) and the gateway connection
(a bare ROUTER socket on a fake clock)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import zmq

from fleetrl.robots import protocol as P
from fleetrl.robots.client.config import ClientConfig
from fleetrl.robots.client.takeover import HumanControl
from fleetrl.robots.client.transport import GatewayConnection
from fleetrl.robots.client.uploads import EpisodeUploads
from fleetrl.robots.recorder import EpisodeLog, StepRecord


class Wire:
    """What a part sends, and whether a gateway session is there (the owner's connection, faked)."""

    def __init__(self) -> None:
        self.sent: list[tuple[P.Message, float]] = []
        self.up = True

    def send(self, msg: P.Message, now: float) -> None:
        self.sent.append((msg, now))

    def connected(self) -> bool:
        return self.up

    def take(self) -> list[P.Message]:
        out = [m for m, _ in self.sent]
        self.sent.clear()
        return out


def episode(episode_id: str, rows: int, ended: bool = True) -> EpisodeLog:
    ep = EpisodeLog(episode_id)
    for i in range(rows):
        ep.record(StepRecord(i, i, 0.0, 0.0, 3, "r/0"), {"state": np.full(2, i, np.float32)}, np.zeros(1))
    if ended:
        ep.outcome, ep.final_observation = "failure", {"state": np.full(2, rows, np.float32)}
    return ep


# -- uploads ---------------------------------------------------------------------------------------------
@pytest.fixture()
def uploads() -> tuple[EpisodeUploads, Wire, dict[str, int]]:
    wire = Wire()
    counters = {"resent_episode_ends": 0, "resent_steps": 0}
    cfg = ClientConfig(ack_timeout_s=1.0, max_rows_per_frame=2)
    return (
        EpisodeUploads("r1", cfg, send=wire.send, connected=wire.connected, counters=counters),
        wire,
        counters,
    )


def test_an_ended_episode_is_kept_until_acked_and_resent_after_reconnect(uploads):
    part, wire, counters = uploads
    ep = episode("e1", rows=3)
    part.upload_ended(ep, 10.0)
    sent = wire.take()
    assert [type(m) for m in sent] == [P.Steps, P.Steps, P.EpisodeEnd]  # 3 rows in frames of at most 2
    assert [(f.first_step, len(f.actions)) for f in sent[:2]] == [(0, 2), (2, 1)]
    assert sent[2].episode_id == "e1" and sent[2].steps == 3 and "e1" in part.unacked
    wire.up = False  # the link is lost: nothing to re-send to, however overdue
    part.resend_overdue(20.0)
    assert wire.take() == [] and counters["resent_episode_ends"] == 0
    wire.up = True  # reconnected: the end goes again (the rows the gateway already has do not)
    part.resend_overdue(20.0)
    again = wire.take()
    assert [(type(m), m.episode_id) for m in again] == [(P.EpisodeEnd, "e1")]
    assert counters["resent_episode_ends"] == 1
    part.resend_overdue(20.5)  # sent again 0.5 s ago: not overdue yet
    assert wire.take() == []
    part.on_ack(P.Ack(robot_id="r1", episode_id="e1"))
    assert ep.acked and part.unacked == {}
    part.resend_overdue(100.0)
    assert wire.take() == []


def test_missing_rows_go_again_from_the_step_the_gateway_names(uploads):
    part, wire, counters = uploads
    ended = episode("e1", rows=3)
    part.upload_ended(ended, 10.0)
    wire.take()
    part.resend_from("e1", 1, running=None, now=11.0)  # an ended episode: now, then its end
    again = wire.take()
    assert [(type(m), getattr(m, "first_step", None)) for m in again] == [(P.Steps, 1), (P.EpisodeEnd, None)]
    assert len(again[0].actions) == 2 and counters["resent_steps"] == 1
    running = episode("e2", rows=3, ended=False)
    part.flush_steps(running, 12.0)
    wire.take()
    part.resend_from("e2", 0, running=running, now=13.0)  # the running one: with its next upload
    assert wire.take() == [] and running.sent == 0 and counters["resent_steps"] == 2
    part.flush_steps(running, 14.0)
    assert [f.first_step for f in wire.take()] == [0, 2]
    part.on_ack(P.Ack(robot_id="r1", episode_id="unknown"))  # an ack for nothing kept is harmless
    assert list(part.unacked) == ["e1"]


# -- take-over -------------------------------------------------------------------------------------------
class Host:
    """The owner's side of a take-over: where the episode stands, and what it does on a change."""

    def __init__(self) -> None:
        self.wire = Wire()
        self.t = 50.0
        self.dropped = 0
        self.resumed: list[float] = []
        self.counters = {"takeovers": 0, "interventions": 0, "demos": 0}

    def part(self) -> HumanControl:
        return HumanControl(
            "r1",
            clock=lambda: self.t,
            send=self.wire.send,
            connected=self.wire.connected,
            position=lambda: ("e7", 4),
            on_take_over=self._drop,
            on_hand_back=self.resumed.append,
            counters=self.counters,
        )

    def _drop(self) -> None:
        self.dropped += 1


def controls(wire: Wire) -> list[tuple[str, str, str, int]]:
    return [(m.mode, m.operator, m.episode_id, m.step) for m in wire.take() if isinstance(m, P.Control)]


def test_take_over_marks_steps_as_human_and_hand_back_returns_control():
    host = Host()
    human = host.part()
    human.take_over(lambda obs: obs["state"] * 2, operator="alice")
    assert human.under_human_control and host.dropped == 1 and host.counters["takeovers"] == 1
    assert controls(host.wire) == [("human", "alice", "e7", 4)]
    rec, action = human.operator_step({"state": np.array([0.25, -1.0])}, step=4, now=50.1)
    assert rec.intervention and rec.policy_version == -1 and (rec.step, rec.obs_step) == (4, 4)
    assert action.dtype == np.float32 and action.tolist() == [0.5, -2.0]
    assert host.counters["interventions"] == 1
    human.take_over(lambda obs: obs["state"] * 0, operator="bob")  # already human: only the source changes
    assert host.counters["takeovers"] == 1 and host.dropped == 1 and controls(host.wire) == []
    assert human.operator_step({"state": np.ones(2)}, 5, 50.2)[1].tolist() == [0.0, 0.0]
    host.t = 51.0
    human.hand_back()
    assert not human.under_human_control and host.resumed == [51.0]
    assert controls(host.wire) == [("autonomous", "", "e7", 4)]
    human.hand_back()  # nobody has control to hand back
    assert host.resumed == [51.0] and controls(host.wire) == []


def test_control_frames_wait_for_a_session_and_a_new_session_hears_who_is_in_control():
    host = Host()
    human = host.part()
    human.announce(50.0)  # never taken over: a new session needs no control frame
    assert controls(host.wire) == []
    host.wire.up = False
    human.take_over(lambda obs: obs["state"], operator="alice")
    assert human.under_human_control and controls(host.wire) == []  # no session to tell
    host.wire.up = True
    human.announce(52.0)
    assert controls(host.wire) == [("human", "alice", "e7", 4)]
    human.hand_back()
    human.announce(53.0)  # once taken over, every new session hears the mode, autonomous too
    assert controls(host.wire) == [("autonomous", "", "e7", 4), ("autonomous", "", "e7", 4)]


def test_a_recorded_demonstration_takes_the_whole_next_episode():
    host = Host()
    human = host.part()
    assert not human.episode_started(EpisodeLog("e0"))  # nothing pending: the supervisor's turn
    human.record_demos(lambda obs: obs["state"], n=1, operator="bob")
    demo = EpisodeLog("e1")
    assert human.episode_started(demo)
    assert demo.source == "offline" and demo.meta["demonstrator"] == "bob"
    assert human.under_human_control and host.counters["demos"] == 1
    assert controls(host.wire) == [("human", "bob", "e7", 4)]
    human.hand_back()
    after = EpisodeLog("e2")
    assert not human.episode_started(after) and after.source == "online" and not human.under_human_control


# -- connection ------------------------------------------------------------------------------------------
def test_the_connection_says_hello_until_welcomed_and_notices_a_lost_link(request):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"inproc://link-{request.node.name}"
    router.bind(endpoint)
    clock = [100.0]
    heard: list[P.Message] = []
    lost: list[bool] = []
    counters = {"errors": 0, "link_losses": 0, "reconnects": 0}
    cfg = ClientConfig(link_timeout_s=3.0, hello_retry_s=1.0, heartbeat_s=1.0)
    conn = GatewayConnection(
        endpoint, "r1", "tok", cfg, lambda: clock[0], counters,
        on_message=lambda msg, now: heard.append(msg), on_lost=lambda: lost.append(True), context=ctx,
    )  # fmt: skip
    welcome = P.Welcome(robot_id="r1", task="t", observation_spec={}, action_spec={}, chunk_len=2)

    peer: list[bytes] = []  # the robot's ROUTER identity, once it said something

    def received() -> P.Message:
        assert router.poll(1000)
        ident, frame = router.recv_multipart()
        peer[:] = [ident]
        return P.decode(frame)

    try:
        assert not conn.check_link(clock[0])  # a hello went out
        hello = received()
        assert isinstance(hello, P.Hello) and hello.token == "tok"
        assert conn.check_link(clock[0] + 0.5) and not router.poll(50)  # no hello before the retry is due
        router.send_multipart([*peer, P.encode(P.Pong(robot_id="r1"))])
        router.send_multipart([*peer, b"\xc1 not msgpack"])
        assert conn.socket.poll(1000)
        conn.on_readable()
        assert [type(m) for m in heard] == [P.Pong] and counters["errors"] == 1
        conn.welcomed(welcome)
        assert conn.connected and counters["reconnects"] == 0
        conn.heartbeat(clock[0] + 1.5)
        assert isinstance(received(), P.Ping)
        clock[0] += 3.5  # nothing heard for longer than link_timeout_s
        assert not conn.check_link(clock[0])
        assert counters["link_losses"] == 1 and lost == [True] and not conn.connected
        assert isinstance(received(), P.Hello)
        conn.welcomed(welcome)
        assert counters["reconnects"] == 1
        conn.session_error(P.Error(robot_id="r1", code="unknown_session", message="send hello first"))
        assert not conn.connected and lost == [True, True]
    finally:
        conn.close()
        router.close()
        ctx.term()


def test_a_robot_refused_in_the_handshake_dials_again_and_gets_in():
    """libzmq never re-dials a connection whose CURVE handshake the gateway's ZAP refused (registry busy
    or restarting): the SDK re-dials after ``redial_after_hellos`` unanswered hellos."""
    from zmq.auth.thread import ThreadAuthenticator

    ctx = zmq.Context()
    server_public, server_secret = zmq.curve_keypair()
    robot_public, robot_secret = zmq.curve_keypair()
    verdicts = [False, True]  # the first handshake is refused, the next admitted

    class Provider:
        def callback(self, domain: str, key: bytes) -> bool:
            return verdicts.pop(0) if verdicts else True

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=Provider())
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.curve_server = True
    router.curve_publickey, router.curve_secretkey = server_public, server_secret
    port = router.bind_to_random_port("tcp://127.0.0.1")
    clock = [0.0]
    counters = {"errors": 0, "link_losses": 0, "reconnects": 0, "redials": 0}
    cfg = ClientConfig(hello_retry_s=1.0, redial_after_hellos=3)
    curve = {
        k: v.decode()
        for k, v in {
            "server_key": server_public,
            "public_key": robot_public,
            "secret_key": robot_secret,
        }.items()
    }
    conn = GatewayConnection(
        f"tcp://127.0.0.1:{port}", "r1", "tok", cfg, lambda: clock[0], counters,
        on_message=lambda msg, now: None, on_lost=lambda: None, context=ctx, curve=curve,
    )  # fmt: skip
    try:
        hellos = 0
        for _ in range(8):  # one hello a (fake) second; the refused link swallows them
            clock[0] += 1.1
            conn.check_link(clock[0])
            if router.poll(300):
                hellos += 1
                break
        assert hellos == 1, "no hello reached the server after the handshake was refused"
        assert counters["redials"] == 1 and verdicts == []
        assert isinstance(P.decode(router.recv_multipart()[1]), P.Hello)
    finally:
        conn.close()
        router.close()
        auth.stop()
        ctx.term()


@pytest.mark.parametrize("freeze", [True, False])
def test_the_fleet_runner_freezes_the_heap_when_its_loop_starts(freeze):
    """A full collection during control would walk this whole process (Ray, torch) and stall every robot
    of the thread; what exists when the loop starts is frozen out of collections (opt-out for a host
    process that must collect it)."""
    from fleetrl.robots.client.runner import FleetRunner

    gc.unfreeze()
    try:
        FleetRunner([], freeze_gc=freeze).run(duration=0.0)
        assert (gc.get_freeze_count() > 0) is freeze
    finally:
        gc.unfreeze()


def test_a_robot_whose_gateway_stops_answering_moves_to_the_next_and_back_round(request):
    """Several gateways: after ``redial_after_hellos`` unanswered hellos the socket moves to the next
    endpoint of its list (its own gateway first), and from the last one back to the first."""
    ctx = zmq.Context()
    silent, other = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    first, second = (f"inproc://gw-{k}-{request.node.name}" for k in (0, 1))
    silent.bind(first)  # up, but never answers (a gateway on a dead node answers no more than this)
    other.bind(second)
    clock = [0.0]
    counters = {"errors": 0, "link_losses": 0, "reconnects": 0, "redials": 0, "gateway_moves": 0}
    cfg = ClientConfig(hello_retry_s=1.0, redial_after_hellos=2)
    conn = GatewayConnection(
        [first, second], "r1", "tok", cfg, lambda: clock[0], counters,
        on_message=lambda msg, now: None, on_lost=lambda: None, context=ctx,
    )  # fmt: skip
    try:
        for _ in range(2):  # two hellos go to the first gateway, unanswered
            clock[0] += 1.1
            assert not conn.check_link(clock[0])
            assert silent.poll(1000) and isinstance(P.decode(silent.recv_multipart()[1]), P.Hello)
        clock[0] += 1.1
        conn.check_link(clock[0])  # the third: sent to the next gateway
        assert conn.endpoint == second and counters["gateway_moves"] == 1
        assert other.poll(1000) and isinstance(P.decode(other.recv_multipart()[1]), P.Hello)
        assert not silent.poll(100)
        for _ in range(2):
            clock[0] += 1.1
            conn.check_link(clock[0])
        clock[0] += 1.1
        conn.check_link(clock[0])
        assert conn.endpoint == first and counters["gateway_moves"] == 2  # round again
    finally:
        conn.close()
        silent.close()
        other.close()
        ctx.term()
