"""The robot's link to its gateway: one DEALER socket and the session on top of it (hello until welcomed,
link-loss detection, heartbeats, a new hello after the gateway lost the session).

Nothing here waits on the network: a send that cannot go now is dropped (the watchdog and the hello
retry cover it), and reads drain only what has already arrived. Mixed into ``RobotClient``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from fleetrl.robots import protocol as P
from fleetrl.robots.client.config import ClientConfig
from fleetrl.robots.client.registration import RegistrationError
from fleetrl.robots.client.robot import Robot

log = logging.getLogger(__name__)


def dealer_socket(context: zmq.Context, endpoint: str) -> zmq.Socket:
    """A DEALER socket connected to ``endpoint`` that drops frames rather than queue them for no peer."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.IMMEDIATE, 1)  # never queue frames for a gateway that is not there
    socket.setsockopt(zmq.RECONNECT_IVL, 100)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    socket.connect(endpoint)
    return socket


class GatewayConnection:
    """The socket and the gateway session of one robot."""

    # Provided by the RobotClient this is mixed into.
    robot: Robot
    robot_id: str
    endpoint: str
    cfg: ClientConfig
    counters: dict[str, int]
    socket: zmq.Socket
    welcome: P.Welcome | None
    _token: str
    _clock: Callable[[], float]
    _ever_welcomed: bool
    _last_hello: float
    _last_rx: float
    _last_tx: float
    _request: Any
    _operator: Any
    _handle: Callable[[P.Message, float], None]
    _maybe_request: Callable[[float], None]
    _send_control: Callable[[float], None]

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
            try:
                msg = P.decode(frame)
            except P.ProtocolError as exc:
                self.counters["errors"] += 1
                log.warning("%s: dropped a bad frame from the gateway: %s", self.robot_id, exc)
                continue
            self._handle(msg, now)

    def _send(self, msg: P.Message, now: float) -> None:
        try:
            self.socket.send(P.encode(msg), zmq.NOBLOCK)
            self._last_tx = now
        except zmq.Again:
            pass  # no connection right now; the watchdog and hello retry cover it

    def _check_link(self, now: float) -> bool:
        """Notice a lost link and say hello while not welcomed; False when a hello just went out (the
        rest of this tick's housekeeping waits for the welcome)."""
        if self.welcome is not None and now - self._last_rx > self.cfg.link_timeout_s:
            self.counters["link_losses"] += 1
            log.warning("%s: link to %s lost; holding and re-connecting", self.robot_id, self.endpoint)
            self.welcome = None
            self._request = None
        if self.welcome is None and now - self._last_hello > self.cfg.hello_retry_s:
            self._last_hello = now
            self._send(P.Hello(robot_id=self.robot_id, token=self._token), now)
            return False
        return True

    def _heartbeat(self, now: float) -> None:
        if now - self._last_tx > self.cfg.heartbeat_s and self.welcome is not None:
            self._send(P.Ping(robot_id=self.robot_id), now)

    def _on_welcome(self, msg: P.Welcome) -> None:
        obs_spec = P.specs_from_dict(msg.observation_spec)
        act_spec = P.ArraySpec.from_dict(msg.action_spec)
        if obs_spec != self.robot.observation_spec or act_spec.shape != self.robot.action_spec.shape:
            raise RegistrationError(
                f"{self.robot_id}: the gateway's task {msg.task!r} expects {msg.observation_spec} / "
                f"{msg.action_spec}, this robot has {P.specs_to_dict(self.robot.observation_spec)}"
            )
        if self._ever_welcomed:
            self.counters["reconnects"] += 1
        self._ever_welcomed = True
        self.welcome = msg
        self._request = None
        if self._operator is not None or self.counters["takeovers"]:
            self._send_control(self._clock())  # a (new) gateway session learns who is in control
        self._maybe_request(self._clock())

    def _on_session_error(self, msg: P.Error) -> None:
        """The gateway does not know (``unknown_session``) or refuses (``unauthorized``) this session: say
        hello again."""
        if msg.code == "unauthorized":
            log.error("%s: gateway refused credentials: %s", self.robot_id, msg.message)
        self.welcome = None
        self._request = None
