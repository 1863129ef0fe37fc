"""The replica channel: the gateway's batches reach an inference replica over one ZeroMQ connection
instead of one Ray actor call each.

Why: at 128 robots a Ray actor call per batch cost the gateway a quarter of its CPU (submitting the call)
and the replica more than its forward pass (Ray's task execution around it); a DEALER/ROUTER exchange of
the same batch costs tens of microseconds on each side. Ray still owns the replica's life: it starts it,
restarts it when it dies, and is how the gateway learns the channel's address (``InferenceReplica.channel``).

* ``ChannelServer`` (in the replica): a ROUTER bound to a free port of the replica's node, read by one
  thread that runs ``handler(batch, pins, deterministic)`` per request and answers. Every request carries
  the channel's token (handed out only through Ray), so nothing else on the network can use the replica.
* ``ChannelClient`` (in the gateway): a DEALER on the gateway's asyncio loop, read through the loop's
  reader callbacks (no future per frame), replies matched to requests by id. A ZeroMQ socket monitor sees
  the replica's process go away (its TCP connection closes): every request in flight and every later one
  then fails at once with ``ReplicaLost``, and the gateway re-queues the batch and reconnects through Ray.

Frames are the robot protocol's msgpack (``fleetrl.robots.protocol.codec``): arrays with allow-listed
dtypes, nothing unpickled; a malformed request is answered with an error, never raised out of the thread.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from fleetrl.robots.protocol.codec import Limits, pack, unpack
from fleetrl.robots.protocol.errors import ProtocolError

log = logging.getLogger(__name__)
# Batches are internal and may hold a whole pool's camera frames: far above a robot frame's limit.
CHANNEL_LIMITS = Limits(max_frame_bytes=1 << 30, max_keys=256)
Handler = Callable[[dict[str, np.ndarray], "np.ndarray | None", "np.ndarray | None"], dict[str, Any]]


class ReplicaLost(ConnectionError):
    """The replica's channel closed (its process died or restarted): its requests will not be answered."""


class ReplicaError(RuntimeError):
    """The replica answered a request with an error (bad request, or its forward pass raised)."""


def _optional_array(value: Any, name: str) -> np.ndarray | None:
    if value is None or isinstance(value, np.ndarray):
        return value
    raise ProtocolError("bad_frame", f"{name} must be an array or nil")


def decode_request(frame: bytes) -> tuple[int, dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """``(id, batch, pins, deterministic)`` of a request frame; ProtocolError when it is not one."""
    msg = unpack(frame, CHANNEL_LIMITS)
    if not isinstance(msg, dict) or not isinstance(msg.get("id"), int):
        raise ProtocolError("bad_frame", "a request is a map with an integer id")
    batch = msg.get("batch")
    if (
        not isinstance(batch, dict)
        or not batch
        or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in batch.items())
    ):
        raise ProtocolError("bad_frame", "a request's batch maps observation keys to arrays")
    return msg["id"], batch, _optional_array(msg.get("pins"), "pins"), _optional_array(msg.get("det"), "det")


def request_id(frame: bytes) -> int:
    """The id of a request that failed to decode, when it can be read (-1: it cannot), so its error
    reply reaches the caller instead of a timeout."""
    try:
        rid = unpack(frame, CHANNEL_LIMITS).get("id")
    except Exception:  # noqa: BLE001 - not even a map
        return -1
    return rid if isinstance(rid, int) else -1


