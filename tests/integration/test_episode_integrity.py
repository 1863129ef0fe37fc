"""An ack means "stored as you sent it", through the real gateway, sockets and data server: robots may share
episode ids, a robot cut off by its lease resumes its episode or is told it was cut, and every episode the
gateway will not store (invalid id, too long) is answered with an error naming the rule and the episode."""

from __future__ import annotations

import time

import httpx
import numpy as np
import ray

from fleetrl.robots import protocol as P
from tests.conftest import ADMIN_TOKEN
from tests.integration.helpers import authenticated_raw, raw_end, raw_obs, raw_steps


def _stored(platform, robot_id: str, episode_id: str):
    return ray.get(platform.data.get_episode.remote(episode_id, robot_id))


def _wait_stored(platform, robot_id: str, episode_id: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return _stored(platform, robot_id, episode_id)
        except KeyError:
            time.sleep(0.2)
    raise AssertionError(f"episode {episode_id} of {robot_id} was not stored")


def _send_rows(raw, rid: str, episode: str, first: int, n: int, value: float) -> None:
    frame = raw_steps(rid, episode, first, n)
    frame.observations["state"][:] = value
    raw.send(frame)


def test_two_robots_with_the_same_episode_id_are_both_stored_as_sent(platform):
    robots = []
    for name, n, value in (("same-id-a", 8, 1.0), ("same-id-b", 12, 2.0)):
        raw, rid = authenticated_raw(platform, name)  # each sends at once: the test lease is 1.5 s
        _send_rows(raw, rid, "ep-0", 0, n, value)  # per-robot counters: a natural client's choice
        assert raw.request(raw_end(rid, "ep-0", n)) == P.Ack(robot_id=rid, episode_id="ep-0")
        robots.append((raw, rid, n, value))
    for _, rid, n, value in robots:
        ep = _stored(platform, rid, "ep-0")
        assert len(ep) == n and ep.robot_id == rid and np.all(ep.observations["state"] == value)
    # the same robot's true re-send is still stored once; a different episode under its id is refused
    raw, rid, _, _ = robots[1]
    assert isinstance(raw.request(P.Hello(robot_id=rid, token=raw.token)), P.Welcome)  # its lease ran out
    assert raw.request(raw_end(rid, "ep-0", 12)) == P.Ack(robot_id=rid, episode_id="ep-0")
    conflict = raw.request(raw_end(rid, "ep-0", 13))
    assert (conflict.code, conflict.episode_id) == (
        "episode_conflict",
        "ep-0",
    ) and "12 rows" in conflict.message
    assert ray.get(platform.data.episode_ids.remote("reach")).count("ep-0") == 2
    api = httpx.Client(base_url=platform.rest_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    shared = api.get("/v1/episodes/ep-0")
    assert shared.status_code == 409 and robots[0][1] in shared.json()["detail"]  # the id alone: which?
    one = api.get("/v1/episodes/ep-0", params={"robot_id": rid})
    assert one.status_code == 200 and one.json()["n_steps"] == 12 and one.json()["robot_id"] == rid
    label = api.post("/v1/episodes/ep-0/label", params={"robot_id": rid}, json={"outcome": "failure"})
    assert label.status_code == 200 and label.json()["outcome"] == "failure"
    assert _stored(platform, robots[0][1], "ep-0").outcome == "success"  # the other robot's is untouched
    assert api.get("/v1/episodes/ep-0", params={"robot_id": "rbt_nobody"}).status_code == 404
    for raw, *_ in robots:
        raw.close()


def test_a_robot_back_within_the_resume_window_completes_its_episode(platform):
    raw, rid = authenticated_raw(platform, "resume")
    assert isinstance(raw.request(raw_obs(rid, 9, episode="resumed")), P.Action)
    _send_rows(raw, rid, "resumed", 0, 10, 1.0)
    time.sleep(2.3)  # past the lease (1.5 s in the test config), inside lease + resume window (3.5 s)
    welcome = raw.request(P.Hello(robot_id=rid, token=raw.token))
    assert isinstance(welcome, P.Welcome)
    _send_rows(raw, rid, "resumed", 10, 10, 2.0)
    assert raw.request(raw_end(rid, "resumed", 20)) == P.Ack(robot_id=rid, episode_id="resumed")
    ep = _stored(platform, rid, "resumed")
    assert len(ep) == 20 and ep.outcome == "success"  # stored as sent, not as a cut
    assert ep.observations["state"][:10].max() == 1.0 and ep.observations["state"][10:].min() == 2.0
    raw.close()


def test_an_episode_cut_by_the_lease_is_stored_as_aborted_and_never_acked(platform):
    raw, rid = authenticated_raw(platform, "cut")
    assert isinstance(raw.request(raw_obs(rid, 9, episode="cut-ep")), P.Action)
    _send_rows(raw, rid, "cut-ep", 0, 10, 1.0)
    partial = _wait_stored(platform, rid, "cut-ep", timeout=15)  # lease + resume window passed
    assert (len(partial), partial.outcome, partial.labelled_by) == (10, "aborted", "gateway")
    assert isinstance(raw.request(P.Hello(robot_id=rid, token=raw.token)), P.Welcome)
    refused = raw.request(raw_steps(rid, "cut-ep", 10, 10))
    assert (refused.code, refused.episode_id) == ("episode_cut", "cut-ep") and "10 rows" in refused.message
    end = raw.request(raw_end(rid, "cut-ep", 20))
    assert (end.code, end.episode_id) == ("episode_cut", "cut-ep")  # not an ack: what is stored differs
    assert len(_stored(platform, rid, "cut-ep")) == 10
    assert isinstance(raw.request(raw_obs(rid, 0, episode="next-ep")), P.Action)  # a new episode is fine
    raw.close()


def test_invalid_episode_ids_are_answered_at_the_first_frame(platform):
    raw, rid = authenticated_raw(platform, "bad-ids")
    for bad in ("bad id", "../x", "x" * 200, "épisode", ".hidden", ""):
        for frame in (raw_obs(rid, 0, episode=bad), raw_steps(rid, bad, 0, 2), raw_end(rid, bad, 2)):
            reply = raw.request(frame, timeout_s=3)
            assert reply.code == "bad_message", (bad, reply)
            assert "1-128 characters of A-Z a-z 0-9 _ . -" in reply.message and reply.episode_id == bad[:128]
    assert not any(i in ray.get(platform.data.episode_ids.remote("reach")) for i in ("bad id", "../x"))
    raw.close()


def test_an_episode_over_the_row_limit_is_refused_and_the_robot_told(platform):
    limit = platform.cfg.gateway.max_episode_steps
    raw, rid = authenticated_raw(platform, "too-long")
    for first in range(0, limit, 1000):
        raw.send(raw_steps(rid, "long", first, min(1000, limit - first)))
    over = raw.request(raw_steps(rid, "long", limit, 1))
    assert (over.code, over.episode_id) == ("episode_too_long", "long") and str(limit) in over.message
    assert raw.request(raw_end(rid, "long", limit + 1)).code == "episode_too_long"
    assert "long" not in ray.get(platform.data.episode_ids.remote("reach"))
    raw.close()
