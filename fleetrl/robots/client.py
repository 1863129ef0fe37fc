"""Robot SDK: register over REST, talk to the gateway over ZeroMQ, execute action chunks asynchronously.

The control loop never waits on the network. ``RobotClient.tick`` runs one control period: it executes
the next action of the current chunk and, when the chunk is about to run out (the remaining steps cover
the measured round trip), uploads the current observation so the next chunk arrives before the current
one ends; the new chunk then starts exactly where the old one ends (VLAC §3.2.1). When no chunk is
ready, or the link is lost, the client calls the robot's ``hold()`` instead of running past its chunk.

Many clients share one thread through ``FleetRunner``: a timer heap of control ticks and one
``zmq.Poller`` over all sockets, so 100+ simulated robots fit in one process.

Only numpy, pyzmq, msgpack and httpx are needed here (a robot PC has no Ray or torch).
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import zmq

from fleetrl.robots import protocol as P
from fleetrl.robots.episode import end_flags
from fleetrl.robots.recorder import EpisodeLog, StepRecord

log = logging.getLogger(__name__)


class StepResult(NamedTuple):
    observation: dict[str, np.ndarray]
    reward: float
    terminated: bool
    truncated: bool
    success: bool
    # Set when an operator overrode the commanded action: what was actually executed (an intervention).
    executed_action: np.ndarray | None = None


class Robot(Protocol):
    """What a robot (real or simulated) provides to the SDK."""

    observation_spec: dict[str, P.ArraySpec]
    action_spec: P.ArraySpec

    def reset(self) -> dict[str, np.ndarray]: ...

    def act(self, action: np.ndarray) -> StepResult: ...

    def hold(self) -> StepResult:
        """Keep the robot safe for one control period (sim: a zero action)."""
        ...


@dataclass
class ClientConfig:
    """Timing of the SDK; defaults suit a 10-30 Hz robot on a LAN."""

    deadline_s: float = 0.5  # a request unanswered this long counts as a watchdog trip and is re-sent
    link_timeout_s: float = 3.0  # nothing heard for this long: the link is lost, hold and re-hello
    heartbeat_s: float = 1.0  # ping when nothing else was sent for this long
    hello_retry_s: float = 1.0
    ack_timeout_s: float = 1.0
    initial_latency_s: float = 0.05
    keep_episodes: int = 100  # per-step logs of this many recent episodes are kept for inspection
    keep_replies: int = 2000  # (round trip, gateway timings) of this many recent replies
    max_rows_per_frame: int = 64  # executed steps per ``steps`` frame
    steps_per_upload: int = 16  # upload executed steps once this many are pending (and at episode end)


@dataclass
class _Chunk:
    actions: np.ndarray
    obs_step: int
    obs_time: float
    version: int
    replica: str
    log_prob: float
    index: int = 0

    @property
    def remaining(self) -> int:
        return len(self.actions) - self.index


@dataclass
class _Request:
    step: int
    t_sent: float
    obs_time: float


OperatorFn = Callable[[dict[str, np.ndarray]], np.ndarray]  # observation -> the action the operator executes


class Supervisor(Protocol):
    """Watches a robot's steps and may take over / hand back (a person at a console, or a simulated
    operator, ``fleetrl.robots.operator``). Called after every executed step and at every episode start."""

    def after_step(self, client: RobotClient, result: StepResult) -> None: ...

    def episode_started(self, client: RobotClient) -> None: ...


class RegistrationError(RuntimeError):
    pass


def register(
    api_url: str, admin_token: str, name: str, task: str, robot: Robot, timeout: float = 10.0
) -> dict[str, Any]:
    """Register a robot over REST; returns ``{robot_id, token, endpoint, ...}``."""
    import httpx

    body = {
        "name": name,
        "task": task,
        "observation_spec": P.specs_to_dict(robot.observation_spec),
        "action_spec": robot.action_spec.to_dict(),
    }
    r = httpx.post(
        f"{api_url.rstrip('/')}/v1/robots",
        json=body,
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=timeout,
    )
    if r.status_code != 201:
        raise RegistrationError(f"registration of {name!r} failed ({r.status_code}): {r.text}")
    return r.json()


def deregister(api_url: str, admin_token: str, robot_ids: Sequence[str], timeout: float = 5.0) -> None:
    """Best-effort removal of robots (e.g. simulated ones at shutdown); errors are logged, not raised."""
    import httpx

    for robot_id in robot_ids:
        try:
            httpx.delete(
                f"{api_url.rstrip('/')}/v1/robots/{robot_id}",
                headers={"Authorization": f"Bearer {admin_token}"},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            log.warning("could not deregister %s: %s", robot_id, exc)


class RobotClient:
    """One robot's connection and control loop state; driven by ``FleetRunner`` (or ``run_robot``)."""

    def __init__(
        self,
        robot: Robot,
        robot_id: str,
        token: str,
        endpoint: str,
        context: zmq.Context | None = None,
        config: ClientConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.robot = robot
        self.robot_id = robot_id
        self.endpoint = endpoint
        self.cfg = config or ClientConfig()
        self._token = token
        self._clock = clock
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)  # never queue frames for a gateway that is not there
        self.socket.setsockopt(zmq.RECONNECT_IVL, 100)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.socket.connect(endpoint)

        self.welcome: P.Welcome | None = None
        self._ever_welcomed = False
        self._last_hello = -math.inf
        self._last_rx = clock()
        self._last_tx = -math.inf
        self._latency = self.cfg.initial_latency_s
        self._last_latency_ms: float | None = None
        self._episode: EpisodeLog | None = None
        self._step = 0
        self._obs: dict[str, np.ndarray] | None = None
        self._current: _Chunk | None = None
        self._next: _Chunk | None = None
        self._request: _Request | None = None
        self._unacked: dict[str, tuple[EpisodeLog, float]] = {}  # ended, not yet acked: (log, last sent)
        self._zero_action = np.zeros(robot.action_spec.shape, dtype=np.float32)
        self.episodes: deque[EpisodeLog] = deque(maxlen=self.cfg.keep_episodes)
        self.counters = {
            "steps": 0,
            "requests": 0,
            "replies": 0,
            "episodes": 0,
            "successes": 0,
            "holds": 0,
            "startup_waits": 0,
            "watchdog_trips": 0,
            "link_losses": 0,
            "reconnects": 0,
            "stale_replies": 0,
            "errors": 0,
            "resent_episode_ends": 0,
            "resent_steps": 0,
            "interventions": 0,
            "takeovers": 0,
            "demos": 0,
            "resets": 0,
        }
        # (robot-measured round trip in ms, the gateway's timings) for each answered request
        self.replies: deque[tuple[float, dict[str, float]]] = deque(maxlen=self.cfg.keep_replies)
        self._operator: tuple[OperatorFn, str] | None = None  # (act, who) while a human has control
        self._demos_left = 0  # next episodes recorded as demonstrations (source "offline")
        self._demo_operator: tuple[OperatorFn, str] | None = None
        self.supervisor: Supervisor | None = None
        self.on_reset_request: Callable[[P.Reset], None] | None = None  # real robots: tell the operator
        self.reply_times: deque[float] = deque(maxlen=self.cfg.keep_replies)  # robot clock, per reply
        self.last_error: P.Error | None = None

    # -- public --------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.welcome is not None

    @property
    def control_dt(self) -> float:
        return 1.0 / getattr(self.robot, "control_hz", 10.0)

    def close(self) -> None:
        self.socket.close(linger=0)

    # -- human in the loop ---------------------------------------------------------------------------
    @property
    def under_human_control(self) -> bool:
        return self._operator is not None

    def take_over(self, act: OperatorFn, operator: str = "human") -> None:
        """An operator takes control: from the next tick the robot executes ``act(observation)`` (a teleop
        device, a scripted oracle) and records those steps as interventions; queued policy chunks are
        dropped here and at the gateway, which sends nothing until ``hand_back``."""
        if self._operator is not None:
            self._operator = (act, operator)
            return
        self._operator = (act, operator)
        self._current = self._next = self._request = None
        self.counters["takeovers"] += 1
        self._send_control(self._clock())

    def hand_back(self) -> None:
        """The policy drives again from the current step; chunks computed before now are never executed."""
        if self._operator is None:
            return
        self._operator = None
        now = self._clock()
        self._send_control(now)
        self._maybe_request(now)

    def record_demos(self, act: OperatorFn, n: int = 1, operator: str = "human") -> None:
        """The next ``n`` episodes are demonstrations: ``act`` drives them from start to end, and they go
        to the task's demonstration buffer (source ``offline``), recorded and uploaded like any episode."""
        self._demos_left = n
        self._demo_operator = (act, operator)

    def _send_control(self, now: float) -> None:
        ep = self._episode
        who = self._operator[1] if self._operator else ""
        mode = "human" if self._operator else "autonomous"
        if self.welcome is not None:
            self._send(
                P.Control(
                    robot_id=self.robot_id,
                    episode_id=ep.episode_id if ep else "",
                    step=self._step if ep else 0,
                    mode=mode,
                    operator=who,
                ),
                now,
            )

    def _operator_step(self, now: float) -> None:
        """One tick under human control: the operator's action, recorded as an intervention."""
        assert self._operator is not None and self._obs is not None
        action = self._clip(np.asarray(self._operator[0](self._obs), dtype=np.float32))
        rec = StepRecord(self._step, self._step, now, now, -1, "", intervention=True)
        self.counters["interventions"] += 1
        self._after_step(rec, action, self.robot.act(action), now)

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

    def tick(self) -> None:
        """One control period. Never blocks on the network (nor, under human control, needs it)."""
        now = self._clock()
        self._housekeeping(now)
        if self.welcome is None and self._operator is None:
            self._hold_or_wait(now)
            return
        if self._episode is None:
            self._start_episode(now)
            return
        if self._operator is not None:
            self._operator_step(now)
            return
        if self._current is None or self._current.remaining == 0:
            self._current, self._next = self._next, None
        if self._current is None or self._current.remaining == 0:
            self._hold_or_wait(now)
            return
        chunk = self._current
        commanded = self._clip(chunk.actions[chunk.index])
        rec = StepRecord(self._step, chunk.obs_step, chunk.obs_time, now, chunk.version, chunk.replica)
        if chunk.index == 0:
            rec.log_prob = chunk.log_prob
        chunk.index += 1
        self._after_step(rec, commanded, self.robot.act(commanded), now)

    # -- internals -----------------------------------------------------------------------------------
    def _send(self, msg: P.Message, now: float) -> None:
        try:
            self.socket.send(P.encode(msg), zmq.NOBLOCK)
            self._last_tx = now
        except zmq.Again:
            pass  # no connection right now; the watchdog and hello retry cover it

    def _housekeeping(self, now: float) -> None:
        if self.welcome is not None and now - self._last_rx > self.cfg.link_timeout_s:
            self.counters["link_losses"] += 1
            log.warning("%s: link to %s lost; holding and re-connecting", self.robot_id, self.endpoint)
            self.welcome = None
            self._request = None
        if self.welcome is None and now - self._last_hello > self.cfg.hello_retry_s:
            self._last_hello = now
            self._send(P.Hello(robot_id=self.robot_id, token=self._token), now)
            return
        if self._request is not None and now - self._request.t_sent > self.cfg.deadline_s:
            self.counters["watchdog_trips"] += 1
            self._request = None  # asked again below with the current observation
            self._maybe_request(now)
        for episode_id, (ep, t_sent) in list(self._unacked.items()):
            if now - t_sent > self.cfg.ack_timeout_s and self.welcome is not None:
                self.counters["resent_episode_ends"] += 1
                self._unacked[episode_id] = (ep, now)
                self._flush_steps(ep, now)
                self._send(ep.end_message(self.robot_id), now)
        if now - self._last_tx > self.cfg.heartbeat_s and self.welcome is not None:
            self._send(P.Ping(robot_id=self.robot_id), now)

    def _hold_or_wait(self, now: float) -> None:
        self._maybe_request(now)  # nothing to execute and nothing asked (e.g. a refused request): ask now
        if self._episode is not None and self._step > 0:
            self.counters["holds"] += 1
            rec = StepRecord(self._step, -1, now, now, -1, "", held=True)
            self._after_step(rec, self._zero_action, self.robot.hold(), now)
        else:
            self.counters["startup_waits"] += 1

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
        if self._demos_left > 0:
            self._demos_left -= 1
            self._episode.source = "offline"
            self._episode.meta["demonstrator"] = self._demo_operator[1]
            self.counters["demos"] += 1
            self.take_over(*self._demo_operator)
        elif self.supervisor is not None:
            self.supervisor.episode_started(self)
        self._maybe_request(now)

    def _after_step(self, rec: StepRecord, commanded: np.ndarray, result: StepResult, now: float) -> None:
        """Record the executed step (the operator's action if one intervened) and decide what comes next."""
        assert self._episode is not None and self._obs is not None
        executed = commanded
        if result.executed_action is not None:
            executed = result.executed_action
            rec.intervention, rec.policy_version, rec.obs_step = True, -1, self._step
            self.counters["interventions"] += 1
        rec.reward = float(result.reward)
        self._episode.record(rec, self._obs, executed)
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

    def _flush_steps(self, log: EpisodeLog, now: float) -> None:
        for frame in log.steps_messages(self.robot_id, self.cfg.max_rows_per_frame):
            self._send(frame, now)

    def _maybe_request(self, now: float) -> None:
        """Upload the observation early enough that the next chunk lands when the current one ends."""
        if self._request or self._next or self._obs is None or self._episode is None or self.welcome is None:
            return
        if self._operator is not None:
            return
        remaining = self._current.remaining if self._current is not None else 0
        lookahead = math.ceil(self._latency / self.control_dt)
        if remaining > lookahead:
            return
        if len(self._episode.steps) - self._episode.sent >= self.cfg.steps_per_upload:
            self._flush_steps(self._episode, now)
        self._request = _Request(step=self._step, t_sent=now, obs_time=now)
        self.counters["requests"] += 1
        obs = P.Obs(
            robot_id=self.robot_id,
            episode_id=self._episode.episode_id,
            step=self._step,
            t_robot=now,
            observation=self._obs,
            last_latency_ms=self._last_latency_ms,
        )
        self._send(obs, now)

    def _end_episode(self, outcome: str, now: float) -> None:
        ep = self._episode
        assert ep is not None
        ep.outcome = outcome
        ep.final_observation = self._obs
        self.counters["episodes"] += 1
        self.counters["successes"] += outcome == "success"
        self._unacked[ep.episode_id] = (ep, now)
        self._flush_steps(ep, now)
        self._send(ep.end_message(self.robot_id), now)
        self.episodes.append(ep)
        self._episode = None
        if ep.source == "offline":
            self.hand_back()  # a demonstration ends with its episode

    def _handle(self, msg: P.Message, now: float) -> None:
        if isinstance(msg, P.Action):
            self._on_action(msg, now)
        elif isinstance(msg, P.Welcome):
            self._on_welcome(msg)
        elif isinstance(msg, P.Ack):
            acked = self._unacked.pop(msg.episode_id, None)
            if acked is not None:
                acked[0].acked = True
        elif isinstance(msg, P.Error):
            self._on_error(msg)
        elif isinstance(msg, P.Reset):
            self._on_reset(msg, now)
        # Pong: only refreshes _last_rx.

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
        self._next = _Chunk(actions, req.step, req.obs_time, msg.policy_version, msg.replica, msg.log_prob)

    def _on_error(self, msg: P.Error) -> None:
        self.counters["errors"] += 1
        self.last_error = msg
        if msg.code in ("incomplete_episode", "out_of_order") and msg.episode_id and msg.step is not None:
            self._resend_from(msg.episode_id, msg.step)
            return
        if msg.code in ("unknown_session", "unauthorized"):
            if msg.code == "unauthorized":
                log.error("%s: gateway refused credentials: %s", self.robot_id, msg.message)
            self.welcome = None
            self._request = None
        elif msg.step is not None and self._request is not None and msg.step == self._request.step:
            log.warning("%s: request refused: %s %s", self.robot_id, msg.code, msg.message)
            self._request = None

    def _resend_from(self, episode_id: str, step: int) -> None:
        """The gateway lacks rows from ``step`` on: send them again (now for an ended episode, else with the
        next request)."""
        now = self._clock()
        if self._episode is not None and self._episode.episode_id == episode_id:
            self._episode.sent = min(self._episode.sent, step)
        elif episode_id in self._unacked:
            ep, _ = self._unacked[episode_id]
            ep.sent = min(ep.sent, step)
            self._flush_steps(ep, now)
            self._send(ep.end_message(self.robot_id), now)
            self._unacked[episode_id] = (ep, now)
        self.counters["resent_steps"] += 1

    def _clip(self, action: np.ndarray) -> np.ndarray:
        spec = self.robot.action_spec
        if spec.low is None and spec.high is None:
            return action
        return np.clip(action, spec.low, spec.high)


