"""Timing and buffering of the robot SDK, in one place so a deployment tunes it without reading the loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClientConfig:
    """Timing of the SDK; defaults suit a 10-30 Hz robot on a LAN."""

    deadline_s: float = 0.5  # a request unanswered this long counts as a watchdog trip and is re-sent
    link_timeout_s: float = 3.0  # nothing heard for this long: the link is lost, hold and re-hello
    heartbeat_s: float = 1.0  # ping when nothing else was sent for this long
    hello_retry_s: float = 1.0
    # Hellos without any answer before the socket re-dials: libzmq does not reconnect a connection whose
    # handshake the gateway refused (CURVE/ZAP, e.g. while its registry was restarting or busy).
    redial_after_hellos: int = 3
    ack_timeout_s: float = 1.0
    initial_latency_s: float = 0.05
    keep_episodes: int = 100  # per-step logs of this many recent episodes are kept for inspection
    keep_replies: int = 2000  # (round trip, gateway timings) of this many recent replies
    max_rows_per_frame: int = 64  # executed steps per ``steps`` frame
    max_frame_bytes: int = 1 << 20  # observation and action bytes per ``steps`` frame beyond its first row
    # (cameras: compressed); a quarter of the gateway's default frame limit, so frames stay small
    steps_per_upload: int = 16  # upload executed steps once this many are pending (and at episode end)
