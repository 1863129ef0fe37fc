"""The gateway's dispatch part on its own: observations in, batched replica calls, action chunks out to the
right robots; replica failures, stale chunks, task removal and episode weight pinning. The replicas are
stand-ins whose ``infer`` the test answers; the part's scheduler, robot table and metrics are real."""

from __future__ import annotations

import asyncio

import numpy as np
from gateway_fakes import ACT_DIM, CHUNK, RemoteMethod, Wire, obs, replica_result, robot, settle, task

from fleetrl.robots import protocol as P
from fleetrl.workers.gateway.assembly import EpisodeAssembly
from fleetrl.workers.gateway.dispatch import ReplicaDispatch
from fleetrl.workers.gateway.rollout import NEWEST, Assignment
from fleetrl.workers.gateway.scheduler import Scheduler
from fleetrl.workers.metrics_server import MetricsBuffer


class Replica:
    """An inference replica stand-in: ``infer`` calls wait for the test unless ``answer`` is set, which
    then maps a batch to a result (every row's actions are its observation's first value)."""

    def __init__(self, answer: bool = False, version: int = 7):
        self.version = version
        self.infer = RemoteMethod(self.result, settled_by_hand=not answer)
        self.ready = RemoteMethod(lambda: 0)

    def result(
        self,
        batch: dict[str, np.ndarray],
        pins: np.ndarray | None = None,
        deterministic: np.ndarray | None = None,
    ) -> dict:
        return replica_result(batch, self.version)

    def answer(self, call: int) -> None:
        """Let call ``call`` return its result."""
        self.infer.refs[call].pending.set_result(self.result(*self.infer.calls[call]))


def build(replicas: list[Replica], **task_fields):
    wire, metrics, robots = Wire(), MetricsBuffer(), {}
    the_task = task(inference={"max_batch": 4, "batch_timeout_s": 0.05, "transport": "ray", **task_fields})
    part = ReplicaDispatch(Scheduler(), robots, wire.send, wire.refuse, metrics, asyncio.get_running_loop())
    part.add_task(the_task, replicas)
    for rid in ("r1", "r2", "r3"):
        robots[rid] = robot(rid, the_task)
    return part, wire, metrics, robots


def submit(part: ReplicaDispatch, robots: dict, robot_id: str, step: int, value: float) -> None:
    state = robots[robot_id]
    part.submit(state.task, robot_id, state.ident, obs(robot_id, step, value))


def metric_names(metrics: MetricsBuffer) -> set[str]:
    return {name for name, _, _ in metrics.drain()[0]}


def test_each_row_of_a_completed_batch_goes_to_its_own_robot():
    async def scenario():
        replica = Replica()
        part, wire, metrics, robots = build([replica], batch_timeout_s=5.0)
        submit(part, robots, "r1", 0, 1.0)  # the idle replica takes it at once
        submit(part, robots, "r2", 0, 2.0)  # these two wait for it, and then go as one batch
        submit(part, robots, "r3", 5, 3.0)
        await settle()
        assert len(replica.infer.calls) == 1 and wire.sent == []
        replica.answer(0)
        await settle()
        assert len(replica.infer.calls) == 2
        assert replica.infer.calls[1][0]["state"][:, 0].tolist() == [2.0, 3.0]
        await asyncio.sleep(0.2)  # the second batch's forward pass takes 200 ms
        replica.answer(1)
        await settle()
        for rid, step, value in (("r1", 0, 1.0), ("r2", 0, 2.0), ("r3", 5, 3.0)):
            (action,) = wire.to(robots[rid].ident)
            assert isinstance(action, P.Action) and (action.robot_id, action.step) == (rid, step)
            assert action.actions.shape == (CHUNK, ACT_DIM) and np.all(action.actions == value)
            assert action.policy_version == 7 and action.timings["queue_ms"] >= 0
            # arrival -> reply sent, as the gateway stamps it: only the second batch waited the 200 ms
            assert (action.timings["gateway_ms"] >= 200) == (rid != "r1"), (rid, action.timings)
        assert {"service_seconds", "inference_seconds", "batch_size", "queue_wait_seconds"} <= metric_names(
            metrics
        )

    asyncio.run(scenario())


def test_a_replica_that_does_not_answer_has_its_batch_requeued_and_comes_back():
    async def scenario():
        replica = Replica()
        part, wire, metrics, robots = build([replica])
        submit(part, robots, "r1", 3, 1.0)
        for _ in range(100):  # past batch_timeout_s the replica leaves the pool; ready() brings it back
            await asyncio.sleep(0.005)
            if len(replica.infer.calls) == 2:
                break
        assert len(replica.infer.calls) == 2 and replica.ready.calls and wire.sent == []
        assert replica.infer.calls[1][0]["state"][0, 0] == 1.0  # the same observation, again
        assert "replica_failures_total" in metric_names(metrics)
        replica.answer(1)
        await settle()
        (action,) = wire.to(robots["r1"].ident)
        assert isinstance(action, P.Action) and action.step == 3

    asyncio.run(scenario())


def test_a_failing_forward_pass_refuses_every_observation_of_the_batch():
    async def scenario():
        replica = Replica()
        part, wire, _, robots = build([replica])
        submit(part, robots, "r1", 4, 1.0)
        await settle()
        replica.infer.refs[0].pending.set_exception(ValueError("bad weights"))
        await settle()
        (error,) = wire.to(robots["r1"].ident)
        assert isinstance(error, P.Error) and (error.code, error.step, error.message) == (
            "inference_failed",
            4,
            "ValueError",
        )
        submit(part, robots, "r1", 5, 1.0)  # the replica keeps serving
        await settle()
        assert len(replica.infer.calls) == 2

    asyncio.run(scenario())


