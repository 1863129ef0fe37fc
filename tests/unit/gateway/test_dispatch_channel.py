"""The gateway's dispatch part over real replica channels (``inference.transport: zmq``, the default):
robots served before and after the replica connects, and a replica whose process goes away has its
channel dropped and is reconnected at its new address once it answers again."""

from __future__ import annotations

import asyncio

from gateway_fakes import RemoteMethod, Wire, obs, replica_result, robot, task

from fleetrl.workers.gateway.dispatch import ReplicaDispatch
from fleetrl.workers.gateway.scheduler import Scheduler
from fleetrl.workers.metrics_server import MetricsBuffer
from fleetrl.workers.replica_channel import ChannelServer

HOST = "127.0.0.1"


async def wait_for(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


class ChannelReplica:
    """A replica actor stand-in whose ``channel()`` hands out a real ChannelServer's address; ``restart``
    replaces the server (as Ray's restart of a dead replica would, on a new port)."""

    def __init__(self):
        self.server = ChannelServer(self.result, HOST)
        self.channel = RemoteMethod(lambda: self.server.address())
        self.ready = RemoteMethod(lambda: "reach/0")

    @staticmethod
    def result(batch, pins, deterministic):
        return replica_result(batch, version=5, compute_s=0.001)

    def restart(self) -> None:
        self.server.close()
        self.server = ChannelServer(self.result, HOST)


def test_dispatch_serves_robots_over_the_channel_and_reconnects_to_a_restarted_replica():
    replica = ChannelReplica()

    async def scenario():
        wire, metrics, robots = Wire(), MetricsBuffer(), {}
        the_task = task(inference={"max_batch": 4, "batch_timeout_s": 2.0})
        assert the_task.inference.transport == "zmq"  # the default
        part = ReplicaDispatch(
            Scheduler(), robots, wire.send, wire.refuse, metrics, asyncio.get_running_loop()
        )
        part.add_task(the_task, [replica])
        for rid in ("r1", "r2"):
            robots[rid] = robot(rid, the_task)
        for i, rid in enumerate(("r1", "r2")):  # before the replica is connected: they wait in the queue
            part.submit(the_task, rid, robots[rid].ident, obs(rid, 0, float(i + 1)))
        await wait_for(lambda: len(wire.sent) == 2)
        assert sorted(m.actions[0, 0] for _, m in wire.sent) == [1.0, 2.0]
        assert {m.policy_version for _, m in wire.sent} == {5}
        assert "reach/0" in part.channels

        first_endpoint = part.channels["reach/0"].endpoint
        replica.restart()  # the replica's process goes away and comes back on a new port
        await wait_for(lambda: part.channels.get("reach/0") is None or part.channels["reach/0"].lost)
        part.submit(the_task, "r1", robots["r1"].ident, obs("r1", 1, 7.0))
        await wait_for(lambda: len(wire.sent) == 3)
        assert wire.sent[-1][1].actions[0, 0] == 7.0 and wire.sent[-1][1].step == 1
        assert part.channels["reach/0"].endpoint != first_endpoint
        assert wire.refused == {}
        part.close()

    try:
        asyncio.run(scenario())
    finally:
        replica.server.close()
