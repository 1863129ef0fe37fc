"""One robot's control loop: ``RobotClient`` executes action chunks asynchronously and never waits on the
network.

``tick`` runs one control period: it executes the next action of the current chunk and, when the chunk
is about to run out (the remaining steps cover the measured round trip), uploads the current observation
so the next chunk arrives before the current one ends; the new chunk then starts exactly where the old
one ends (VLAC §3.2.1). When no chunk is ready, or the link is lost, the client calls the robot's
``hold()`` instead of running past its chunk (a ``held`` step); a ``lockstep`` robot (simulated: time can
wait) asks once its chunk has run out and waits for the next (``lockstep_waits``), never holding. Parts it
owns: ``transport``, ``uploads``, ``takeover``; it keeps the episode, chunks and robot, routes each frame.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable

import numpy as np
import zmq

from fleetrl.robots import protocol as P
from fleetrl.robots.client.chunks import Chunk, Request
from fleetrl.robots.client.config import ClientConfig
from fleetrl.robots.client.registration import RegistrationError
from fleetrl.robots.client.robot import OperatorFn, Robot, StepResult
from fleetrl.robots.client.takeover import HumanControl, Supervisor
from fleetrl.robots.client.transport import GatewayConnection
from fleetrl.robots.client.uploads import EpisodeUploads
from fleetrl.robots.episode import end_flags
from fleetrl.robots.recorder import EpisodeLog, StepRecord

log = logging.getLogger(__name__)

COUNTERS = (
    "steps",
    "requests",
    "replies",
    "episodes",
    "successes",
    "holds",
    "startup_waits",
    "lockstep_waits",
    "watchdog_trips",
    "link_losses",
    "reconnects",
    "redials",
    "gateway_moves",
    "stale_replies",
    "episodes_refused",
    "errors",
    "resent_episode_ends",
    "resent_steps",
    "interventions",
    "takeovers",
    "demos",
    "resets",
)


class RobotClient:
    """One robot's connection and control loop state; driven by ``FleetRunner`` (or its own loop).

    Its parts: ``connection`` (socket and gateway session), ``uploads`` (executed steps and ended episodes
    until acked) and ``human`` (take-over, hand-back, demonstrations); they share ``counters``.
    """

    def __init__(
        self,
        robot: Robot,
        robot_id: str,
        token: str,
        endpoint: str | list[str],
        context: zmq.Context | None = None,
        config: ClientConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        curve: dict | None = None,
    ):
        """``endpoint``: the robot's gateway, or every gateway's endpoint with its own first (it moves on
        when its own stops answering); ``curve``: the ``curve`` credentials of the registration (None for a
        gateway in token mode)."""
        self.robot = robot
        self.robot_id = robot_id
        self.cfg = config or ClientConfig()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._clock = clock
        self._latency = self.cfg.initial_latency_s
        self._last_latency_ms: float | None = None
        self._episode: EpisodeLog | None = None
        self._step = 0
        self._obs: dict[str, np.ndarray] | None = None
        self._current: Chunk | None = None
        self._next: Chunk | None = None
        self._request: Request | None = None
        self._zero_action = np.zeros(robot.action_spec.shape, dtype=np.float32)
        self.lockstep = bool(getattr(robot, "lockstep", False))  # waits for chunks instead of holding
        self.episodes: deque[EpisodeLog] = deque(maxlen=self.cfg.keep_episodes)
        # (robot-measured round trip in ms, the gateway's timings) for each answered request
        self.replies: deque[tuple[float, dict[str, float]]] = deque(maxlen=self.cfg.keep_replies)
        self.supervisor: Supervisor | None = None
        self.on_reset_request: Callable[[P.Reset], None] | None = None  # real robots: tell the operator
        self.reply_times: deque[float] = deque(maxlen=self.cfg.keep_replies)  # robot clock, per reply
        self.last_error: P.Error | None = None
        self.error_codes: Counter[str] = Counter()  # the gateway's ``error`` frames by code

        self.connection = GatewayConnection(
            endpoint, robot_id, token, self.cfg, clock, self.counters,
            on_message=self._handle, on_lost=self._forget_request, context=context, curve=curve,
        )  # fmt: skip
        self.uploads = EpisodeUploads(
            robot_id, self.cfg, send=self.connection.send, connected=self._connected, counters=self.counters
        )
        self.human = HumanControl(
            robot_id, clock, send=self.connection.send, connected=self._connected, position=self._position,
            on_take_over=self._drop_chunks, on_hand_back=self._maybe_request, counters=self.counters,
        )  # fmt: skip

    @classmethod
    def from_registration(
        cls, robot: Robot, info: dict, curve_secret_key: str | None = None, **kwargs
    ) -> RobotClient:
        """A client for what ``register`` (``POST /v1/robots``) returned: id, token, endpoint, CURVE keys.
        ``curve_secret_key``: the robot's own secret key, when it registered its own public key (the
        platform then issued none)."""
        curve = info.get("curve")
        if curve is not None and curve_secret_key is not None:
            curve = {**curve, "secret_key": curve_secret_key}
        if curve is not None and not curve.get("secret_key"):
            raise ValueError(
                "the registration issued no CURVE secret key (the robot sent its own public key): "
                "pass curve_secret_key"
            )
        endpoints = info.get("endpoints") or [info["endpoint"]]
        return cls(robot, info["robot_id"], info["token"], endpoints, curve=curve, **kwargs)

    # -- the parts' public faces ---------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.connection.endpoint

    @property
    def socket(self) -> zmq.Socket:
        return self.connection.socket

    @property
    def welcome(self) -> P.Welcome | None:
        return self.connection.welcome

    @property
    def connected(self) -> bool:
        return self.connection.connected

    def on_readable(self) -> None:
        """Drain every frame waiting on the socket."""
        self.connection.on_readable()

    def close(self) -> None:
        self.connection.close()

    @property
    def under_human_control(self) -> bool:
        return self.human.under_human_control

    def take_over(self, act: OperatorFn, operator: str = "human") -> None:
        """An operator drives from the next tick (see ``HumanControl.take_over``)."""
        self.human.take_over(act, operator)

    def hand_back(self) -> None:
        """The policy drives again from the current step."""
        self.human.hand_back()

    def record_demos(self, act: OperatorFn, n: int = 1, operator: str = "human") -> None:
        """The next ``n`` episodes are demonstrations driven by ``act`` (see ``HumanControl``)."""
        self.human.record_demos(act, n, operator)

    # -- what the parts are given ----------------------------------------------------------------------
    def _connected(self) -> bool:
        return self.connection.connected

    def _position(self) -> tuple[str, int]:
        """(episode id, step) of the running episode; ``("", 0)`` between episodes."""
        return (self._episode.episode_id, self._step) if self._episode is not None else ("", 0)

    def _drop_chunks(self) -> None:
        """Nothing the policy computed so far is executed (an operator took over)."""
        self._current = self._next = self._request = None

    def _forget_request(self) -> None:
        """The session that was asked is gone; the next one is asked afresh."""
        self._request = None

    # -- the control loop ----------------------------------------------------------------------------
    @property
    def control_dt(self) -> float:
        return 1.0 / getattr(self.robot, "control_hz", 10.0)

    def tick(self) -> None:
        """One control period. Never blocks on the network (nor, under human control, needs it)."""
        now = self._clock()
        self._housekeeping(now)
        if not self.connection.connected and not self.human.under_human_control:
            self._hold_or_wait(now)
            return
        if self._episode is None:
            self._start_episode(now)
            return
        if self.human.under_human_control:
            self._operator_step(now)
            return
        if self._current is None or self._current.remaining == 0:
            self._current, self._next = self._next, None
        if self._current is None or self._current.remaining == 0:
            self._hold_or_wait(now)
            return
        chunk = self._current
        sampled = chunk.actions[chunk.index]
        rec = StepRecord(self._step, chunk.obs_step, chunk.obs_time, now, chunk.version, chunk.replica)
        if chunk.index == 0:
            rec.log_prob = chunk.log_prob
        chunk.index += 1
        # executed clipped, recorded as sampled: the chunk's log-prob is of the sample (chunk replay clips)
        self._after_step(rec, sampled, self.robot.act(self.robot.action_spec.clip(sampled)), now)

    def _operator_step(self, now: float) -> None:
        """One tick under human control: the operator's action, recorded as an intervention."""
        assert self._obs is not None
        rec, action = self.human.operator_step(self._obs, self._step, now)
        action = self.robot.action_spec.clip(action)
        self._after_step(rec, action, self.robot.act(action), now)

    def _housekeeping(self, now: float) -> None:
        if not self.connection.check_link(now):
            return
        if self._request is not None and now - self._request.t_sent > self.cfg.deadline_s:
            self.counters["watchdog_trips"] += 1
            self._request = None  # asked again below with the current observation
            self._maybe_request(now)
        self.uploads.resend_overdue(now)
        self.connection.heartbeat(now)

    def _hold_or_wait(self, now: float) -> None:
        self._maybe_request(now)  # nothing to execute and nothing asked (e.g. a refused request): ask now
        if self._episode is None or self._step == 0:
            self.counters["startup_waits"] += 1
        elif self.lockstep:
            self.counters["lockstep_waits"] += 1  # simulated time stands still until the chunk is here
        else:
            self.counters["holds"] += 1
            rec = StepRecord(self._step, -1, now, now, -1, "", held=True)
            self._after_step(rec, self._zero_action, self.robot.hold(), now)

    # -- episodes ------------------------------------------------------------------------------------
    def _start_episode(self, now: float) -> None:
        self._begin(now, self.robot.reset())
        self.counters["startup_waits"] += 1

    def _begin(self, now: float, obs: dict[str, np.ndarray], meta: dict | None = None) -> None:
        """A new episode from observation ``obs``; a pending demonstration takes over for all of it."""
        robot_meta = getattr(self.robot, "episode_meta", None)
        self._episode = EpisodeLog(
            episode_id=uuid.uuid4().hex, meta={**(robot_meta() if robot_meta else {}), **(meta or {})}
        )
        self._step = 0
        self._current = self._next = None
        self._request = None
        self._obs = obs
        if not self.human.episode_started(self._episode) and self.supervisor is not None:
            self.supervisor.episode_started(self)
        self._maybe_request(now)

    def _after_step(self, rec: StepRecord, recorded: np.ndarray, result: StepResult, now: float) -> None:
        """Record the step (the operator's action if one intervened) and decide what comes next."""
        assert self._episode is not None and self._obs is not None
        if result.executed_action is not None:
            recorded = result.executed_action
            rec.intervention, rec.policy_version, rec.obs_step = True, -1, self._step
            self.counters["interventions"] += 1
        rec.reward = float(result.reward)
        self._episode.record(rec, self._obs, recorded)
        if self.supervisor is not None and self._episode.source == "online":
            self.supervisor.after_step(self, result)
        self._step += 1
        self.counters["steps"] += 1
        self._obs = result.observation
        if result.success or result.terminated or result.truncated:
            outcome = "success" if result.success else ("timeout" if result.truncated else "failure")
            self._episode.terminated, self._episode.truncated = end_flags(
                result.success, result.terminated, result.truncated
            )
            self._end_episode(outcome, now)
            return
        self._maybe_request(now)

    def _end_episode(self, outcome: str, now: float) -> None:
        ep = self._episode
        assert ep is not None
        ep.outcome = outcome
        ep.final_observation = self._obs
        self.counters["episodes"] += 1
        self.counters["successes"] += outcome == "success"
        self.uploads.upload_ended(ep, now)
        self.episodes.append(ep)
        self._episode = None
        if ep.source == "offline":
            self.hand_back()  # a demonstration ends with its episode

    def _on_reset(self, msg: P.Reset, now: float) -> None:
        """Return-and-explore: end the current episode (aborted) and start the next from the asked state."""
        self.counters["resets"] += 1
        reset_to = getattr(self.robot, "reset_to", None)
        if reset_to is None:
            if self.on_reset_request is not None:
                self.on_reset_request(msg)  # a real robot: the operator does it
            else:
                log.warning(
                    "%s: reset to %r requested; this robot cannot reset itself", self.robot_id, msg.state
                )
            return
        if self._episode is not None and self._episode.steps:
            self._end_episode("aborted", now)
        try:
            obs = reset_to(msg)
        except ValueError as exc:
            self.counters["errors"] += 1
            log.warning("%s: cannot reset to %r: %s", self.robot_id, msg.state, exc)
            self._episode = None
            return
        self._begin(now, obs, {"reset_state": msg.state, "reset_from_episode": msg.episode_id,
                               "reset_from_step": msg.step})  # fmt: skip

    # -- action chunks -------------------------------------------------------------------------------
    def _maybe_request(self, now: float) -> None:
        """Upload the observation early enough that the next chunk lands when the current one ends."""
        if self._request or self._next or self._obs is None or self._episode is None:
            return
        if not self.connection.connected or self.human.under_human_control:
            return
        remaining = self._current.remaining if self._current is not None else 0
        lookahead = 0 if self.lockstep else math.ceil(self._latency / self.control_dt)
        if remaining > lookahead:
            return
        if len(self._episode.steps) - self._episode.sent >= self.cfg.steps_per_upload:
            self.uploads.flush_steps(self._episode, now)
        self._request = Request(step=self._step, t_sent=now, obs_time=now)
        self.counters["requests"] += 1
        obs = P.Obs(
            robot_id=self.robot_id,
            episode_id=self._episode.episode_id,
            step=self._step,
            t_robot=now,
            observation=P.encode_observation(self.uploads.specs, self._obs)
            if self.uploads.specs
            else self._obs,
            last_latency_ms=self._last_latency_ms,
            # the rest of the current chunk runs before the reply's chunk starts: the policy may read it
            pending=self._current.actions[self._current.index :] if remaining else None,
        )
        self.connection.send(obs, now)

    def _on_action(self, msg: P.Action, now: float) -> None:
        req = self._request
        ep = self._episode
        if req is None or ep is None or msg.episode_id != ep.episode_id or msg.step != req.step:
            self.counters["stale_replies"] += 1
            return
        rtt = now - req.t_sent
        self._latency = 0.8 * self._latency + 0.2 * rtt
        self._last_latency_ms = rtt * 1e3
        self.replies.append((rtt * 1e3, msg.timings))
        self.reply_times.append(now)
        self.counters["replies"] += 1
        self._request = None
        actions = np.asarray(msg.actions)
        if (
            actions.ndim != 1 + len(self.robot.action_spec.shape)
            or actions.shape[1:] != self.robot.action_spec.shape
        ):
            self.counters["errors"] += 1
            log.warning("%s: action chunk of shape %s refused", self.robot_id, actions.shape)
            return
        self._next = Chunk(actions, req.step, req.obs_time, msg.policy_version, msg.replica, msg.log_prob)

    # -- replies -------------------------------------------------------------------------------------
    def _handle(self, msg: P.Message, now: float) -> None:
        if isinstance(msg, P.Action):
            self._on_action(msg, now)
        elif isinstance(msg, P.Welcome):
            self._on_welcome(msg)
        elif isinstance(msg, P.Ack):
            self.uploads.on_ack(msg)
        elif isinstance(msg, P.Error):
            self._on_error(msg)
        elif isinstance(msg, P.Reset):
            self._on_reset(msg, now)
        # Pong: the connection has already noted that the gateway was heard from.

    def _episode_refused(self, msg: P.Error) -> None:
        """The gateway will never store this episode as sent (cut by the lease, too long, a conflicting
        id): an ended one is no longer re-sent; the running one is abandoned and a new episode begins."""
        running = self._episode
        if running is not None and running.episode_id == msg.episode_id:
            running.refused = msg.code
            self.episodes.append(running)
            self._episode = None  # the next tick resets the robot and starts a new episode
            self._current = self._next = None
            self._request = None
        elif self.uploads.give_up(msg) is None:
            return  # already given up (the refusal of a frame sent before the first one came back)
        self.counters["episodes_refused"] += 1
        log.warning("%s: episode %s refused by the gateway (%s): %s",
                    self.robot_id, msg.episode_id, msg.code, msg.message)  # fmt: skip

    def _on_welcome(self, msg: P.Welcome) -> None:
        """A session on a task that fits this robot: say who is in control, then ask for a chunk."""
        obs_spec = P.specs_from_dict(msg.observation_spec)
        act_spec = P.ArraySpec.from_dict(msg.action_spec)
        mine = self.robot.observation_spec
        same = {k: (s.shape, s.dtype) for k, s in obs_spec.items()} == {
            k: (s.shape, s.dtype) for k, s in mine.items()
        }
        if not same or act_spec.shape != self.robot.action_spec.shape:
            raise RegistrationError(
                f"{self.robot_id}: the gateway's task {msg.task!r} expects {msg.observation_spec} / "
                f"{msg.action_spec}, this robot has {P.specs_to_dict(self.robot.observation_spec)}"
            )
        self.connection.welcomed(msg)
        # the task decides how camera frames travel: compressed where its spec gives an encoding
        self.uploads.specs = obs_spec if any(s.encoding != "raw" for s in obs_spec.values()) else None
        self._request = None
        self.human.announce(self._clock())  # a (new) gateway session learns who is in control
        self._maybe_request(self._clock())

    def _on_error(self, msg: P.Error) -> None:
        self.counters["errors"] += 1
        self.last_error = msg
        self.error_codes[msg.code] += 1
        if msg.code in ("incomplete_episode", "out_of_order") and msg.episode_id and msg.step is not None:
            self.uploads.resend_from(msg.episode_id, msg.step, self._episode, self._clock())
            return
        if msg.code in P.EPISODE_REFUSALS and msg.episode_id:
            self._episode_refused(msg)
            return
        if msg.code in ("unknown_session", "unauthorized"):
            self.connection.session_error(msg)
        elif msg.step is not None and self._request is not None and msg.step == self._request.step:
            log.warning("%s: request refused: %s %s", self.robot_id, msg.code, msg.message)
            self._request = None
