"""The gateway's intake part on its own: ``steps`` and ``episode_end`` frames become an episode that is handed
to the data server and acked only once stored; gaps, incomplete and ended episodes are answered with the row
the gateway needs or refused. The data server is a stand-in with an ``ingest`` remote method."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import numpy as np
from gateway_fakes import OBS_DIM, RemoteMethod, Wire, end, robot, settle, steps, task

from fleetrl.robots import protocol as P
from fleetrl.workers.gateway.intake import EpisodeIntake
from fleetrl.workers.gateway.resets import ResetRequests
from fleetrl.workers.metrics_server import MetricsBuffer


class DataServer:
    """``ingest`` fails for the first ``failures`` calls (a restarting data server), then stores."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.stored: list = []
        self.ingest = RemoteMethod(self._ingest)

    def _ingest(self, episode) -> dict:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("data server restarting")
        self.stored.append(episode)
        return {"stored": True}


def build(data: DataServer | None):
    wire, metrics, committed = Wire(), MetricsBuffer(), []

    async def after_commit(state) -> None:
        committed.append(state.robot_id)

    part = EpisodeIntake(
        data, wire.send, wire.refuse, wire.refused, metrics, asyncio.get_running_loop(), after_commit
    )
    return part, wire, metrics, committed, robot("r1", task())


def events(metrics: MetricsBuffer, name: str) -> list[tuple]:
    """The labels of each increment of counter ``name`` (a drained counter carries its summed count)."""
    return [labels for n, labels, count in metrics.drain()[0] if n == name for _ in range(int(count))]


def test_an_ended_episode_is_stored_then_acked_and_counted_once():
    async def scenario():
        data = DataServer()
        part, wire, metrics, committed, state = build(data)
        part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 3))
        part.on_steps(state.ident, state, steps("r1", "ep-1", 3, 2))
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 5, meta={"reset_seed": 4}))
        assert wire.sent == [] and "ep-1" in state.committing  # no ack before the data server has it
        await settle()
        (episode,) = data.stored
        assert (episode.episode_id, episode.robot_id, episode.outcome, len(episode)) == (
            "ep-1",
            "r1",
            "success",
            5,
        )
        assert episode.observations["state"][:, 0].tolist() == [0, 1, 2, 3, 4]
        assert episode.meta["reset_seed"] == 4
        (ack,) = wire.sent
        assert ack == (state.ident, P.Ack(robot_id="r1", episode_id="ep-1"))
        assert part.episodes_committed == 1 and committed == ["r1"]
        assert state.outcomes["success"] == 1 and state.steps_done == 5 and not state.assemblies
        assert events(metrics, "episodes_total") == [("reach", "success")]
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 5))  # its ack was lost: ack again
        assert wire.sent[-1][1] == P.Ack(robot_id="r1", episode_id="ep-1")
        await settle()
        assert len(data.stored) == 1 and state.outcomes["success"] == 1
        assert events(metrics, "episode_resends_total") == [("end_after_commit",)]

    asyncio.run(scenario())


def test_the_commit_is_retried_while_the_data_server_restarts():
    async def scenario():
        data = DataServer(failures=1)
        part, wire, metrics, _, state = build(data)
        part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 2))
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 2))
        await asyncio.sleep(0.4)  # the first retry waits 0.25 s
        assert len(data.ingest.calls) == 2 and len(data.stored) == 1
        assert [m for _, m in wire.sent] == [P.Ack(robot_id="r1", episode_id="ep-1")]
        assert ("commit_retry",) in events(metrics, "episode_resends_total")

    asyncio.run(scenario())


def test_missing_rows_are_asked_for_from_the_first_one_missing():
    async def scenario():
        part, wire, metrics, _, state = build(DataServer())
        part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 2))
        part.on_steps(state.ident, state, steps("r1", "ep-1", 4, 2))  # rows 2 and 3 never arrived
        part.on_steps(state.ident, state, steps("r1", "ep-1", 6, 2))  # asked once only
        (ask,) = wire.sent
        assert ask[1] == P.Error(
            robot_id="r1",
            code="out_of_order",
            message="rows from step 2 are missing",
            step=2,
            episode_id="ep-1",
        )
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 8))
        incomplete = wire.sent[-1][1]
        assert (incomplete.code, incomplete.step, incomplete.episode_id) == ("incomplete_episode", 2, "ep-1")
        assert events(metrics, "episode_resends_total") == [("missing_rows",), ("incomplete_episode",)]
        part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 1))  # a re-send that raced the original
        assert wire.refused["duplicate_rows"] == 1 and len(wire.sent) == 2

    asyncio.run(scenario())


