"""Inline inference (``inference.transport: inline``) without Ray: the gateway's copy of a policy is a real
``InferenceReplica`` built in this process; the dispatch part runs its forward pass and answers the robots;
the weight board's pool member forwards only replica methods to its gateway; the board's ``join`` replaces
a restarted gateway's member; a copy refuses what it cannot run."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest
from gateway_fakes import ACT_DIM, CHUNK, Wire, obs, robot, settle, task

from fleetrl.robots import protocol as P
from fleetrl.workers.gateway.dispatch import ReplicaDispatch
from fleetrl.workers.gateway.inline import REPLICA_METHODS, GatewayCopy, InlinePolicies, catch_up
from fleetrl.workers.gateway.scheduler import Scheduler
from fleetrl.workers.inference.replica import InferenceReplica
from fleetrl.workers.metrics_server import MetricsBuffer
from fleetrl.workers.task import InferencePoolConfig
from fleetrl.workers.weights import WeightBoard


def inline_task(**inference):
    return task(inference={"transport": "inline", **inference})


class FakeGateway:
    """What a ``GatewayCopy`` calls: ``inline_call.remote(task, method, *args)``, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @property
    def inline_call(self):
        outer = self

        class Method:
            def remote(self, *args):
                outer.calls.append(args)
                return "ref"

        return Method()


def test_the_dispatch_part_runs_an_inline_copy_and_answers_each_robot_with_its_row():
    async def scenario():
        the_task = inline_task(max_batch=4)
        copy = InferenceReplica(the_task, 0, name="reach/gateway")
        wire, robots = Wire(), {}
        part = ReplicaDispatch(
            Scheduler(), robots, wire.send, wire.refuse, MetricsBuffer(), asyncio.get_running_loop()
        )
        part.add_task(the_task, [], copy)
        for rid in ("r1", "r2", "r3"):
            robots[rid] = robot(rid, the_task)
            part.submit(the_task, rid, robots[rid].ident, obs(rid, 4, float(len(rid))))
        await settle()
        for rid in ("r1", "r2", "r3"):
            (action,) = wire.to(robots[rid].ident)
            assert isinstance(action, P.Action) and (action.robot_id, action.step) == (rid, 4)
            assert action.actions.shape == (CHUNK, ACT_DIM) and np.all(np.abs(action.actions) <= 1)
            assert action.replica == "reach/gateway" and action.policy_version == 0
        assert copy.calls == 2  # the first observation went at once, the two behind it as one batch
        part.remove_task(the_task.name)
        assert not part.inline and not part.replicas

    asyncio.run(scenario())


def test_a_task_and_its_copy_must_agree_on_the_transport():
    async def scenario():
        part = ReplicaDispatch(
            Scheduler(), {}, Wire().send, Wire().refuse, MetricsBuffer(), asyncio.get_running_loop()
        )
        with pytest.raises(ValueError, match="inline"):
            part.add_task(inline_task(), [])  # inline without its copy
        with pytest.raises(ValueError, match="inline"):
            part.add_task(task(), [], InferenceReplica(inline_task(), 0, name="x"))

    asyncio.run(scenario())


def test_the_pool_member_forwards_only_replica_methods_to_its_gateway_and_survives_pickling():
    gateway = FakeGateway()
    member = GatewayCopy(gateway, "reach", "gateway-1")
    assert member.load_weights.remote({"w": 1}, 3, 0.5) == "ref"
    assert member.served_version.remote() == "ref"
    assert gateway.calls == [("reach", "load_weights", {"w": 1}, 3, 0.5), ("reach", "served_version")]
    with pytest.raises(AttributeError):
        member.infer  # noqa: B018 - not a method the board may call
    assert "infer" not in REPLICA_METHODS
    again = pickle.loads(pickle.dumps(GatewayCopy("handle", "reach", "gateway-1")))
    assert (again.gateway, again.task, again.key) == ("handle", "reach", "gateway-1")


def test_the_copies_load_weights_through_replica_methods_and_refuse_anything_else():
    policies = InlinePolicies(InferenceReplica, "gateway", 0, weights=None, metrics=None)
    the_task = inline_task()
    copy = policies.add(the_task)
    state = policies.call("reach", "served_state")
    assert policies.call("reach", "served_version") == 0
    policies.call("reach", "load_weights", {k: np.zeros_like(v) for k, v in state.items()}, 3)
    assert copy.served_version() == 3
    with pytest.raises(ValueError, match="not a replica method"):
        policies.call("reach", "infer", {})
    with pytest.raises(KeyError, match="no inline copy"):
        policies.call("other", "served_version")
    with pytest.raises(ValueError, match="no way to run a policy inline"):
        InlinePolicies(None, "gateway", 0, None, None).add(the_task)


def test_the_board_lets_a_gateway_join_a_registered_pool_once_and_hands_it_the_newest_version():
    board = WeightBoard()
    assert board.join("reach", GatewayCopy("h0", "reach", "gateway")) is None  # not registered (deleted)
    board.register("reach", [])
    latest, held = board.join("reach", GatewayCopy("h0", "reach", "gateway"))
    assert latest is None and held == {}
    board.join("reach", GatewayCopy("h1", "reach", "gateway-1"))
    board.join("reach", GatewayCopy("h2", "reach", "gateway"))  # the same gateway, restarted
    assert [(m.key, m.gateway) for m in board.pools()["reach"]] == [("gateway-1", "h1"), ("gateway", "h2")]


def test_a_rejoining_copy_loads_a_newer_version_and_missing_holds_but_never_releases_one():
    copy = InferenceReplica(inline_task(), 0, name="reach/gateway")
    zeros = {k: np.zeros_like(v) for k, v in copy.served_state().items()}
    fetched = []
    fetch = lambda ref: fetched.append(ref) or zeros  # noqa: E731 - what ray.get returns for the ref
    catch_up(copy, (3, ["ref-3"], 0.0), {}, fetch)
    assert copy.served_version() == 3 and fetched == ["ref-3"] and copy.backend.kept_versions() == [3]
    catch_up(copy, (2, ["ref-2"], 0.0), {}, fetch)  # an older answer: nothing loaded
    assert copy.served_version() == 3 and fetched == ["ref-3"]
    catch_up(copy, (3, ["ref-3"], 0.0), {0: None}, fetch)  # a pin to version 0 it missed
    assert copy.backend.kept_versions() == [0, 3] and fetched == ["ref-3"]
    catch_up(copy, None, {}, fetch)  # a restarted board that holds nothing yet: the hold stays
    assert copy.backend.kept_versions() == [0, 3]


def test_an_inline_pool_runs_on_the_gateways_cpu():
    with pytest.raises(ValueError, match="inline"):
        InferencePoolConfig(transport="inline", backend="vllm")
    with pytest.raises(ValueError, match="inline"):
        InferencePoolConfig(transport="inline", num_gpus=1)
    assert InferencePoolConfig(transport="inline").transport == "inline"
