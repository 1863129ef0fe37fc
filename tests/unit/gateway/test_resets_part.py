"""The gateway's resets part on its own: a reset request becomes a ``reset`` frame to the robot's session, or
an answer with the HTTP code the REST layer returns (409 not connected / not replayable / other task, 404
nothing recorded, 422 step out of range). The data server is a stand-in with the remote methods it calls."""

from __future__ import annotations

import asyncio
import random

import numpy as np
from gateway_fakes import ACT_DIM, RemoteMethod, Wire, robot, task

from fleetrl.robots import protocol as P
from fleetrl.robots.episode import Episode, empty_columns
from fleetrl.workers.gateway.resets import ResetRequests


def recorded(episode_id: str, n: int = 5, task_name: str = "reach", **meta) -> Episode:
    return Episode(
        episode_id,
        task_name,
        "r1",
        "failure",
        {"state": np.zeros((n, 3), np.float32)},
        np.arange(n * ACT_DIM, dtype=np.float32).reshape(n, ACT_DIM),
        empty_columns(n),
        {"state": np.zeros(3, np.float32)},
        meta=meta,
    )


class DataServer:
    def __init__(self, episodes: dict[str, Episode], failure: dict | None = None):
        self.get_episode = RemoteMethod(lambda episode_id: episodes[episode_id])  # KeyError like the actor
        self.sample_failure_state = RemoteMethod(lambda task_name: failure)


def build(data: DataServer, failure_fraction: float = 0.0):
    wire = Wire()
    state = robot("r1", task(return_and_explore={"failure_fraction": failure_fraction}))
    return ResetRequests({"r1": state}, data, wire.send, random.Random(0)), wire, state


def request(part: ResetRequests, body: dict, robot_id: str = "r1") -> dict:
    return asyncio.run(part.request(robot_id, body))


def test_a_named_state_goes_to_the_robots_session_as_is():
    part, wire, state = build(DataServer({}))
    answer = request(part, {"state": "home"})
    ((ident, msg),) = wire.sent
    assert ident == state.ident and isinstance(msg, P.Reset) and (msg.state, msg.episode_id) == ("home", None)
    assert answer == {"ok": True, "robot_id": "r1", "state": "home", "episode_id": None, "step": None,
                      "request_id": msg.request_id}  # fmt: skip
    assert len(msg.request_id) == 12
    assert request(part, {})["state"] == "initial"


def test_a_recorded_state_goes_with_the_seed_and_the_actions_up_to_its_step():
    part, wire, _ = build(DataServer({"ep-1": recorded("ep-1", reset_seed=11)}))
    answer = request(part, {"episode_id": "ep-1", "step": 3})
    msg = wire.sent[-1][1]
    assert (msg.state, msg.episode_id, msg.step, msg.seed) == ("recorded", "ep-1", 3, 11)
    assert np.array_equal(msg.actions, recorded("ep-1").actions[:3])
    assert answer["ok"] and (answer["state"], answer["step"]) == ("recorded", 3)


def test_a_failure_point_is_sampled_from_the_data_server():
    data = DataServer({"ep-f": recorded("ep-f", reset_seed=2)}, failure={"episode_id": "ep-f", "step": 4})
    part, wire, _ = build(data)
    assert request(part, {"failure": True})["step"] == 4
    assert data.sample_failure_state.calls == [("reach",)] and wire.sent[-1][1].episode_id == "ep-f"


def test_resets_that_cannot_be_done_are_answered_with_their_code_and_nothing_is_sent():
    episodes = {
        "other": recorded("other", task_name="push", reset_seed=1),
        "no-seed": recorded("no-seed"),
        "restored": recorded("restored", reset_seed=1, reset_from_episode="x"),
        "ok": recorded("ok", n=5, reset_seed=1),
    }
    part, wire, state = build(DataServer(episodes))
    cases = [
        ({"failure": True}, 404),  # nothing recorded for the task yet
        ({"episode_id": "missing"}, 404),
        ({"episode_id": "other"}, 409),
        ({"episode_id": "no-seed"}, 409),
        ({"episode_id": "restored"}, 409),
        ({"episode_id": "ok", "step": 5}, 422),
    ]
    for body, code in cases:
        answer = request(part, body)
        assert answer["ok"] is False and answer["code"] == code, (body, answer)
        assert isinstance(answer["error"], str) and answer["error"]
    assert request(part, {"state": "home"}, robot_id="r9")["code"] == 409  # unknown robot
    state.online = False
    assert request(part, {"state": "home"})["code"] == 409  # not connected
    assert wire.sent == []


def test_return_and_explore_restarts_at_a_failure_point_as_often_as_the_task_asks():
    data = DataServer({"ep-f": recorded("ep-f", reset_seed=2)}, failure={"episode_id": "ep-f", "step": 1})
    part, wire, state = build(data, failure_fraction=1.0)
    asyncio.run(part.maybe_explore(state))
    assert wire.sent[-1][1].state == "recorded"
    never, never_wire, never_state = build(data, failure_fraction=0.0)
    asyncio.run(never.maybe_explore(never_state))
    assert never_wire.sent == [] and len(data.sample_failure_state.calls) == 1
    nothing_yet, quiet_wire, quiet_state = build(DataServer({}), failure_fraction=1.0)
    asyncio.run(nothing_yet.maybe_explore(quiet_state))  # no failure recorded: the usual reset, no error
    assert quiet_wire.sent == []