class ChannelServer:
    """The replica's end: a ROUTER on a free port and the thread that answers its requests."""

    def __init__(self, handler: Handler, host: str, name: str = "replica"):
        self.handler = handler
        self.name = name
        self.token = secrets.token_bytes(16)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, CHANNEL_LIMITS.max_frame_bytes)
        port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self.served = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"fleetrl-channel-{name}", daemon=True)
        self._thread.start()

    def address(self) -> dict[str, Any]:
        """What a client needs: the endpoint and the token (given out through Ray only)."""
        return {"endpoint": self.endpoint, "token": self.token}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(200):
                    continue
                while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self._answer(self._sock.recv_multipart(copy=True))
        finally:
            self._sock.close(linger=0)
            self._ctx.term()

    def _answer(self, frames: list[bytes]) -> None:
        """One request -> one reply; nothing a peer sends raises out of here."""
        if len(frames) != 3 or not hmac.compare_digest(frames[1], self.token):
            self.refused += 1  # not our gateway: no answer (it learns nothing about the replica)
            return
        ident, _, body = frames
        try:
            rid, batch, pins, det = decode_request(body)
        except ProtocolError as exc:
            self.refused += 1
            reply = {"id": request_id(body), "error": f"bad request: {exc.message}"}
            self._sock.send_multipart([ident, pack(reply)])
            return
        try:
            reply = {"id": rid, "result": self.handler(batch, pins, det)}
        except Exception as exc:  # noqa: BLE001 - the forward pass failed: the gateway refuses the rows
            log.exception("channel %s: inference failed", self.name)
            reply = {"id": rid, "error": f"{type(exc).__name__}: {exc}"}
        self.served += 1
        self._sock.send_multipart([ident, pack(reply)])


class ChannelClient:
    """The gateway's end of one replica's channel; lives on (and must be used from) the asyncio ``loop``."""

    def __init__(self, ctx: zmq.Context, address: dict[str, Any], loop: asyncio.AbstractEventLoop):
        self.endpoint = address["endpoint"]
        self._token = bytes(address["token"])
        self._loop = loop
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(self.endpoint)
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._drain_scheduled = False
        self.lost = False
        self._fds = (self._sock.getsockopt(zmq.FD), self._monitor.getsockopt(zmq.FD))
        loop.add_reader(self._fds[0], self._drain)
        loop.add_reader(self._fds[1], self._watch)
        # ZeroMQ's FD is edge-triggered and armed by reading the socket's events: read them once now, or
        # the first disconnect would never wake the loop.
        loop.call_soon(self._watch)

    def infer(
        self, batch: dict[str, np.ndarray], pins: np.ndarray | None, deterministic: np.ndarray | None
    ) -> asyncio.Future:
        """Send one batch now; the future gets the replica's result, or ReplicaLost if its process is gone,
        ReplicaError if it refused or failed the batch. A plain future, not a coroutine: awaiting it under
        ``asyncio.wait_for`` then costs no task per batch. A caller that gives up (timeout, cancel) leaves
        no trace: a late reply is dropped."""
        future = self._loop.create_future()
        if self.lost:
            future.set_exception(self._lost_error())
            return future
        rid, self._next_id = self._next_id, self._next_id + 1
        self._pending[rid] = future
        future.add_done_callback(lambda _: self._pending.pop(rid, None))
        try:
            self._sock.send_multipart([self._token, pack({"id": rid, "batch": batch, "pins": pins,
                                                         "det": deterministic})])  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - an unpackable batch, a closed socket: this batch fails
            future.set_exception(exc)
        self._schedule_drain()  # the send may have consumed the FD's edge of a reply that arrived
        return future

    def close(self) -> None:
        """Stop reading, fail what is in flight, close the sockets (idempotent)."""
        if self._sock.closed:
            return
        self._fail_all()
        for fd in self._fds:
            self._loop.remove_reader(fd)
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self._sock.closed:
            return
        while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frame = self._sock.recv(copy=True)
            try:
                msg = unpack(frame, CHANNEL_LIMITS)
                future = self._pending.get(msg["id"])
            except Exception:  # noqa: BLE001 - a reply we cannot read is a replica bug: say so, go on
                log.error("replica channel %s: unreadable reply dropped", self.endpoint)
                continue
            if future is None or future.done():
                continue  # its caller gave up (timeout) or it answers a request we could not send
            if "error" in msg:
                future.set_exception(ReplicaError(str(msg["error"])))
            else:
                future.set_result(msg["result"])

    def _watch(self) -> None:
        """Socket monitor: the connection to the replica closed, so its process is gone (or restarting)."""
        while not self._sock.closed and self._monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = parse_monitor_message(self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.lost = True
                self._fail_all()

    def _fail_all(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._lost_error())

    def _lost_error(self) -> ReplicaLost:
        return ReplicaLost(f"the replica at {self.endpoint} went away")
