"""The gateway (rollout worker): a Ray actor that owns the robots' ZeroMQ ROUTER socket.

It authenticates robots (token checked against the registry at ``hello``, then the connection's
routing id is bound to the robot), validates every frame, hands observations to the scheduler and
sends each robot its action chunk. Malformed, oversized, unauthorised or out-of-order frames get an
``error`` reply (naming the episode a frame was about) and are counted; nothing a peer sends can raise
out of the receive loop. Robots hold a lease: one silent for ``lease_timeout_s`` goes offline; back within
``resume_window_s`` it goes on with its open episodes, after that its open episode ends as ``aborted``.

The socket, the scheduler and the replica calls all live on one asyncio loop in a thread of the actor,
so the scheduler needs no locks; Ray method calls reach that loop through ``_call``. The gateway owns its
other jobs as parts, each built here with only what it needs (``send``/``refuse``, the robot table, the
loop, the metrics buffer, the data server, the scheduler): task pools and replica dispatch
(``ReplicaDispatch``, dispatch.py), episode assembly and delivery (``EpisodeIntake``, intake.py),
return-and-explore resets (``ResetRequests``, resets.py) and gated rollout, rollback and evaluation
(``RolloutControl``, rollout_control.py, deciding by rollout.py). The receive loop and the frame handlers here
check sessions and hand each frame to its part.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import ray
import zmq
import zmq.asyncio

from fleetrl.robots import protocol as P
from fleetrl.robots.episode import check_id
from fleetrl.robots.pending import check_pending
from fleetrl.workers.gateway.curve import ZAP_DOMAIN, RobotKeyAuthenticator
from fleetrl.workers.gateway.dispatch import ReplicaDispatch
from fleetrl.workers.gateway.gc_tuning import calm_garbage_collector
from fleetrl.workers.gateway.hello_limits import HelloLimits
from fleetrl.workers.gateway.inline import CopyFactory, InlinePolicies
from fleetrl.workers.gateway.intake import EpisodeIntake
from fleetrl.workers.gateway.resets import ResetRequests
from fleetrl.workers.gateway.rollout_control import Refused, RolloutControl
from fleetrl.workers.gateway.scheduler import Scheduler
from fleetrl.workers.gateway.session import GatewayConfig, RobotState
from fleetrl.workers.metrics_server import MetricsBuffer, RemoteLogHandler
from fleetrl.workers.task import TaskConfig, registered_tasks

log = logging.getLogger(__name__)
ZAP_MAX_WAIT_S = 10.0  # the longest a new robot connection waits for the registry budget (then refused)
DRAIN_BATCH = 64  # frames handled per turn of the loop before replica results and commits get theirs


def camera_file(frame: np.ndarray | P.EncodedFrame, at: float) -> dict[str, Any]:
    """A frame as it arrived, as an image file: compressed frames as they are, raw ones as JPEG."""
    if not isinstance(frame, P.EncodedFrame):
        frame = P.encode_frame(frame, "jpeg", 90)
    return {"media_type": f"image/{frame.encoding}", "data": frame.data, "time": at}


class Gateway:
    """Ray actor: ``ready()``, ``stats()``, ``revoke(robot_id)``, ``add_task``, ``remove_task``,
    ``served_tasks()``, ``request_reset``, ``stop()``; the work happens on its loop."""

    def __init__(
        self,
        config: GatewayConfig,
        tasks: list[TaskConfig],
        replicas: dict[str, list[Any]],
        registry: Any,
        metrics: Any | None = None,
        data: Any | None = None,
        weights: Any | None = None,
        curve_keys: tuple[str, str] | None = None,
        index: int = 0,
        inline_copy: CopyFactory | None = None,
    ):
        """``curve_keys``: the gateway's (public, secret) CURVE key pair (``security: curve``); ``weights``:
        the weight board; when given, the tasks served are the registry's, with the replicas the board
        knows, so a gateway Ray restarts keeps the tasks created and deleted over REST since the platform
        started (a created task whose replicas are not registered yet arrives by ``add_task``). ``index``:
        which of the platform's ``config.replicas`` gateways this is (its port, its share of replicas).
        ``inline_copy``: builds this gateway's own copy of a ``transport: inline`` task's policy (inline.py)."""
        self.cfg = config
        self.index = index
        self.name = "gateway" if config.replicas == 1 else f"gateway-{index}"
        if config.security == "curve" and curve_keys is None:
            raise ValueError("security: curve needs the gateway's key pair (curve.server_keys)")
        self.curve_keys = curve_keys if config.security == "curve" else None
        self.auth: RobotKeyAuthenticator | None = None
        self.node_ip = ray.util.get_node_ip_address()
        self.bind = config.bind_of(index)
        self.endpoint = config.public_endpoint(self.node_ip, index)  # what robots are told
        self.registry = registry
        self.metrics_server = metrics
        if metrics is not None:
            RemoteLogHandler.install(metrics, self.name)
        self.limits = P.Limits(max_frame_bytes=config.max_frame_bytes)
        self.metrics = MetricsBuffer()
        self.scheduler = Scheduler()
        self.robots: dict[str, RobotState] = {}
        self.by_ident: dict[bytes, str] = {}
        self.refused: Counter = Counter()
        self.hello_limits = HelloLimits(
            per_peer_rate=config.hello_per_peer_per_s, registry_rate=config.hello_registry_per_s,
            registry_burst=2 * config.hello_registry_per_s,
        )  # fmt: skip
        self._bound = threading.Event()
        self._drain_pending = False  # a ``_drain`` is scheduled on the loop
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self.dispatch = ReplicaDispatch(
            self.scheduler, self.robots, self._send, self._refuse, self.metrics, self._loop,
            share=lambda count: config.replica_indices(index, count),
        )  # fmt: skip
        # ``data``: the data server; None: episodes are acked and dropped (and no reset can be recorded)
        self.resets = ResetRequests(self.robots, data, self._send, random.Random(0))
        self.rollout = RolloutControl(
            self.dispatch.rollouts, self.robots, weights, registry, self.metrics, self._loop, holder=self.name
        )
        self.intake = EpisodeIntake(
            data, self._send, self._refuse, self.refused, self.metrics, self._loop, self.resets.maybe_explore,
            self.rollout.episode_ended, max_episode_steps=config.max_episode_steps,
            max_episode_bytes=config.max_episode_bytes,
        )  # fmt: skip
        if weights is not None:
            pools = {**ray.get(weights.pools.remote()), **replicas}
            served = [t for t, _ in registered_tasks(ray.get(registry.task_configs.remote()), tasks)]
            tasks, replicas = [t for t in served if t.name in pools], pools
        self.inline = InlinePolicies(inline_copy, self.name, index, weights, metrics)
        for task in tasks:
            self.dispatch.add_task(task, replicas.get(task.name, []), self._inline_copy(task))
        self.rollout.restore(ray.get(registry.rollouts.remote()))
        interrupted = ray.get(registry.interrupt_evaluations.remote(self.name))
        if interrupted:
            log.warning(
                "gateway: %d evaluations that were running when it (re)started are interrupted", interrupted
            )
        calm_garbage_collector()
        self._thread = threading.Thread(target=self._run_loop, name="fleetrl-gateway", daemon=True)
        self._thread.start()

    # -- Ray-facing methods --------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        if not self._bound.wait(timeout=30):
            raise RuntimeError(f"{self.name} did not bind {self.bind}: {self._error!r}")
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed to bind {self.bind}: {self._error}")
        return {
            "index": self.index,
            "endpoint": self.endpoint,
            "bind": self.bind,
            "node_ip": self.node_ip,
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    def stats(self) -> dict[str, Any]:
        return self._call(self._stats())

    def revoke(self, robot_id: str) -> bool:
        """Drop a deleted robot's session and its verified credentials now; its next frame is refused."""

        def revoke() -> bool:
            self.hello_limits.forget(robot_id)
            if self.auth is not None:
                self.auth.forget(robot_id)
            return self._forget(robot_id)

        return self._on_loop(revoke)

    def add_task(self, task: TaskConfig, replicas: list[Any]) -> None:
        """Serve a task created at runtime (POST /v1/tasks)."""
        copy = self._inline_copy(task)  # built here, off the loop: it waits for the weight board

        def add() -> None:
            self.dispatch.add_task(task, replicas, copy)
            self.rollout.adopt(task.name)

        self._on_loop(add)

    def _inline_copy(self, task: TaskConfig) -> Any:
        """This gateway's copy of the task's policy when it runs it inline (``transport: inline``), else None."""
        return self.inline.add(task) if task.inference.transport == "inline" else None

    @ray.method(concurrency_group="inline")
    def inline_call(self, task: str, method: str, *args: Any) -> Any:
        """A replica method (``load_weights``, ``hold``, ...) the weight board calls on this gateway's inline
        copy of ``task`` (inline.py)."""
        return self.inline.call(task, method, *args)

    # -- rollout (REST: /v1/tasks/{task}/rollout, /rollback, /evaluations) ----------------------------
    def rollout_state(self, task: str, summary: bool = False) -> dict[str, Any]:
        """The task's rollout: mode, versions, trial, verdicts, running evaluations, each robot's version
        (``summary``: ``{summary: the one-line version}``); ``{ok: False, code, error}`` for a task not served."""
        if summary:
            return self._refusable(lambda: {"summary": self.rollout.rollouts_summary(task)})
        return self._refusable(lambda: self.rollout.state(task))

    def rollback(self, task: str, version: int | None) -> dict[str, Any]:
        """Pin the task's new episodes to ``version`` (None: release), once every replica holds it."""
        return self._refusable(lambda: self.rollout.rollback(task, version), timeout=150)

    def evaluate(
        self, task: str, version: int | None, robots: list[str] | None, episodes: int, deterministic: bool,
        exclusive: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """Start an evaluation of ``version`` on ``robots`` (None: any of the task's); returns its record
        (``exclusive``: the robots exist for it alone, see ``Evaluation``)."""
        return self._refusable(
            lambda: self.rollout.evaluate(task, version, robots, episodes, deterministic, exclusive),
            timeout=150,
        )

    def running_evaluations(self, task: str) -> list[dict[str, Any]]:
        return self._on_loop(
            lambda: [] if task not in self.dispatch.rollouts else self.rollout.running_evaluations(task)
        )

    def _refusable(self, fn: Callable[[], Any], timeout: float = 10) -> dict[str, Any]:
        """Run ``fn`` (sync or a coroutine) on the loop; a ``Refused`` becomes ``{ok: False, code, error}``."""

        async def run() -> dict[str, Any]:
            try:
                out = fn()
                if asyncio.iscoroutine(out):
                    out = await out
                return {"ok": True, **out}
            except Refused as exc:
                return {"ok": False, "code": exc.code, "error": exc.message}

        return self._call(run(), timeout)

    def served_tasks(self) -> list[str]:
        """The tasks robots can connect to now."""
        return self._on_loop(lambda: sorted(self.dispatch.tasks))

    def remove_task(self, name: str) -> bool:
        """Stop serving a deleted task: its robots' sessions end (open episodes aborted), what waits for
        its replicas is dropped, and its pool and replicas are forgotten. False if it was not served."""

        def remove() -> bool:
            if name not in self.dispatch.tasks:
                return False
            for robot_id in [r for r, s in self.robots.items() if s.task.name == name]:
                self._forget(robot_id)
            self.dispatch.remove_task(name)
            self.inline.remove(name)
            return True

        return self._on_loop(remove)

    def camera_frame(self, robot_id: str, key: str | None = None) -> dict[str, Any]:
        """The latest camera frame a robot sent with an observation, as an image file: ``{ok, media_type,
        data, key, time}`` (a raw frame is compressed to JPEG here), or ``{ok: False, code, error}``:
        404 for a robot not connected or no frame yet, 422 for a key that is not a camera of its task."""

        def latest() -> dict[str, Any]:
            state = self.robots.get(robot_id)
            if state is None:
                return {"ok": False, "code": 404, "error": f"robot {robot_id!r} is not connected"}
            cameras = state.task.camera_keys
            name = key or (cameras[0] if cameras else None)
            if name not in cameras:
                why = f"task {state.task.name!r} has no camera {name!r}; its cameras: {list(cameras)}"
                return {"ok": False, "code": 422, "error": why}
            if name not in state.camera:
                return {
                    "ok": False,
                    "code": 404,
                    "error": f"robot {robot_id!r} has sent no {name!r} frame yet",
                }
            return {"ok": True, "key": name, **camera_file(*state.camera[name])}

        return self._on_loop(latest)

    def request_reset(self, robot_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """``{"state": name}``, ``{"episode_id", "step"}`` or ``{"failure": true}``. Returns what was sent,
        or ``{"ok": False, "code", "error"}``."""
        return self._call(self.resets.request(robot_id, request))

    def stop(self) -> None:
        self.inline.close()
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        """Run ``coro`` on the gateway's loop and wait for its result (from a Ray method's thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the gateway's loop, where the robot table and the parts may be touched."""

        async def run() -> Any:
            return fn(*args)

        return self._call(run())

    # -- loop ----------------------------------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._ctx = zmq.asyncio.Context()  # asyncio: the ZAP handler's socket (curve.py) awaits on it
        # The ROUTER itself is a plain socket read by a loop reader (``_drain``): no future per frame.
        self.sock = zmq.Context.shadow(self._ctx.underlying).socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # No ROUTER_HANDOVER: a peer that sets a connected robot's routing id must not inherit its session
        # (robots' DEALER sockets leave the routing id to libzmq, so a reconnect gets a new one anyway).
        # Hard cap far above the soft limit: larger frames are dropped by libzmq before they use memory.
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.cfg.max_frame_bytes)
        if self.curve_keys is not None:
            self.auth = RobotKeyAuthenticator(self._ctx, self._robot_for_key)
            self.auth.start()
            self.sock.curve_server = True
            self.sock.curve_publickey, self.sock.curve_secretkey = (k.encode() for k in self.curve_keys)
            self.sock.zap_domain = ZAP_DOMAIN.encode()
        try:
            self.sock.bind(self.bind)
        except zmq.ZMQError as exc:
            self._error = exc
            self._bound.set()
            return
        self._bound.set()
        fd = self.sock.getsockopt(zmq.FD)
        self._loop.add_reader(fd, self._drain)
        self._loop.call_soon(self._drain)
        self._loop.create_task(self._lease_loop())
        self._loop.create_task(self.rollout.run())
        if self.metrics_server is not None:
            self._loop.create_task(self._flush_loop())
        try:
            self._loop.run_forever()
        finally:
            if self.auth is not None:
                self.auth.stop()
            self.dispatch.close()
            self._loop.remove_reader(fd)
            self.sock.close(linger=0)
            self._ctx.term()

    async def _robot_for_key(self, public_key: str) -> str | None:
        """ZAP: the registered robot with this CURVE key (None: the connection is refused); a key not seen
        before costs a registry call, within the hello budget: it waits its turn (up to
        ``ZAP_MAX_WAIT_S``) rather than being refused, since libzmq never re-dials a refused handshake."""
        wait = self.hello_limits.reserve_registry_call(ZAP_MAX_WAIT_S)
        if wait is None:
            return None  # booked beyond the bound: a flood, refuse (the robot's SDK re-dials)
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            return await self.registry.robot_for_curve_key.remote(public_key)
        except Exception:  # noqa: BLE001 - registry restarting: refuse, the robot's socket retries
            return None

    def _drain(self) -> None:
        """Handle the frames waiting on the socket, at most ``DRAIN_BATCH`` before letting the loop run
        other work (replica results, commits) and coming back. Called when the socket's FD signals, and
        after a send that found frames waiting: ZeroMQ's FD is edge-triggered, and a send may consume the
        edge of frames that arrived meanwhile."""
        self._drain_pending = False
        for _ in range(DRAIN_BATCH):
            try:
                if self.auth is None:
                    frames, user = self.sock.recv_multipart(zmq.NOBLOCK), None
                else:
                    parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    frames, user = [p.bytes for p in parts], parts[-1].get("User-Id")
            except zmq.Again:
                return
            try:
                self._on_frames(frames, user)
            except Exception:  # noqa: BLE001 - the gateway never dies of one frame
                log.exception("gateway: unexpected error handling a frame")
                self._refuse(frames[0], "internal", "internal error", None)
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        if not self._drain_pending:
            self._drain_pending = True
            self._loop.call_soon(self._drain)

    # -- frame handling ------------------------------------------------------------------------------
    def _send(self, ident: bytes, msg: P.Message) -> None:
        try:
            self.sock.send_multipart([ident, P.encode(msg)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer is gone (ROUTER drops unroutable frames)
        if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._schedule_drain()  # the send may have taken the FD's edge for frames now waiting

    def _refuse(
        self,
        ident: bytes,
        code: str,
        message: str,
        robot_id: str | None,
        step: int | None = None,
        episode_id: str | None = None,
    ) -> None:
        self.refused[code] += 1
        self.metrics.inc("frames_refused_total", (code,))
        echoed = episode_id[:128] if isinstance(episode_id, str) else None
        self._send(
            ident, P.Error(robot_id=robot_id or "", code=code, message=message, step=step, episode_id=echoed)
        )

    def _on_frames(self, frames: list[bytes], user: str | None = None) -> None:
        """One message; ``user``: the robot id CURVE authenticated this connection as (None: token mode)."""
        ident = frames[0]
        if len(frames) != 2:
            self._refuse(ident, "bad_frame", f"expected one frame per message, got {len(frames) - 1}", None)
            return
        try:
            msg = P.decode(frames[1], self.limits)
        except P.ProtocolError as exc:
            self._refuse(ident, exc.code, exc.message, None)
            return
        if self.auth is not None and msg.robot_id != user:  # every frame speaks for its connection's robot
            self._refuse(ident, "unauthorized", f"this connection is authenticated as robot {user!r}", user)
            return
        if isinstance(msg, P.Hello):
            if not self.hello_limits.admit(ident):  # bounded per connection before anything else is spent
                self._refuse(ident, "rate_limited", "too many hello attempts from this connection: wait a "
                             "second", msg.robot_id)  # fmt: skip
                return
            self._loop.create_task(self._on_hello(ident, msg))
            return
        robot_id = self.by_ident.get(ident)
        if robot_id is None or robot_id != msg.robot_id:
            self._refuse(ident, "unknown_session", "send hello first", msg.robot_id)
            return
        state = self.robots[robot_id]
        state.last_seen = time.monotonic()
        episode_id = getattr(msg, "episode_id", None)
        if isinstance(msg, P.Obs | P.Steps | P.EpisodeEnd) or (isinstance(msg, P.Control) and episode_id):
            problem = check_id("episode_id", episode_id)
            if problem is not None:
                self._refuse(ident, "bad_message", problem, robot_id, getattr(msg, "step", None), episode_id)
                return
        if isinstance(msg, P.Obs):
            self._on_obs(ident, state, msg)
        elif isinstance(msg, P.Steps):
            self.intake.on_steps(ident, state, msg)
        elif isinstance(msg, P.EpisodeEnd):
            self.intake.on_episode_end(ident, state, msg)
        elif isinstance(msg, P.Control):
            self._on_control(ident, state, msg)
        elif isinstance(msg, P.Ping):
            self._send(ident, P.Pong(robot_id=robot_id))
        else:
            self._refuse(ident, "bad_message", f"robots may not send {msg.KIND!r}", robot_id)

    async def _on_hello(self, ident: bytes, msg: P.Hello) -> None:
        """Verify the credentials (locally when verified before; else the registry, within the shared
        budget) and bind the connection to the robot."""
        try:
            record = self.hello_limits.cached(msg.robot_id, msg.token)
        except PermissionError:
            self._refuse(ident, "unauthorized", "unknown robot id or wrong token", msg.robot_id)
            return
        if record is None:
            if not self.hello_limits.admit_registry_call():
                self._refuse(ident, "rate_limited", "the gateway is answering too many hellos: retry in a "
                             "second", msg.robot_id)  # fmt: skip
                return
            try:
                record = await self.registry.verify.remote(msg.robot_id, msg.token)
            except Exception as exc:  # noqa: BLE001 - registry unavailable: refuse, the robot retries
                self._refuse(
                    ident, "unavailable", f"registry unavailable: {type(exc).__name__}", msg.robot_id
                )
                return
            if record is not None:
                self.hello_limits.remember(msg.robot_id, msg.token, record)
        if record is None:
            self._refuse(ident, "unauthorized", "unknown robot id or wrong token", msg.robot_id)
            return
        task = self.dispatch.tasks.get(record["task"])
        if task is None:
            self._refuse(ident, "unauthorized", f"task {record['task']!r} is not served here", msg.robot_id)
            return
        if self.cfg.replicas > 1 or record.get("gateway") != self.index:
            # it is ours now (with several gateways it may have come from another, and may have been here
            # before: the registry, not a cached record, knows where it is); REST routes its calls by this
            if record.get("gateway") not in (None, self.index):
                log.info(
                    "%s: robot %s moved here from gateway %s", self.name, msg.robot_id, record["gateway"]
                )
            record["gateway"] = self.index
            self.registry.assign_gateway.remote(msg.robot_id, self.index)
        state = self.robots.get(msg.robot_id)
        if state is None:
            state = self.robots[msg.robot_id] = RobotState(msg.robot_id, task, record["name"])
        if state.ident is not None and state.ident != ident:
            self.by_ident.pop(state.ident, None)
        state.ident = ident
        state.online = True
        state.offline_since = None  # back within the resume window: its open episodes go on
        state.last_seen = time.monotonic()
        self.by_ident[ident] = msg.robot_id
        self._send(
            ident,
            P.Welcome(
                robot_id=msg.robot_id,
                task=task.name,
                observation_spec=task.public()["observation_spec"],
                action_spec=task.public()["action_spec"],
                chunk_len=task.chunk_len,
                policy_version=0,
                heartbeat_s=self.cfg.heartbeat_s,
            ),
        )

    def _on_control(self, ident: bytes, state: RobotState, msg: P.Control) -> None:
        """An operator took over (or handed back): no action goes to a robot under human control, and
        none computed from an observation older than the hand-back (a stale chunk) goes after it."""
        if msg.mode not in P.CONTROL_MODES:
            self._refuse(ident, "bad_message", f"mode must be one of {P.CONTROL_MODES}", state.robot_id)
            return
        if msg.mode == "human" and state.control != "human":
            state.takeovers += 1
            self.metrics.inc("takeovers_total", (state.task.name,))
        state.control, state.operator = msg.mode, msg.operator[:64] if msg.mode == "human" else ""
        state.control_since = (msg.episode_id, msg.step)
        self.dispatch.drop_pending(state)
        log.info("gateway: robot %s under %s control from step %d", state.robot_id, msg.mode, msg.step)

    def _on_obs(self, ident: bytes, state: RobotState, msg: P.Obs) -> None:
        task = state.task
        if state.control == "human":
            why = "an operator has control: hand back first"
            self._refuse(ident, "human_control", why, state.robot_id, msg.step)
            return
        entering = msg.episode_id != state.episode_id
        if not self.intake.enter_episode(ident, state, msg.episode_id, msg.step):
            return
        # the episode's version, evaluation or canary side: decided once, when it becomes current
        if entering:
            asm = state.assemblies[msg.episode_id]
            asm.assignment = self.dispatch.rollouts[task.name].assign(state.robot_id, msg.step)
        if msg.step < state.last_step:  # the same step again is a retry whose reply was lost
            why = f"step {msg.step} after step {state.last_step}"
            self._refuse(ident, "out_of_order", why, state.robot_id, msg.step)
            return
        try:
            sent, msg.observation = (
                msg.observation,
                P.decode_observation(task.observation_spec, msg.observation),
            )
            if msg.human_action is not None:
                task.action_spec.check("human_action", msg.human_action)
            check_pending(msg.pending, task.action_spec, task.chunk_len)
        except P.ProtocolError as exc:
            self._refuse(ident, exc.code, exc.message, state.robot_id, msg.step)
            return
        state.last_step = msg.step
        for key in task.camera_keys:  # kept as sent (compressed or not) for the console's thumbnail
            state.camera[key] = (sent[key], time.time())
        if msg.last_latency_ms is not None and 0 <= msg.last_latency_ms < 3.6e6:  # a sane measurement only
            state.latency_ms.append(msg.last_latency_ms)
            self.metrics.observe("e2e_latency_seconds", (task.name,), msg.last_latency_ms / 1e3)
        self.metrics.inc("observations_total", (task.name,))
        self._submit(task, state.robot_id, ident, msg)

    def _submit(self, task: TaskConfig, robot_id: str, ident: bytes, msg: P.Obs) -> None:
        """Route one accepted observation to a replica (a subclass may route differently, e.g. for a baseline)."""
        self.dispatch.submit(task, robot_id, ident, msg)

    # -- leases, stats, metrics ----------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.cfg.lease_timeout_s / 4))
            now = time.monotonic()
            for state in self.robots.values():
                if state.online and now - state.last_seen > self.cfg.lease_timeout_s:
                    self._go_offline(state)
                    log.info("gateway: robot %s offline (lease expired)", state.robot_id)
                elif state.offline_since is not None and now - state.offline_since > self.cfg.resume_window_s:
                    why = f"silent past the lease and the {self.cfg.resume_window_s:g} s resume window"
                    self.intake.end_session(state, why)

    def _go_offline(self, state: RobotState) -> None:
        """The session ends; the robot's open episodes wait ``resume_window_s`` for it to come back."""
        state.online = False
        if state.ident is not None:
            self.by_ident.pop(state.ident, None)
            state.ident = None
        if state.assemblies or state.episode_id is not None:
            state.offline_since = time.monotonic()
        self.dispatch.drop_pending(state)

    def _forget(self, robot_id: str) -> bool:
        """End a robot's session and forget it (deleted, or its task was); False if it was not known."""
        state = self.robots.pop(robot_id, None)
        if state is None:
            return False
        self._go_offline(state)
        self.intake.end_session(state, "the robot or its task was deleted")
        log.info("gateway: robot %s forgotten", robot_id)
        return True

    async def _stats(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "endpoint": self.endpoint,
            "robots": [{**s.row(), "gateway": self.index} for s in self.robots.values()],
            "refused": dict(self.refused),
            "zap_denied": self.auth.denied if self.auth is not None else 0,  # connections refused (CURVE)
            "episodes_committed": self.intake.episodes_committed,
            "rollouts": {task: r.summary() for task, r in self.dispatch.rollouts.items()},
            "pools": {
                p: {
                    "queue_depth": self.scheduler.queue_depth(p),
                    "idle": len(self.scheduler.idle_replicas(p)),
                    "busy": len(self.scheduler.busy_replicas(p)),
                }
                for p in self.scheduler.pools()
            },
        }

    async def _flush_loop(self) -> None:
        last_publish = 0.0
        while True:
            await asyncio.sleep(self.cfg.metrics_flush_s)
            for pool in self.scheduler.pools():
                self.metrics.set("queue_depth", (pool,), self.scheduler.queue_depth(pool))
                avail = len(self.scheduler.idle_replicas(pool)) + len(self.scheduler.busy_replicas(pool))
                self.metrics.set("replicas_available", (pool,), avail)
            for task in self.dispatch.tasks:
                online = sum(1 for s in self.robots.values() if s.online and s.task.name == task)
                self.metrics.set("robots_online", (task,), online)
            events, gauges = self.metrics.drain()
            try:
                self.metrics_server.ingest.remote(events, gauges, self.name)  # gauges: summed over gateways
                if time.monotonic() - last_publish > 1.0:
                    last_publish = time.monotonic()
                    self.metrics_server.publish.remote(self.name, await self._stats())
            except Exception:  # noqa: BLE001 - metrics are best effort
                log.warning("gateway: metrics server unreachable")


def gateway_actor(cls: type[Gateway] = Gateway) -> Any:
    """``cls`` as a Ray actor class: ``inline_call`` gets a thread of its own, since the weight board calls it
    (a hold) while a rollback method waits for that hold (Ray runs the other methods one at a time)."""
    return ray.remote(concurrency_groups={"inline": 1})(cls)


def start_gateways(
    config: GatewayConfig, tasks, replicas, registry, metrics, data=None, weights=None, curve_keys=None,
    inline_copy: CopyFactory | None = None,
) -> list[Any]:  # fmt: skip
    """The platform's ``config.replicas`` gateway actors; several are spread over the nodes (Ray's SPREAD,
    within the nodes that offer ``config.resources``). ``inline_copy``: see ``Gateway``."""
    options = config.ray_options("gateway")
    if config.replicas > 1:
        options["scheduling_strategy"] = "SPREAD"
    return [
        gateway_actor()
        .options(**options)
        .remote(config, tasks, replicas, registry, metrics, data, weights, curve_keys, index, inline_copy)
        for index in range(config.replicas)
    ]
