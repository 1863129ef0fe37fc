"""The robot's link to its gateway: one DEALER socket and the session on top of it (hello until welcomed,
link-loss detection, heartbeats, a new hello after the gateway lost the session).

Nothing here waits on the network: a send that cannot go now is dropped (the watchdog and the hello
retry cover it), and reads drain only what has already arrived. What a frame means is the owner's business:
every decoded frame goes to ``on_message``, and the owner reports a welcome or a lost session back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import zmq

from fleetrl.robots import protocol as P
from fleetrl.robots.client.config import ClientConfig

log = logging.getLogger(__name__)


def use_curve_keys(socket: zmq.Socket, curve: dict) -> None:
    """Make ``socket`` a CURVE client with the registration's ``{server_key, public_key, secret_key}``
    (before it connects)."""
    missing = [k for k in ("server_key", "public_key", "secret_key") if not curve.get(k)]
    if missing:
        raise ValueError(f"CURVE credentials lack {missing}: the secret key is shown once at registration")
    socket.curve_serverkey = curve["server_key"].encode()
    socket.curve_publickey = curve["public_key"].encode()
    socket.curve_secretkey = curve["secret_key"].encode()


def dealer_socket(context: zmq.Context, endpoint: str, curve: dict | None = None) -> zmq.Socket:
    """A DEALER socket connected to ``endpoint`` that drops frames rather than queue them for no peer;
    ``curve``: ``{server_key, public_key, secret_key}`` (Z85, from registration) for an encrypted link."""
    socket = context.socket(zmq.DEALER)
    if curve is not None:
        use_curve_keys(socket, curve)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.IMMEDIATE, 1)  # never queue frames for a gateway that is not there
    socket.setsockopt(zmq.RECONNECT_IVL, 100)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    socket.connect(endpoint)
    return socket


class GatewayConnection:
    """The socket and the gateway session of one robot.

    ``on_message(msg, now)`` gets every decoded frame; ``on_lost()`` is called whenever the session ends
    (link timeout or the gateway's session error), so the owner forgets what it asked the old session.
    ``counters`` is the owner's table (``errors``, ``link_losses``, ``reconnects`` are counted here).

    ``endpoints``: the robot's gateway first, then the platform's other gateways; when the one it talks to
    leaves ``redial_after_hellos`` hellos unanswered, the socket moves on to the next (``gateway_moves``),
    so a robot whose gateway is gone is welcomed by another, which takes it over.
    """

    def __init__(
        self,
        endpoints: str | list[str],
        robot_id: str,
        token: str,
        cfg: ClientConfig,
        clock: Callable[[], float],
        counters: dict[str, int],
        on_message: Callable[[P.Message, float], None],
        on_lost: Callable[[], None],
        context: zmq.Context | None = None,
        curve: dict | None = None,
    ):
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("a robot needs at least one gateway endpoint")
        self.endpoint = self.endpoints[0]
        self.robot_id = robot_id
        self.cfg = cfg
        self.counters = counters
        self.socket = dealer_socket(context or zmq.Context.instance(), self.endpoint, curve)
        self.welcome: P.Welcome | None = None
        self._token = token
        self._clock = clock
        self._on_message = on_message
        self._on_lost = on_lost
        self._ever_welcomed = False
        self._last_hello = -math.inf
        self._unanswered_hellos = 0
        self._last_rx = clock()
        self._last_tx = -math.inf

    @property
    def connected(self) -> bool:
        return self.welcome is not None

    def close(self) -> None:
        self.socket.close(linger=0)

    def on_readable(self) -> None:
        """Drain every frame waiting on the socket."""
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = self._clock()
            self._last_rx = now
            self._unanswered_hellos = 0
            try:
                msg = P.decode(frame)
            except P.ProtocolError as exc:
                self.counters["errors"] += 1
                log.warning("%s: dropped a bad frame from the gateway: %s", self.robot_id, exc)
                continue
            self._on_message(msg, now)

    def send(self, msg: P.Message, now: float) -> None:
        try:
            self.socket.send(P.encode(msg), zmq.NOBLOCK)
            self._last_tx = now
        except zmq.Again:
            pass  # no connection right now; the watchdog and hello retry cover it

    def check_link(self, now: float) -> bool:
        """Notice a lost link and say hello while not welcomed; False when a hello just went out (the
        rest of this tick's housekeeping waits for the welcome)."""
        if self.welcome is not None and now - self._last_rx > self.cfg.link_timeout_s:
            self.counters["link_losses"] += 1
            log.warning("%s: link to %s lost; holding and re-connecting", self.robot_id, self.endpoint)
            self._lose_session()
        if self.welcome is None and now - self._last_hello > self.cfg.hello_retry_s:
            self._last_hello = now
            self._unanswered_hellos += 1
            if self._unanswered_hellos > self.cfg.redial_after_hellos:
                self._redial()
            self.send(P.Hello(robot_id=self.robot_id, token=self._token), now)
            return False
        return True

    def _redial(self) -> None:
        """Connect the socket again, to the next gateway if there are several: a gateway that refused the
        handshake (ZAP) is never re-dialled by libzmq itself, so without this a robot refused once would wait
        forever. Same socket, same FD."""
        self._unanswered_hellos = 0
        self.counters["redials"] += 1
        old = self.endpoint
        self.endpoint = self.endpoints[(self.endpoints.index(old) + 1) % len(self.endpoints)]
        if self.endpoint != old:
            self.counters["gateway_moves"] += 1
            log.warning(
                "%s: no answer from %s; moving to the gateway at %s", self.robot_id, old, self.endpoint
            )
        else:
            log.info("%s: no answer from %s; connecting again", self.robot_id, old)
        try:
            self.socket.disconnect(old)
        except zmq.ZMQError:
            pass  # the refused connection is already gone
        self.socket.connect(self.endpoint)

    def heartbeat(self, now: float) -> None:
        if now - self._last_tx > self.cfg.heartbeat_s and self.welcome is not None:
            self.send(P.Ping(robot_id=self.robot_id), now)

    def welcomed(self, msg: P.Welcome) -> None:
        """The gateway opened a session (the owner checked that its task fits this robot)."""
        if self._ever_welcomed:
            self.counters["reconnects"] += 1
        self._ever_welcomed = True
        self.welcome = msg

    def session_error(self, msg: P.Error) -> None:
        """The gateway does not know (``unknown_session``) or refuses (``unauthorized``) this session: say
        hello again."""
        if msg.code == "unauthorized":
            log.error("%s: gateway refused credentials: %s", self.robot_id, msg.message)
        self._lose_session()

    def _lose_session(self) -> None:
        self.welcome = None
        self._on_lost()