class FleetRunner:
    """Drives many ``RobotClient``s from one thread: control ticks on a timer heap, one poller for I/O."""

    def __init__(self, clients: Sequence[RobotClient]):
        self.clients = list(clients)
        self._poller = zmq.Poller()
        self._by_socket = {}
        for c in self.clients:
            self._poller.register(c.socket, zmq.POLLIN)
            self._by_socket[c.socket] = c

    def run(self, duration: float | None = None, stop: threading.Event | None = None) -> None:
        start = time.monotonic()
        # Spread the first ticks over one period so robots do not all ask at the same instant.
        heap = [(start + i * c.control_dt / max(1, len(self.clients)), i) for i, c in enumerate(self.clients)]
        heapq.heapify(heap)
        while heap:
            now = time.monotonic()
            if (duration is not None and now - start >= duration) or (stop is not None and stop.is_set()):
                return
            timeout_ms = max(0.0, (heap[0][0] - now) * 1e3)
            for sock, _ in self._poller.poll(min(timeout_ms, 100.0)):
                self._by_socket[sock].on_readable()
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due, i = heapq.heappop(heap)
                client = self.clients[i]
                client.tick()
                # Keep the rate; if a tick is late by more than one period, skip ahead instead of bursting.
                nxt = due + client.control_dt
                heapq.heappush(heap, (nxt if nxt > now - client.control_dt else now + client.control_dt, i))

    def close(self) -> None:
        for c in self.clients:
            c.close()
