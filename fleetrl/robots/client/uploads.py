"""Durability of executed steps on the robot side: an episode's rows go up as ``steps`` frames while it
runs; an ended episode is kept, and its end re-sent, until the gateway acks it; when the gateway reports
missing rows (it restarted, a frame was lost), they go again from the step it names. Mixed into
``RobotClient``.
"""

from __future__ import annotations

from collections.abc import Callable

from fleetrl.robots import protocol as P
from fleetrl.robots.client.config import ClientConfig
from fleetrl.robots.recorder import EpisodeLog


class EpisodeUploads:
    """Ended, not yet acked episodes (``_unacked``: episode id -> (log, when last sent)) and their uploads."""

    # Provided by the RobotClient this is mixed into.
    robot_id: str
    cfg: ClientConfig
    counters: dict[str, int]
    welcome: P.Welcome | None
    _episode: EpisodeLog | None
    _unacked: dict[str, tuple[EpisodeLog, float]]
    _clock: Callable[[], float]
    _send: Callable[[P.Message, float], None]

    def _flush_steps(self, ep: EpisodeLog, now: float) -> None:
        for frame in ep.steps_messages(self.robot_id, self.cfg.max_rows_per_frame):
            self._send(frame, now)

    def _upload_ended(self, ep: EpisodeLog, now: float) -> None:
        """The rows the gateway lacks, then the end of the episode; kept to send again until acked."""
        self._unacked[ep.episode_id] = (ep, now)
        self._flush_steps(ep, now)
        self._send(ep.end_message(self.robot_id), now)

    def _resend_overdue(self, now: float) -> None:
        if self.welcome is None:
            return
        for ep, t_sent in list(self._unacked.values()):
            if now - t_sent > self.cfg.ack_timeout_s:
                self.counters["resent_episode_ends"] += 1
                self._upload_ended(ep, now)

    def _on_ack(self, msg: P.Ack) -> None:
        acked = self._unacked.pop(msg.episode_id, None)
        if acked is not None:
            acked[0].acked = True

    def _resend_from(self, episode_id: str, step: int) -> None:
        """The gateway lacks rows from ``step`` on: send them again (now for an ended episode, else with the
        next request)."""
        now = self._clock()
        if self._episode is not None and self._episode.episode_id == episode_id:
            self._episode.sent = min(self._episode.sent, step)
        elif episode_id in self._unacked:
            ep, _ = self._unacked[episode_id]
            ep.sent = min(ep.sent, step)
            self._upload_ended(ep, now)
        self.counters["resent_steps"] += 1
