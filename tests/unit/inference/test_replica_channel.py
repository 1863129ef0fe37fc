"""The replica channel on real ZeroMQ sockets: requests answered and matched by id, a peer without the
token ignored, malformed requests and failing forward passes answered with errors, a replica process
that dies noticed at once (socket monitor). The gateway's side of it: ``tests/unit/gateway/test_dispatch_channel.py``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zmq

from fleetrl.robots.protocol.codec import pack
from fleetrl.workers.replica_channel import (
    ChannelClient,
    ChannelServer,
    ReplicaError,
    ReplicaLost,
    decode_request,
)

HOST = "127.0.0.1"


def doubling(batch, pins, deterministic):
    """A forward pass stand-in: actions are twice the state; pins come back as the versions."""
    rows = batch["state"].shape[0]
    versions = np.full(rows, 3, np.int64) if pins is None else pins
    return {"actions": 2 * batch["state"], "log_probs": np.zeros(rows, np.float32), "versions": versions}


@pytest.fixture
def server():
    s = ChannelServer(doubling, HOST, "test")
    yield s
    s.close()


def test_requests_are_answered_and_matched_to_their_callers(server):
    async def scenario():
        ctx = zmq.Context()
        client = ChannelClient(ctx, server.address(), asyncio.get_running_loop())
        states = [np.full((i + 1, 4), float(i), np.float32) for i in range(5)]
        pins = np.array([9, -1], np.int64)
        results = await asyncio.gather(
            *(client.infer({"state": s}, None, None) for s in states),
            client.infer({"state": states[1]}, pins, np.array([True, False])),
        )
        for s, r in zip(states, results, strict=False):
            np.testing.assert_array_equal(r["actions"], 2 * s)
            assert r["versions"].tolist() == [3] * len(s)
        assert results[-1]["versions"].tolist() == [9, -1]
        client.close()
        ctx.term()

    asyncio.run(scenario())
    assert server.served == 6 and server.refused == 0


def test_a_peer_without_the_token_gets_nothing_and_bad_requests_get_an_error(server):
    async def scenario():
        ctx = zmq.Context()
        loop = asyncio.get_running_loop()
        stranger = ChannelClient(ctx, server.address() | {"token": b"x" * 16}, loop)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stranger.infer({"state": np.zeros((1, 4), np.float32)}, None, None), 0.5)
        assert server.refused == 1 and server.served == 0
        client = ChannelClient(ctx, server.address(), loop)
        with pytest.raises(ReplicaError, match="bad request"):  # an empty batch is not a request
            await asyncio.wait_for(client.infer({}, None, None), 5)
        # the channel goes on serving after both
        result = await asyncio.wait_for(client.infer({"state": np.ones((2, 4), np.float32)}, None, None), 5)
        np.testing.assert_array_equal(result["actions"], np.full((2, 4), 2.0, np.float32))
        stranger.close(), client.close()
        ctx.term()

    asyncio.run(scenario())


def test_requests_are_validated_before_a_forward_pass():
    with pytest.raises(Exception, match="integer id"):
        decode_request(pack({"batch": {"state": np.zeros(2)}}))
    with pytest.raises(Exception, match="arrays"):
        decode_request(pack({"id": 1, "batch": {"state": [1, 2]}}))
    with pytest.raises(Exception, match="pins"):
        decode_request(pack({"id": 1, "batch": {"state": np.zeros(2)}, "pins": "all"}))
    with pytest.raises(Exception, match="msgpack"):
        decode_request(b"\xc1 not msgpack")
    rid, batch, pins, det = decode_request(pack({"id": 4, "batch": {"state": np.zeros((2, 3))}}))
    assert (rid, batch["state"].shape, pins, det) == (4, (2, 3), None, None)


def test_a_failing_forward_pass_is_an_error_reply_and_the_channel_goes_on():
    calls = []

    def flaky(batch, pins, deterministic):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return doubling(batch, pins, deterministic)

    s = ChannelServer(flaky, HOST)

    async def scenario():
        ctx = zmq.Context()
        client = ChannelClient(ctx, s.address(), asyncio.get_running_loop())
        with pytest.raises(ReplicaError, match="RuntimeError: CUDA out of memory"):
            await asyncio.wait_for(client.infer({"state": np.ones((1, 4))}, None, None), 5)
        assert (await asyncio.wait_for(client.infer({"state": np.ones((1, 4))}, None, None), 5))["actions"][
            0, 0
        ] == 2
        client.close()
        ctx.term()

    try:
        asyncio.run(scenario())
    finally:
        s.close()


SERVER_PROCESS = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from fleetrl.workers.replica_channel import ChannelServer
    def slow(batch, pins, det):
        time.sleep(60)  # never answers: the test kills this process while a request is in flight
    s = ChannelServer(slow, "127.0.0.1")
    print(s.endpoint, s.token.hex(), flush=True)
    time.sleep(120)
    """
)


def test_a_replica_process_that_dies_fails_its_requests_at_once():
    proc = subprocess.Popen([sys.executable, "-c", SERVER_PROCESS], stdout=subprocess.PIPE, text=True)
    try:
        endpoint, token = proc.stdout.readline().split()

        async def scenario():
            ctx = zmq.Context()
            loop = asyncio.get_running_loop()
            client = ChannelClient(ctx, {"endpoint": endpoint, "token": bytes.fromhex(token)}, loop)
            in_flight = asyncio.ensure_future(client.infer({"state": np.ones((1, 4))}, None, None))
            await asyncio.sleep(0.3)  # the request reached the replica, which is busy with it
            assert not in_flight.done()
            proc.kill()
            t0 = loop.time()
            with pytest.raises(ReplicaLost):
                await asyncio.wait_for(in_flight, 5)
            assert loop.time() - t0 < 2.0  # noticed by the connection closing, not by a timeout
            assert client.lost
            with pytest.raises(ReplicaLost):  # and a later request is refused without waiting
                await client.infer({"state": np.ones((1, 4))}, None, None)
            client.close()
            ctx.term()

        asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait()
