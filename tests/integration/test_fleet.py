"""Robots acting through the real platform: REST registration, ZeroMQ, scheduler, Ray inference replicas."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import ray

from fleetrl.robots import protocol as P
from fleetrl.robots.client import ClientConfig
from fleetrl.testing.net import RawRobotSocket, unregistered_socket
from tests.conftest import ADMIN_TOKEN
from tests.integration.helpers import (
    RunningFleet,
    authenticated_raw,
    raw_end,
    raw_obs,
    raw_steps,
    register_raw,
)


def _gateway_row(platform, robot_id):
    rows = ray.get(platform.gateway.stats.remote())["robots"]
    return next((r for r in rows if r["robot_id"] == robot_id), None)


def _chunk_transitions(steps) -> list[bool]:
    """For each chunk after the first: was it asked for while the previous one still ran (its observation
    is from a step the previous chunk covered)? A client that asks only once a chunk has run out gives
    all False."""
    chunks: dict[int, tuple[int, int]] = {}
    for s in steps:
        if not s.held:
            first, last = chunks.get(s.obs_step, (s.step, s.step))
            chunks[s.obs_step] = (min(first, s.step), max(last, s.step))
    order = sorted(chunks.items(), key=lambda kv: kv[1][0])
    return [nxt_obs <= prev_last for (_, (_, prev_last)), (nxt_obs, _) in zip(order, order[1:], strict=False)]


def test_robots_get_action_chunks_asynchronously(platform):
    with RunningFleet(platform, n=3, hz=50.0) as fleet:
        fleet.wait_for(
            lambda: all(len(c.episodes) >= 2 for c in fleet.clients),
            timeout=60,
            what="two episodes per robot",
        )
    transitions = []
    for c in fleet.clients:
        assert c.counters["replies"] > 5 and c.counters["errors"] == 0
        for ep in c.episodes:
            # Reacher's time limit (held steps count: the robot holds position), unless the fingertip came
            # within 2 cm of the target first (the preset's success, which ends the episode)
            assert len(ep.steps) == 50 or (ep.outcome == "success" and len(ep.steps) < 50), ep.outcome
            executed = [s for s in ep.steps if not s.held]
            # Every executed action came from a policy version of a reach replica, conditioned on an
            # earlier observation.
            assert all(s.policy_version >= 0 and s.replica.startswith("reach/") for s in executed)
            assert all(s.obs_step <= s.step and s.obs_time <= s.action_start for s in executed)
            transitions += _chunk_transitions(ep.steps)
    # Asynchronous execution, judged on the steps rather than on how many holds a loaded machine's latency
    # caused (the learner's first updates share the two cores with the replicas; the client's lookahead
    # adapts to the latency it measures): nearly every chunk was asked for before the previous one ran out.
    assert len(transitions) >= 30 and sum(transitions) >= 0.8 * len(transitions), transitions
    replicas = {s.replica for c in fleet.clients for ep in c.episodes for s in ep.steps if not s.held}
    assert replicas == {"reach/0", "reach/1"}  # both replicas of the pool served observations
    row = _gateway_row(platform, fleet.clients[0].robot_id)
    assert row["episodes"] >= 1 and row["steps"] >= 40


def test_bad_frames_get_errors_and_others_keep_being_served(platform):
    creds = register_raw(platform, "garbage")  # a registered robot's connection sending garbage
    raw = RawRobotSocket(platform.endpoint, creds["curve"])
    me = creds["robot_id"]
    with RunningFleet(platform, n=1, hz=50.0, seed=10) as fleet:
        fleet.wait_for(lambda: fleet.total("replies") >= 5, what="first replies")
        before = fleet.total("replies")
        raw.send_raw(b"\xc1garbage")
        assert raw.recv().code == "bad_frame"
        raw.send_raw(b"a", b"b")
        assert raw.recv().code == "bad_frame"
        raw.send_raw(b"\x00" * 1000)  # valid msgpack int followed by trailing bytes
        assert raw.recv().code == "bad_frame"
        raw.send_raw(P.pack({"v": 1, "kind": "obs", "robot_id": me, "blob": b"\x00" * (5 * 1024 * 1024)}))
        assert raw.recv().code == "frame_too_large"
        raw.send_raw(P.pack({"v": 99, "kind": "ping", "robot_id": me}))
        assert raw.recv().code == "version_mismatch"
        raw.send_raw(P.pack({"v": 1, "kind": "launch_missiles", "robot_id": me}))
        assert raw.recv().code == "bad_message"
        assert raw.request(P.Ping(robot_id=me)).code == "unknown_session"
        assert raw.request(P.Hello(robot_id=me, token="nope")).code == "unauthorized"
        victim = fleet.clients[0]  # its connection's key is not this one: nothing in its name is heard
        for frame in (P.Hello(robot_id=victim.robot_id, token="wrong-token"), P.Ping(robot_id=victim.robot_id),
                      raw_obs(victim.robot_id, 0, episode="spoofed")):  # fmt: skip
            reply = raw.request(frame)
            assert reply.code == "unauthorized" and me in reply.message, reply
        fleet.wait_for(lambda: fleet.total("replies") >= before + 20, what="service to continue")
    raw.close()
    assert all(c.counters["errors"] == 0 for c in fleet.clients)
    refused = ray.get(platform.gateway.stats.remote())["refused"]
    assert refused["bad_frame"] >= 3 and refused["unauthorized"] >= 4 and refused["frame_too_large"] >= 1


def test_only_registered_curve_keys_get_through(platform):
    """A plain socket, one with unregistered keys and one replaying a robot's captured hello with another
    robot's keys: the first two are not even answered (ZAP refuses the connection), the third is refused."""
    victim, other = register_raw(platform, "victim"), register_raw(platform, "other")
    hello = P.Hello(robot_id=victim["robot_id"], token=victim["token"])  # captured in clear? it is encrypted
    plain = RawRobotSocket(platform.endpoint)
    stranger = unregistered_socket(platform.endpoint, victim["curve"])
    for raw in (plain, stranger):
        # queued before the handshake failed, or no connection at all: either way unheard
        if raw.try_send(hello):
            with pytest.raises(TimeoutError):
                raw.recv(timeout_s=1.5)
        raw.close()
    replay = RawRobotSocket(platform.endpoint, other["curve"])
    reply = replay.request(hello)
    assert reply.code == "unauthorized" and other["robot_id"] in reply.message
    replay.close()
    real = RawRobotSocket(platform.endpoint, victim["curve"])  # the robot itself, with its own keys
    assert isinstance(real.request(hello), P.Welcome)
    real.close()


