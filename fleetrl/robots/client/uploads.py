"""Durability of executed steps on the robot side: an episode's rows go up as ``steps`` frames while it
runs; an ended episode is kept, and its end re-sent, until the gateway acks it; when the gateway reports
missing rows (it restarted, a frame was lost), they go again from the step it names.

The part only sends through the ``send`` it is given and asks ``connected`` whether a gateway session is
there to re-send to, so it runs as well against a fake as against the robot's socket.
"""

from __future__ import annotations

from collections.abc import Callable

from fleetrl.robots import protocol as P
from fleetrl.robots.client.config import ClientConfig
from fleetrl.robots.recorder import EpisodeLog


class EpisodeUploads:
    """Uploads of one robot's episodes and the ended, not yet acked ones (``unacked``: episode id -> (log,
    when last sent)). ``counters`` is the owner's table (``resent_episode_ends``, ``resent_steps``)."""

    def __init__(
        self,
        robot_id: str,
        cfg: ClientConfig,
        send: Callable[[P.Message, float], None],
        connected: Callable[[], bool],
        counters: dict[str, int],
    ):
        self.robot_id = robot_id
        self.cfg = cfg
        self.counters = counters
        self.unacked: dict[str, tuple[EpisodeLog, float]] = {}
        self._send = send
        self._connected = connected
        self.specs: dict[str, P.ArraySpec] | None = None  # the task's observation specs, from its welcome

    def flush_steps(self, ep: EpisodeLog, now: float) -> None:
        """The episode's rows the gateway does not have yet, in frames bounded by rows and by bytes."""
        frames = ep.steps_messages(
            self.robot_id, self.cfg.max_rows_per_frame, self.cfg.max_frame_bytes, self.specs
        )
        for frame in frames:
            self._send(frame, now)

    def upload_ended(self, ep: EpisodeLog, now: float) -> None:
        """The rows the gateway lacks, then the end of the episode; kept to send again until acked."""
        self.unacked[ep.episode_id] = (ep, now)
        self.flush_steps(ep, now)
        self._send(ep.end_message(self.robot_id, self.specs), now)

    def resend_overdue(self, now: float) -> None:
        """Ended episodes whose ack is overdue go again (once a gateway session is there to take them)."""
        if not self._connected():
            return
        for ep, t_sent in list(self.unacked.values()):
            if now - t_sent > self.cfg.ack_timeout_s:
                self.counters["resent_episode_ends"] += 1
                self.upload_ended(ep, now)

    def give_up(self, msg: P.Error) -> EpisodeLog | None:
        """The gateway refused an ended episode for good (``P.EPISODE_REFUSALS``: it will never be stored
        as sent): stop re-sending it. Returns its log, or None if it was not waiting for an ack."""
        refused = self.unacked.pop(msg.episode_id or "", None)
        if refused is None:
            return None
        refused[0].refused = msg.code
        return refused[0]

    def on_ack(self, msg: P.Ack) -> None:
        acked = self.unacked.pop(msg.episode_id, None)
        if acked is not None:
            acked[0].acked = True

    def resend_from(self, episode_id: str, step: int, running: EpisodeLog | None, now: float) -> None:
        """The gateway lacks rows from ``step`` on: send them again (now for an ended episode, with the
        next request for the ``running`` one)."""
        if running is not None and running.episode_id == episode_id:
            running.sent = min(running.sent, step)
        elif episode_id in self.unacked:
            ep, _ = self.unacked[episode_id]
            ep.sent = min(ep.sent, step)
            self.upload_ended(ep, now)
        self.counters["resent_steps"] += 1
