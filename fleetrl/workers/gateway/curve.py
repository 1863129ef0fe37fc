"""Encrypted, authenticated robot links: ZeroMQ CURVE on the gateway's ROUTER, with a ZAP handler that
admits only registered robot keys.

The gateway's long-term key pair lives in the state dir (``keys/gateway.curve``, mode 0600; created on
first start), so robots keep trusting the same server key across restarts. Each robot has its own key pair:
issued at registration (the secret key is shown once, like the token) or the robot's own public key given
at registration. libzmq runs the CURVE handshake; the ZAP handler here is asked for every new connection
and admits it only if its public key is a registered robot's; it names the connection by that robot id
(ZAP ``User-Id``), and the gateway checks every frame's ``robot_id`` against it. A captured ``hello``
replayed from another connection, or a peer that sets a connected robot's routing id, carries a different
key (or none) and gets nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import zmq
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

log = logging.getLogger(__name__)
ZAP_DOMAIN = "fleetrl"
KEY_FILE = "keys/gateway.curve"


def server_keys(state_dir: str | Path) -> tuple[str, str]:
    """The gateway's (public, secret) Z85 key pair from the state dir, created on first use."""
    path = Path(state_dir).expanduser() / KEY_FILE
    if path.exists():
        keys = json.loads(path.read_text())
        return keys["public"], keys["secret"]
    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return server_keys(state_dir)
    with os.fdopen(fd, "w") as f:
        json.dump({"public": public, "secret": secret}, f)
    log.info("gateway CURVE key pair created in %s", path)
    return public, secret


def is_curve_key(key: object) -> bool:
    """A Z85-encoded 32-byte CURVE key (40 characters)."""
    if not isinstance(key, str) or len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError):
        return False


class RobotKeyAuthenticator(AsyncioAuthenticator):
    """ZAP on the gateway's loop: a connection is admitted iff ``lookup(public_key_z85)`` names a robot
    (a local table first; the registry, through ``lookup``, for a key not seen yet). The connection's
    ZAP ``User-Id`` is that robot id."""

    def __init__(self, context: zmq.Context, lookup: Callable[[str], Awaitable[str | None]]):
        super().__init__(context)
        self._lookup = lookup
        self._robots: dict[str, str] = {}  # public key (Z85) -> robot id
        self.denied = 0
        self.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    async def callback(self, domain: str, key: bytes) -> bool:
        z85 = key.decode("ascii")
        robot_id = self._robots.get(z85)
        if robot_id is None:
            robot_id = await self._lookup(z85)
            if robot_id is None:
                self.denied += 1
                return False
            self._robots[z85] = robot_id
        return True

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._robots[z85.encode(client_public_key).decode("ascii")]

    def forget(self, robot_id: str) -> None:
        """A deleted robot's key admits no new connection."""
        for key in [k for k, r in self._robots.items() if r == robot_id]:
            del self._robots[key]
