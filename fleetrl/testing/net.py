"""Small networking helpers for tests and benchmarks: free ports and a raw robot-side socket."""

from __future__ import annotations

import random
import socket

import zmq

from fleetrl.robots import protocol as P
from fleetrl.robots.client.transport import use_curve_keys

# Below Linux's ephemeral range (32768+, where outgoing connections and bind(0) draw from) and above Ray's
# worker ports (10002-19999): a port found free here is not handed to another process before we bind it.
_PORTS = (20000, 32000)


def free_port() -> int:
    """A free loopback TCP port that no other process is about to be given by the kernel or by Ray."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


def free_ports_in_a_row(n: int) -> int:
    """A port p with p .. p + n - 1 all free (several gateways bind the configured port + their index)."""
    for _ in range(50):
        port = free_port()
        try:
            for k in range(1, n):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", port + k))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no {n} free ports in a row in {_PORTS}")


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


def unregistered_socket(endpoint: str, curve: dict) -> RawRobotSocket:
    """A socket with a fresh CURVE key pair nobody registered (``curve``: a registration's keys, for the
    gateway's public key): the gateway refuses its handshake, and ZeroMQ re-tries it while it is open."""
    public, secret = (k.decode() for k in zmq.curve_keypair())
    return RawRobotSocket(endpoint, {**curve, "public_key": public, "secret_key": secret})