def test_bad_ends_and_ended_episodes_are_refused():
    async def scenario():
        part, wire, _, _, state = build(DataServer())
        part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 2))
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 2, outcome="great"))
        assert wire.sent[-1][1].code == "bad_message"
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 2))
        await settle()
        assert not part.enter_episode(state.ident, state, "ep-1", 0)  # it ended: no more observations
        error = wire.sent[-1][1]
        assert (error.code, error.step) == ("out_of_order", 0)
        bad = steps("r1", "ep-2", 0, 1)
        bad.observations["state"] = np.zeros((1, OBS_DIM + 1), np.float32)
        part.on_steps(state.ident, state, bad)
        assert wire.sent[-1][1].code == "bad_observation" and state.assemblies["ep-2"].expected == 0
        assert wire.refused == Counter({"bad_message": 1, "out_of_order": 1, "bad_observation": 1})

    asyncio.run(scenario())


def test_a_robot_going_offline_keeps_the_rows_of_its_current_episode_as_aborted():
    async def scenario():
        data = DataServer()
        part, wire, _, _, state = build(data)
        assert part.enter_episode(state.ident, state, "ep-1", 0)
        part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 3))
        part.on_steps(state.ident, state, steps("r1", "ep-0", 0, 1))  # an earlier episode being re-sent
        part.end_session(state, "silent past the resume window")
        await settle()
        (partial,) = data.stored
        assert (partial.episode_id, partial.outcome, len(partial), partial.truncated) == (
            "ep-1",
            "aborted",
            3,
            True,
        )
        assert state.assemblies == {} and state.episode_id is None and state.outcomes["aborted"] == 1
        assert wire.sent == []  # nobody to ack: the robot is gone
        # Back later, the robot sends the rest and its end: what is stored is not what it sent, so no ack
        part.on_steps(state.ident, state, steps("r1", "ep-1", 3, 2))
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 5))
        await settle()
        codes = [(m.code, m.episode_id) for _, m in wire.sent]
        assert (
            codes == [("episode_cut", "ep-1")] * 2
            and "3 rows are stored as aborted" in wire.sent[0][1].message
        )
        assert not any(isinstance(m, P.Ack) for _, m in wire.sent) and len(data.stored) == 1

    asyncio.run(scenario())


def test_an_episode_over_the_row_limit_is_refused_for_good_and_never_acked():
    async def scenario():
        data = DataServer()
        part, wire, metrics, _, state = build(data)
        part.max_episode_steps = 4
        part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 3))
        part.on_steps(state.ident, state, steps("r1", "ep-1", 3, 2))  # rows 3-4: one over the limit
        part.on_steps(state.ident, state, steps("r1", "ep-1", 5, 1))
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 6))
        await settle()
        assert [(m.code, m.episode_id) for _, m in wire.sent] == [("episode_too_long", "ep-1")] * 3
        assert "4 rows" in wire.sent[0][1].message and data.stored == [] and "ep-1" not in state.assemblies
        assert events(metrics, "episodes_refused_total") == [("reach", "episode_too_long")]
        part.on_steps(state.ident, state, steps("r1", "ep-2", 0, 4))  # the next episode is fine
        part.on_episode_end(state.ident, state, end("r1", "ep-2", 4))
        await settle()
        assert wire.sent[-1][1] == P.Ack(robot_id="r1", episode_id="ep-2")

    asyncio.run(scenario())


class RefusingDataServer(DataServer):
    """``ingest`` raises ``error`` (what a real data server raises for an episode it will never store)."""

    def __init__(self, error: Exception):
        super().__init__()
        self.error, self.calls = error, 0

    def _ingest(self, episode) -> dict:
        self.calls += 1
        raise self.error


