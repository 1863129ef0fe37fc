"""Episode intake, the gateway's second part: ``steps`` and ``episode_end`` frames → committed episodes.

A robot has one current episode (the one its observations belong to) and may re-send rows of earlier,
not-yet-acked episodes at the same time; each open episode has its own ``EpisodeAssembly``. An episode
is acked only after the data server stored it, so delivery is at-least-once and, with the store's
exactly-once ingest, nothing acked is lost or stored twice. The gateway hands it each frame with the
sender's ``RobotState``; what it needs beyond that (``send``/``refuse``, the refusal counter, the
metrics buffer, the loop, the data server and what to do after a commit) comes through its constructor.

An ack means: what the robot sent is stored as it sent it. So an episode the gateway will not store as
sent is refused for good with an ``error`` naming the rule and the episode (``P.EPISODE_REFUSALS``):
too many rows or bytes, a different episode already stored under the robot's id, or one the data server
cannot store; every later frame of it gets the same answer. A robot that goes offline mid-episode (lease
expired) keeps its open episodes for ``resume_window_s``: back in time, it goes on where its rows stopped;
later, the rows that arrived are stored as an aborted episode and the robot is told ``episode_cut``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fleetrl.robots import protocol as P
from fleetrl.robots.episode import Episode, EpisodeConflict
from fleetrl.workers.gateway.assembly import EpisodeAssembly
from fleetrl.workers.gateway.segments import next_cut, segment
from fleetrl.workers.metrics_server import MetricsBuffer

if TYPE_CHECKING:
    from fleetrl.workers.gateway.session import RobotState

log = logging.getLogger(__name__)
MAX_OPEN_EPISODES = 8  # per robot: the current one plus re-sends of unacked ones
COMMIT_GIVE_UP_S = 60.0  # how long the gateway retries a commit before leaving it to the robot


class EpisodeIntake:
    """Open episodes per robot, their assembly from ``steps`` frames, and their delivery to the data server."""

    def __init__(
        self,
        data: Any | None,
        send: Callable[[bytes, P.Message], None],
        refuse: Callable[..., None],
        refused: Counter,
        metrics: MetricsBuffer,
        loop: asyncio.AbstractEventLoop,
        after_commit: Callable[[RobotState], Awaitable[None]],
        ended: Callable[[RobotState, EpisodeAssembly, str, float], None] = lambda *_: None,
        max_episode_steps: int = 100_000,
        max_episode_bytes: int = 256 * 1024 * 1024,
    ):
        """``data``: the data server (``ingest(episode)``), None to ack and drop episodes; ``refuse(ident,
        code, message, robot_id, step, episode_id=)`` answers with an ``error`` and counts it in
        ``refused``, where rows that arrive twice are counted too; ``after_commit(state)`` runs once an
        episode the robot ran online is stored while it is still connected (return-and-explore);
        ``ended(state, assembly, outcome, total_reward)`` is told of every episode that ends (rollout.py)."""
        self.data = data
        self.max_episode_steps = max_episode_steps
        self.max_episode_bytes = max_episode_bytes
        self.send = send
        self.refuse = refuse
        self.refused = refused
        self.metrics = metrics
        self.loop = loop
        self.after_commit = after_commit
        self.ended = ended
        self.episodes_committed = 0

    def enter_episode(self, ident: bytes, state: RobotState, episode_id: str, step: int | None) -> bool:
        """Make ``episode_id`` the robot's current episode (refusing ended ones); False if refused."""
        if episode_id == state.episode_id:
            return True
        if self._assembly(ident, state, episode_id, step) is None:
            return False
        if state.episode_id is not None:  # a new episode began without an end for the last
            self.abort_episode(
                state, state.episode_id, f"the robot began episode {episode_id!r} before ending it"
            )
        state.episode_id, state.last_step = episode_id, -1
        return True

    def _assembly(
        self, ident: bytes, state: RobotState, episode_id: str, step: int | None = None
    ) -> EpisodeAssembly | None:
        """The open assembly of ``episode_id`` (created on first sight), or None after a refusal."""
        asm = state.assemblies.get(episode_id)
        if asm is not None:
            return asm
        if episode_id in state.closed:
            code, message = state.closed[episode_id]
            self.refuse(ident, code, message, state.robot_id, step, episode_id=episode_id)
            return None
        if not episode_id or episode_id in state.recent_ends or episode_id in state.committing:
            self.refuse(ident, "out_of_order", f"episode {episode_id!r} already ended", state.robot_id, step,
                        episode_id=episode_id)  # fmt: skip
            return None
        if len(state.assemblies) >= MAX_OPEN_EPISODES:
            self.refuse(ident, "overloaded", f"more than {MAX_OPEN_EPISODES} open episodes", state.robot_id,
                        episode_id=episode_id)  # fmt: skip
            return None
        asm = state.assemblies[episode_id] = EpisodeAssembly(state.task, state.robot_id, episode_id)
        return asm

    def _ask_for_missing_rows(self, ident: bytes, state: RobotState, asm: EpisodeAssembly, upto: int) -> None:
        """Rows before ``upto`` never arrived (e.g. this gateway restarted mid-episode): ask once. Robots
        upload rows in batches, so only a ``steps`` frame that skips ahead (or an end) reveals a gap."""
        if asm.expected < upto and asm.asked_from != asm.expected:
            asm.asked_from = asm.expected
            self._ask_rows(ident, state, asm, "out_of_order", f"rows from step {asm.expected} are missing")

    def _ask_rows(
        self, ident: bytes, state: RobotState, asm: EpisodeAssembly, code: str, message: str
    ) -> None:
        """Tell the robot to re-send ``asm``'s rows from the first one the gateway lacks."""
        reason = "missing_rows" if code == "out_of_order" else code
        self.metrics.inc("episode_resends_total", (reason,))
        self.send(
            ident,
            P.Error(
                robot_id=state.robot_id,
                code=code,
                message=message,
                step=asm.expected,
                episode_id=asm.episode_id,
            ),
        )

    def on_steps(self, ident: bytes, state: RobotState, msg: P.Steps) -> None:
        asm = self._assembly(ident, state, msg.episode_id)
        if asm is None:
            return
        if msg.first_step != asm.expected:
            if msg.first_step < asm.expected:
                self.refused["duplicate_rows"] += 1  # rows we already have (a re-send raced the original)
            else:
                self._ask_for_missing_rows(ident, state, asm, msg.first_step)
            return
        rows = int(msg.actions.shape[0]) if msg.actions is not None and msg.actions.ndim >= 1 else 0
        if (
            asm.expected + rows > self.max_episode_steps
            or asm.nbytes + len_bytes(msg) > self.max_episode_bytes
        ):
            self._refuse_for_good(ident, state, msg.episode_id, "episode_too_long",
                                  f"episode {msg.episode_id!r} passes the gateway's limit of "
                                  f"{self.max_episode_steps} rows or {self.max_episode_bytes} bytes: not stored")  # fmt: skip
            return
        try:
            asm.add(msg)
        except P.ProtocolError as exc:
            self.refuse(ident, exc.code, exc.message, state.robot_id, episode_id=msg.episode_id)
            return
        steps = segment_steps(state, asm)
        if steps and asm.expected > asm.segment_from + steps:  # a row a piece could end at has arrived
            obs, actions, columns = asm.arrays()
            while (cut := next_cut(columns, asm.segment_from, steps)) is not None:
                self._hand_out(segment(asm.episode_id, state.task.name, state.robot_id, obs, actions, columns,
                                       asm.segment_from, cut))  # fmt: skip
                asm.segment_from = cut

    def _refuse_for_good(
        self, ident: bytes, state: RobotState, episode_id: str, code: str, message: str
    ) -> None:
        """Drop the episode's rows, tell the robot, and answer every later frame of it the same way."""
        state.assemblies.pop(episode_id, None)
        if episode_id == state.episode_id:
            state.episode_id, state.last_step = None, -1
        state.close_episode(episode_id, code, message)
        self.metrics.inc("episodes_refused_total", (state.task.name, code))
        self.refuse(ident, code, message, state.robot_id, episode_id=episode_id)

    def on_episode_end(self, ident: bytes, state: RobotState, msg: P.EpisodeEnd) -> None:
        if msg.outcome not in P.OUTCOMES or msg.labelled_by not in P.LABELLERS:
            why = f"outcome must be one of {P.OUTCOMES}, labelled_by one of {P.LABELLERS}"
            self.refuse(ident, "bad_message", why, state.robot_id, episode_id=msg.episode_id)
            return
        if msg.episode_id in state.committing:
            return  # acked when the data server has it (or re-processed if it fails)
        if msg.episode_id in state.recent_ends:  # a re-sent end of a committed episode: ack again, count once
            stored = state.recent_ends[msg.episode_id]
            if stored != (msg.steps, msg.outcome):  # not a re-send: another episode under a used id
                why = (f"episode {msg.episode_id!r} is stored already with {stored[0]} rows, outcome "
                       f"{stored[1]!r}; this end says {msg.steps}, {msg.outcome!r}: use a new episode id")  # fmt: skip
                self.refuse(ident, "episode_conflict", why, state.robot_id, episode_id=msg.episode_id)
                return
            self.metrics.inc("episode_resends_total", ("end_after_commit",))
            self.send(ident, P.Ack(robot_id=state.robot_id, episode_id=msg.episode_id))
            return
        asm = self._assembly(ident, state, msg.episode_id)
        if asm is None:
            return
        if asm.expected < msg.steps:
            self._ask_rows(
                ident, state, asm, "incomplete_episode", f"have {asm.expected} of {msg.steps} rows"
            )
            return
        try:
            episode = asm.finish(msg)
        except P.ProtocolError as exc:
            self.refuse(ident, exc.code, exc.message, state.robot_id, episode_id=msg.episode_id)
            return
        except ValueError as exc:
            self.refuse(ident, "bad_message", str(exc), state.robot_id, episode_id=msg.episode_id)
            return
        del state.assemblies[msg.episode_id]
        if segment_steps(state, asm):
            self._hand_out(segment(episode.episode_id, state.task.name, state.robot_id, episode.observations,
                                   episode.actions, episode.columns, asm.segment_from, len(episode), episode))  # fmt: skip
        if msg.episode_id == state.episode_id:
            state.episode_id, state.last_step = None, -1
        state.steps_done += len(episode)
        self._count_outcome(state, msg.episode_id, msg.outcome, end=(len(episode), msg.outcome))
        self.ended(state, asm, msg.outcome, msg.total_reward)
        state.committing.add(msg.episode_id)
        self.loop.create_task(self._commit(ident, state, episode))

    def _hand_out(self, piece: Episode) -> None:
        """Give a segment to the data server's on-policy feed, without waiting for it (segments.py)."""
        if self.data is not None:
            self.loop.create_task(self._deliver_segment(piece))

    async def _deliver_segment(self, piece: Episode) -> None:
        try:
            await self.data.add_segment.remote(piece)
        except Exception:  # noqa: BLE001 - not durable by design: the learner waits for the next ones
            self.metrics.inc("segments_total", (piece.task, "lost"))
            return
        self.metrics.inc("segments_total", (piece.task, "delivered"))

    async def _commit(self, ident: bytes, state: RobotState, episode: Episode) -> None:
        """Hand the episode to the data server and ack only once it is durable (at-least-once delivery).

        While the data server restarts, the gateway keeps the episode and retries, so robots need not
        upload it again; only after ``COMMIT_GIVE_UP_S`` is it dropped here and left to the robot's re-send.
        """
        deadline = time.monotonic() + COMMIT_GIVE_UP_S
        delay = 0.25
        try:
            while True:
                try:
                    if self.data is not None:
                        await self.data.ingest.remote(episode)
                    break
                except ValueError as exc:  # the data server will never store it as sent: say so, once
                    self._uncount_outcome(state, episode)
                    code = "episode_conflict" if isinstance(exc, EpisodeConflict) else "episode_unstorable"
                    cause = getattr(exc, "cause", None) or exc  # a RayTaskError's text is a traceback
                    log.warning("gateway: episode %s of %s refused by the data server: %s",
                                episode.episode_id, state.robot_id, cause)  # fmt: skip
                    state.close_episode(episode.episode_id, code, str(cause)[:500])
                    self.metrics.inc("episodes_refused_total", (state.task.name, code))
                    self.refuse(state.ident or ident, code, str(cause)[:500], state.robot_id,
                                episode_id=episode.episode_id)  # fmt: skip
                    return
                except Exception as exc:  # noqa: BLE001 - data server restarting: keep the episode, retry
                    if time.monotonic() + delay > deadline:
                        log.warning("gateway: episode %s not stored (%s); left to the robot's re-send",
                                    episode.episode_id, exc)  # fmt: skip
                        self._uncount_outcome(state, episode)
                        return
                    self.metrics.inc("episode_resends_total", ("commit_retry",))
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
        finally:
            state.committing.discard(episode.episode_id)
        self.episodes_committed += 1
        self.send(state.ident or ident, P.Ack(robot_id=state.robot_id, episode_id=episode.episode_id))
        if episode.source == "online" and state.online:
            await self.after_commit(state)

    def end_session(self, state: RobotState, why: str) -> None:
        """The robot is gone for good (its resume window passed, it was deleted): its current episode
        ends as aborted (what arrived is stored; the robot is told ``episode_cut`` if it comes back), and
        the other open ones are dropped (re-sends of ended episodes: the robot sends them again)."""
        if state.episode_id is not None:
            self.abort_episode(state, state.episode_id, why)
        state.assemblies.clear()
        state.offline_since = None

    def abort_episode(self, state: RobotState, episode_id: str, why: str) -> None:
        """The robot left (or started another episode) without ending this one: keep what arrived, as an
        aborted episode, and refuse the rest of it (``episode_cut``: an ack must mean stored as sent)."""
        asm = state.assemblies.pop(episode_id, None)
        partial = asm.abort() if asm is not None else None
        state.steps_done += len(partial) if partial is not None else 0
        self._count_outcome(state, episode_id, "aborted")
        if asm is not None:
            self.ended(state, asm, "aborted", 0.0)
        rows = len(partial) if partial is not None else 0
        state.close_episode(episode_id, "episode_cut", f"episode {episode_id!r} was cut ({why}); its first "
                            f"{rows} rows are stored as aborted: start a new episode")  # fmt: skip
        if episode_id == state.episode_id:
            state.episode_id, state.last_step = None, -1
        if partial is not None and self.data is not None:
            self.loop.create_task(self._store_partial(partial))

    async def _store_partial(self, episode: Episode, attempts: int = 5) -> None:
        """Keep the rows of an aborted episode; retried, since no robot will re-send them."""
        for attempt in range(attempts):
            try:
                await self.data.ingest.remote(episode)
                return
            except Exception as exc:  # noqa: BLE001 - data server restarting
                log.warning("gateway: aborted episode %s not stored yet (%s)", episode.episode_id, exc)
                await asyncio.sleep(1.0 + attempt)
        log.error("gateway: aborted episode %s could not be stored", episode.episode_id)

    def _uncount_outcome(self, state: RobotState, episode: Episode) -> None:
        """A commit failed: forget the end so the robot's re-send is processed afresh."""
        state.recent_ends.pop(episode.episode_id, None)
        state.outcomes[episode.outcome] -= 1
        state.steps_done -= len(episode)

    def _count_outcome(
        self, state: RobotState, episode_id: str, outcome: str, end: tuple[int, str] | None = None
    ) -> None:
        """Count an ended episode; ``end``: (rows, outcome) the robot ended it with, so that a re-sent end
        of it is acked again (and one that says otherwise is refused)."""
        if end is not None:
            state.recent_ends[episode_id] = end
            while len(state.recent_ends) > 16:
                state.recent_ends.popitem(last=False)
        state.outcomes[outcome] += 1
        self.metrics.inc("episodes_total", (state.task.name, outcome))


def segment_steps(state: RobotState, asm: EpisodeAssembly) -> int:
    """Rows per segment of running episodes the robot's task asks for (0: whole episodes only, and for an
    evaluation episode, which no learner may see)."""
    if state.task.learner is None or asm.assignment.evaluation:
        return 0
    return state.task.learner.segment_steps


def len_bytes(msg: P.Steps) -> int:
    """Array bytes a ``steps`` frame carries (what the assembly would hold of it)."""
    arrays = [msg.actions, *msg.observations.values(), *msg.columns.values()]
    return sum(a.nbytes for a in arrays if hasattr(a, "nbytes"))