def test_a_robot_that_keeps_its_own_secret_key_is_served(platform):
    """Registered with its own CURVE public key through the SDK: the platform issues no secret, the SDK
    asks for the robot's, and with it the robot is welcomed and its episode stored."""
    import zmq

    from fleetrl.robots.client import FleetRunner, RobotClient, register
    from fleetrl.robots.sim import SimRobot

    public, secret = (k.decode() for k in zmq.curve_keypair())
    robot = SimRobot("Reacher-v5", seed=41)
    creds = register(platform.rest_url, ADMIN_TOKEN, "own-keys", "reach", robot, curve_public_key=public)
    assert creds["curve"]["public_key"] == public and creds["curve"]["secret_key"] is None
    with pytest.raises(ValueError, match="curve_secret_key"):
        RobotClient.from_registration(robot, creds)
    client = RobotClient.from_registration(robot, creds, curve_secret_key=secret)
    try:
        FleetRunner([client]).run(duration=6.0)
        assert client.welcome is not None and client.counters["replies"] > 0
        assert client.counters["errors"] == 0
    finally:
        client.close()


def test_out_of_order_and_bad_observations_are_refused(platform):
    raw, rid = authenticated_raw(platform, "raw-1")
    reply = raw.request(raw_obs(rid, 0))
    assert isinstance(reply, P.Action) and reply.step == 0 and reply.actions.shape == (4, 2)
    assert np.isfinite(reply.log_prob) and reply.timings["queue_ms"] >= 0
    retry = raw.request(raw_obs(rid, 0))  # the same step again is a retry and is served
    assert isinstance(retry, P.Action) and retry.step == 0
    raw.send(raw_steps(rid, "ep1", 0, 3))  # rows 0..2 (no reply)
    assert isinstance(raw.request(raw_obs(rid, 3)), P.Action)
    stale = raw.request(raw_obs(rid, 2))
    assert stale.code == "out_of_order" and stale.step == 2
    assert raw.request(raw_obs(rid, 4, state=np.zeros(11, np.float32))).code == "bad_observation"
    assert raw.request(raw_obs(rid, 4, state=np.zeros(10, np.float64))).code == "bad_observation"
    bad_keys = P.Obs(robot_id=rid, episode_id="ep1", step=4, observation={"image": np.zeros(10, np.float32)})
    assert raw.request(bad_keys).code == "bad_observation"
    for pending in (np.zeros((5, 2), np.float32), np.zeros((1, 3), np.float32)):  # chunks of 4 x 2 actions
        assert raw.request(replace(raw_obs(rid, 4), pending=pending)).code == "bad_observation"
    assert raw.request(raw_steps(rid, "ep1", 3, 2, action_shape=(3,))).code == "bad_observation"
    # non-finite numbers are refused before they are batched with other robots' or stored
    nan = np.full(10, np.nan, np.float32)
    assert raw.request(raw_obs(rid, 4, state=nan)).code == "bad_observation"
    inf_reward = raw_steps(rid, "ep1", 3, 2)
    inf_reward.columns["reward"][1] = np.inf
    assert raw.request(inf_reward).code == "bad_observation"
    gap = raw.request(raw_steps(rid, "ep1", 4, 1))  # row 3 is missing: the gateway asks for it
    assert gap.code == "out_of_order" and gap.step == 3 and gap.episode_id == "ep1"
    assert raw.request(raw_end(rid, "ep1", 5, outcome="exploded")).code == "bad_message"
    incomplete = raw.request(raw_end(rid, "ep1", 5))
    assert incomplete.code == "incomplete_episode" and incomplete.step == 3 and incomplete.episode_id == "ep1"
    raw.send(raw_steps(rid, "ep1", 3, 2))
    assert isinstance(raw.request(raw_end(rid, "ep1", 5)), P.Ack)
    assert isinstance(raw.request(raw_end(rid, "ep1", 5)), P.Ack)  # a re-sent end is acked again …
    assert _gateway_row(platform, rid)["outcomes"] == {"success": 1}  # … and counted once
    assert _gateway_row(platform, rid)["steps"] == 5
    assert raw.request(raw_obs(rid, 9)).code == "out_of_order"  # the episode has ended
    assert isinstance(raw.request(raw_obs(rid, 0, episode="ep2")), P.Action)
    raw.close()


