"""Small networking helpers for tests and benchmarks: free ports and a raw robot-side socket."""

from __future__ import annotations

import socket

import zmq

from fleetrl.robots import protocol as P
from fleetrl.robots.client.transport import use_curve_keys


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawRobotSocket:
    """A bare DEALER that sends whatever bytes a test wants and reads decoded replies (no SDK logic)."""

    def __init__(self, endpoint: str, curve: dict | None = None):
        """``curve``: the registration's CURVE keys (a gateway in CURVE mode answers no other socket)."""
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        if curve is not None:
            use_curve_keys(self.sock, curve)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send_raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def send(self, msg: P.Message) -> None:
        self.sock.send(P.encode(msg))

    def try_send(self, msg: P.Message) -> bool:
        """Send without blocking; False when no connection takes the frame. A socket whose CURVE handshake the
        gateway refused has no peer to queue for, and a plain ``send`` would wait for one forever."""
        try:
            self.sock.send(P.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def recv(self, timeout_s: float = 5.0) -> P.Message:
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError("no reply from the gateway")
        return P.decode(self.sock.recv())

    def request(self, msg: P.Message, timeout_s: float = 5.0) -> P.Message:
        self.send(msg)
        return self.recv(timeout_s)

    def close(self) -> None:
        self.sock.close(linger=0)