def test_an_episode_the_data_server_refuses_is_answered_once_and_not_retried():
    from fleetrl.robots.episode import EpisodeConflict

    async def scenario():
        for error, code in ((EpisodeConflict("stored already with other contents"), "episode_conflict"),
                            (ValueError("column reward has NaN"), "episode_unstorable")):  # fmt: skip
            data = RefusingDataServer(error)
            part, wire, _, _, state = build(data)
            part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 2))
            part.on_episode_end(state.ident, state, end("r1", "ep-1", 2))
            await settle()
            (answer,) = [m for _, m in wire.sent]
            assert (answer.code, answer.episode_id, answer.message) == (code, "ep-1", str(error))
            assert data.calls == 1 and sum(state.outcomes.values()) == 0 and not state.committing
            part.on_episode_end(state.ident, state, end("r1", "ep-1", 2))  # a re-send gets the same answer
            await settle()
            assert wire.sent[-1][1].code == code and data.calls == 1

    asyncio.run(scenario())


def test_without_a_data_server_episodes_are_acked_and_dropped():
    async def scenario():
        part, wire, _, _, state = build(None)
        part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 2))
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 2))
        await settle()
        assert [m for _, m in wire.sent] == [P.Ack(robot_id="r1", episode_id="ep-1")]

    asyncio.run(scenario())


def test_after_a_commit_return_and_explore_may_send_the_robot_to_a_failure_point():
    """The intake's ``after_commit`` wired to the resets part, as the gateway wires them."""

    async def scenario():
        data = DataServer()
        data.sample_failure_state = RemoteMethod(lambda task: {"episode_id": "ep-f", "step": 1})
        data.get_episode = RemoteMethod(lambda episode_id: data.stored[0])
        wire, metrics, state = (
            Wire(),
            MetricsBuffer(),
            robot("r1", task(return_and_explore={"failure_fraction": 1})),
        )
        resets = ResetRequests({"r1": state}, data, wire.send, random.Random(0))
        part = EpisodeIntake(
            data,
            wire.send,
            wire.refuse,
            wire.refused,
            metrics,
            asyncio.get_running_loop(),
            resets.maybe_explore,
        )
        part.on_steps(state.ident, state, steps("r1", "ep-1", 0, 3))
        part.on_episode_end(
            state.ident, state, end("r1", "ep-1", 3, outcome="failure", meta={"reset_seed": 9})
        )
        await settle()
        ack, reset = (m for _, m in wire.sent)
        assert isinstance(ack, P.Ack)
        assert isinstance(reset, P.Reset) and (reset.state, reset.seed, reset.step) == ("recorded", 9, 1)
        assert data.sample_failure_state.calls == [("reach",)] and data.get_episode.calls == [("ep-f",)]

    asyncio.run(scenario())


def policy_steps(robot_id: str, episode_id: str, first: int, n: int) -> P.Steps:
    """``steps`` rows that a policy ran in lockstep chunks of 2 (a chunk starts on every even row)."""
    msg = steps(robot_id, episode_id, first, n)
    rows = np.arange(first, first + n)
    msg.columns["policy_version"][:] = 0
    msg.columns["obs_step"][:] = rows - rows % 2
    msg.columns["log_prob"][:] = np.where(rows % 2 == 0, -1.0, np.nan)
    return msg


def test_a_task_with_segment_steps_hands_out_pieces_of_running_episodes_and_still_commits_the_whole():
    async def scenario(segment_steps: int):
        data = DataServer()
        data.add_segment = RemoteMethod()
        part, wire, _, _, _ = build(data)
        learner = {"algorithm": "ppo", "segment_steps": segment_steps} if segment_steps else None
        state = robot("r1", task(learner=learner))
        part.on_steps(state.ident, state, policy_steps("r1", "ep-1", 0, 3))
        await settle()
        assert data.add_segment.calls == []  # row 4, where the first piece would end, has not arrived
        part.on_steps(state.ident, state, policy_steps("r1", "ep-1", 3, 7))
        part.on_episode_end(state.ident, state, end("r1", "ep-1", 10, outcome="failure", terminated=True))
        await settle()
        assert len(data.stored) == 1 and len(data.stored[0]) == 10  # the whole episode, as before
        assert wire.to(state.ident, P.Ack)
        return [args[0] for args in data.add_segment.calls]

    pieces = asyncio.run(scenario(4))
    assert [(p.meta["first_row"], len(p)) for p in pieces] == [(0, 4), (4, 4), (8, 2)]
    assert [p.truncated for p in pieces] == [True, True, False] and pieces[-1].terminated
    assert [p.outcome for p in pieces] == ["aborted", "aborted", "failure"]
    assert pieces[0].final_observation["state"][0] == 4.0  # cut at row 4: bootstrap from its observation
    assert asyncio.run(scenario(0)) == []  # whole episodes only: nothing handed out