def test_no_chunk_goes_to_a_robot_under_human_control_or_computed_before_the_hand_back():
    async def scenario():
        part, wire, metrics, robots = build([Replica(answer=True)])
        robots["r1"].control = "human"
        robots["r2"].control_since = ("ep-1", 6)  # handed back at step 6: chunks for earlier steps are stale
        submit(part, robots, "r1", 8, 1.0)
        submit(part, robots, "r2", 5, 2.0)
        submit(part, robots, "r3", 0, 3.0)
        await settle()
        assert wire.to(robots["r1"].ident) == [] and wire.to(robots["r2"].ident) == []
        assert len(wire.to(robots["r3"].ident, P.Action)) == 1
        dropped = {(name, lab): n for name, lab, n in metrics.drain()[0]}[
            ("stale_chunks_dropped_total", ("reach",))
        ]
        assert dropped == 2

    asyncio.run(scenario())


def test_a_batch_of_a_task_removed_meanwhile_is_ignored():
    async def scenario():
        replica = Replica()
        part, wire, _, robots = build([replica])
        submit(part, robots, "r1", 0, 1.0)
        await settle()
        part.remove_task("reach")
        assert part.tasks == {} and part.replicas == {} and part.scheduler.pools() == []
        replica.answer(0)
        await settle()
        assert wire.sent == []

    asyncio.run(scenario())


def test_episode_reload_pins_each_episode_to_the_version_it_started_with():
    async def scenario():
        replica = Replica(answer=True, version=3)
        part, _, _, robots = build([replica], reload="episode")
        submit(part, robots, "r1", 0, 1.0)
        await settle()
        assert replica.infer.calls[0][1].tolist() == [-1]  # a new episode takes the newest version
        assert robots["r1"].pinned == ("ep-1", 3)
        replica.version = 4
        submit(part, robots, "r1", 1, 1.0)
        await settle()
        assert replica.infer.calls[1][1].tolist() == [3]
        assert robots["r1"].pinned == ("ep-1", 3)

    asyncio.run(scenario())


def test_rows_carry_the_version_and_mode_their_episode_was_assigned():
    async def scenario():
        replica = Replica()
        part, _, _, robots = build([replica])
        submit(part, robots, "r3", 0, 3.0)  # nothing pins: the fast path sends no per-row versions
        await settle()
        assert replica.infer.calls[0][1:] == (None, None)
        rollout = part.rollouts["reach"]
        rollout.pinned, rollout.held = 3, (3,)  # an operator's pin: every row now names its version
        assigned = {"r1": Assignment(3), "r2": Assignment(5, deterministic=True, evaluation="ev")}
        for rid, assignment in assigned.items():
            asm = robots[rid].assemblies["ep-1"] = EpisodeAssembly(robots[rid].task, rid, "ep-1")
            asm.assignment = assignment
        replica.answer(0)
        for rid, value in (("r1", 1.0), ("r2", 2.0), ("r3", 3.0)):
            submit(part, robots, rid, 1, value)
        await settle()
        replica.answer(1)
        await settle()
        pins, deterministic = replica.infer.calls[1][1:]
        assert pins.tolist() == [3, 5, NEWEST]  # r3's episode began before the pin: it keeps the newest
        assert deterministic.tolist() == [False, True, False]

    asyncio.run(scenario())


def test_dropping_a_robots_pending_observations_keeps_the_others():
    async def scenario():
        replica = Replica()
        part, _, _, robots = build([replica])
        submit(part, robots, "r1", 0, 1.0)  # in flight
        submit(part, robots, "r1", 1, 1.0)
        submit(part, robots, "r2", 0, 2.0)
        part.drop_pending(robots["r1"])
        assert part.scheduler.queue_depth("reach") == 1
        await settle()
        replica.answer(0)
        await settle()
        assert replica.infer.calls[1][0]["state"][:, 0].tolist() == [2.0]

    asyncio.run(scenario())


def test_a_dispatch_interval_sends_what_it_held_back_as_one_batch_when_it_ends():
    async def scenario():
        first, second = Replica(answer=True), Replica(answer=True)
        part, wire, _, robots = build([first, second], dispatch_interval_ms=30)
        submit(part, robots, "r1", 0, 1.0)  # a quiet pool: at once
        submit(part, robots, "r2", 0, 2.0)  # a replica is idle, but these wait for the interval's end
        submit(part, robots, "r3", 0, 3.0)
        await settle()
        assert [len(r.infer.calls) for r in (first, second)] == [1, 0] and len(wire.sent) == 1
        for _ in range(100):  # the gateway's timer sends them; nothing else arrives to trigger it
            await asyncio.sleep(0.005)
            if second.infer.calls:
                break
        [(batch, _, _)] = second.infer.calls
        assert batch["state"][:, 0].tolist() == [2.0, 3.0]
        await settle()
        assert {m.robot_id for _, m in wire.sent} == {"r1", "r2", "r3"}
        queue_ms = {m.robot_id: m.timings["queue_ms"] for _, m in wire.sent}
        assert queue_ms["r1"] < 1 and 20 <= queue_ms["r2"] < 500

    asyncio.run(scenario())