def test_silent_robot_goes_offline_and_its_episode_is_aborted_after_the_resume_window(platform):
    raw, rid = authenticated_raw(platform, "raw-silent")
    assert isinstance(raw.request(raw_obs(rid, 0, episode="lease-ep")), P.Action)
    assert _gateway_row(platform, rid)["online"] is True
    deadline = time.monotonic() + 10
    while _gateway_row(platform, rid)["online"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gateway_row(platform, rid)["online"] is False
    assert _gateway_row(platform, rid)["outcomes"] == {}  # its episode waits for it (resume window: 2 s)
    deadline = time.monotonic() + 10
    while not _gateway_row(platform, rid)["outcomes"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gateway_row(platform, rid)["outcomes"] == {"aborted": 1}

    def offline_logged():
        logs = ray.get(platform.metrics.logs.remote(2000))
        return any(
            r["source"] == "gateway" and rid in r["message"] and "offline" in r["message"] for r in logs
        )

    deadline = time.monotonic() + 10
    while not offline_logged() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert offline_logged()  # the gateway's log line reached the log server
    # The robot may come back at any time: a new hello binds a new session.
    assert raw.request(P.Ping(robot_id=rid)).code == "unknown_session"
    raw.close()


def test_deleted_robot_is_cut_off(platform):
    import httpx

    with RunningFleet(platform, n=1, hz=50.0, seed=20) as fleet:
        fleet.wait_for(lambda: fleet.total("replies") >= 3, what="first replies")
        rid = fleet.clients[0].robot_id
        r = httpx.delete(
            f"{platform.rest_url}/v1/robots/{rid}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert r.status_code == 204
        fleet.wait_for(
            lambda: (
                fleet.clients[0].last_error is not None and fleet.clients[0].last_error.code == "unauthorized"
            ),
            what="the gateway to refuse the deleted robot",
        )
        assert not fleet.clients[0].connected


def test_dead_replica_is_requeued_and_comes_back(platform):
    with RunningFleet(platform, n=4, hz=50.0, seed=30) as fleet:
        fleet.wait_for(lambda: fleet.total("replies") >= 20, what="first replies")
        ray.kill(platform.replicas["reach"][0], no_restart=False)
        t_kill = time.monotonic()
        before = fleet.total("replies")
        fleet.wait_for(
            lambda: fleet.total("replies") >= before + 100, timeout=30, what="service after the kill"
        )

        def pool_size():
            pool = ray.get(platform.gateway.stats.remote())["pools"]["reach"]
            return pool["idle"] + pool["busy"]

        fleet.wait_for(lambda: pool_size() == 2, timeout=60, what="the replica to be restarted and rejoin")
        t_back = time.monotonic()
        assert t_back - t_kill < 60

        def restarted_replica_serves():
            eps = [ep for c in fleet.clients for ep in c.episodes]
            return any(s.replica == "reach/0" and s.action_start > t_back for ep in eps for s in ep.steps)

        fleet.wait_for(restarted_replica_serves, timeout=30, what="the restarted replica to serve again")
    assert fleet.total("watchdog_trips") <= 4


def test_restarted_gateway_is_reconnected_to(platform):
    cfg = ClientConfig(link_timeout_s=1.0, deadline_s=0.3, hello_retry_s=0.3)
    with RunningFleet(platform, n=2, hz=50.0, config=cfg, seed=40) as fleet:
        fleet.wait_for(lambda: fleet.total("replies") >= 10, what="first replies")
        holds_before = fleet.total("holds")
        ray.kill(platform.gateways[0], no_restart=False)  # Ray restarts it; it binds the same endpoint
        fleet.wait_for(lambda: fleet.total("reconnects") >= 2, timeout=60, what="both robots to reconnect")
        # While the gateway was away the robots held (safety watchdog) instead of running past their chunks.
        # (Whether they also counted a link loss depends on the restart outlasting link_timeout_s: a quick one
        # is noticed as the new gateway's unknown_session instead; either way they reconnected.)
        assert fleet.total("holds") > holds_before
        before = fleet.total("replies")
        fleet.wait_for(lambda: fleet.total("replies") >= before + 20, what="actions after the restart")
        # Episodes that were running when the gateway died are re-sent in full and acked by the new one.
        fleet.wait_for(
            lambda: ray.get(platform.gateway.stats.remote())["episodes_committed"] >= 2,
            timeout=30,
            what="episodes to be committed by the restarted gateway",
        )
    assert ray.get(platform.gateway.ready.remote())["endpoint"] == platform.endpoint
    assert all(ep.acked for c in fleet.clients for ep in list(c.episodes)[:-1]), [
        (ep.episode_id, ep.acked, ep.refused, ep.outcome, len(ep.steps))
        for c in fleet.clients
        for ep in c.episodes
    ]


def test_the_platforms_workers_run_at_the_drivers_priority_not_rays_nicer_default(platform):
    """Ray starts workers 15 niceness steps below the raylet; the platform's environment (RAY_ENV) keeps
    them at its priority, so a robot program on the same core does not take the hot path's CPU."""
    import os

    def niceness(pid: int) -> int:
        return os.getpriority(os.PRIO_PROCESS, pid)

    actors = (platform.gateways[0], platform.data.for_task("reach"), platform.replicas["reach"][0])
    pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors])
    assert [niceness(p) for p in pids] == [niceness(0)] * 3
