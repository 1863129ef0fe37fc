"""The message kinds robots and the gateway exchange, and the validating ``encode``/``decode`` of a frame.

A message is a dataclass whose field annotations double as the wire schema: ``encode(msg)`` turns it into
one frame and ``decode(frame)`` validates a frame (size, version, kind, field types, array sizes) and
returns the dataclass or raises ``ProtocolError`` with a code that the gateway sends back in an ``error``
reply.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fleetrl.robots.protocol.codec import DEFAULT_LIMITS, Limits, pack, unpack
from fleetrl.robots.protocol.errors import ProtocolError

PROTOCOL_VERSION = 1
OUTCOMES = ("success", "failure", "timeout", "aborted")
LABELLERS = ("robot", "critic", "human", "gateway")
CONTROL_MODES = ("autonomous", "human")
EPISODE_SOURCES = ("online", "offline")
MAX_META_KEYS = 32
# Every ``error`` code the gateway sends, and what it means to the robot (docs/protocol.md has the table).
ERROR_CODES: dict[str, str] = {
    "bad_frame": "not one msgpack map frame of the protocol (framing, array payload)",
    "frame_too_large": "a frame over the gateway's max_frame_bytes",
    "version_mismatch": "the frame's protocol version is not this gateway's",
    "bad_message": "a field breaks a rule the message states (ids, outcome, meta, columns, ...)",
    "bad_observation": "an array does not match the task's observation or action spec",
    "unknown_session": "no session for this connection: send hello",
    "unauthorized": "unknown robot id, wrong token or key, or a task not served here",
    "rate_limited": "too many hello attempts from this peer or in all: wait and say hello again",
    "unavailable": "a platform component is restarting: retry",
    "overloaded": "too many open episodes or queued requests",
    "out_of_order": "rows or an observation arrived out of order; ``step`` is the first one needed",
    "incomplete_episode": "episode_end before all its rows; ``step`` is the first one needed",
    "human_control": "an operator has control: no chunk until hand-back",
    "inference_failed": "the replica failed on this observation: ask again",
    "internal": "the gateway failed on this frame",
    # The episode (``episode_id``) is refused for good: the robot stops sending it and drops its copy.
    "episode_cut": "the robot was silent past the lease and the resume window; its rows are stored as aborted",
    "episode_too_long": "the episode passed the gateway's max_episode_steps or max_episode_bytes",
    "episode_conflict": "another episode is stored under this robot's episode id: use a new id",
    "episode_unstorable": "the data server refused the episode (the message says why)",
}
EPISODE_REFUSALS = ("episode_cut", "episode_too_long", "episode_conflict", "episode_unstorable")


def check_meta(meta: dict) -> None:
    """An episode's robot-side metadata: at most ``MAX_META_KEYS`` string keys with scalar values (or
    short lists of scalars), so it stays a few hundred bytes in the catalog."""
    if len(meta) > MAX_META_KEYS:
        raise ProtocolError("bad_message", f"meta: at most {MAX_META_KEYS} keys, got {len(meta)}")
    scalar = (str, int, float, bool, type(None))
    for key, value in meta.items():
        ok = isinstance(value, scalar) or (
            isinstance(value, list) and len(value) <= 64 and all(isinstance(v, scalar) for v in value)
        )
        if not isinstance(key, str) or not ok or (isinstance(value, str) and len(value) > 256):
            raise ProtocolError("bad_message", f"meta.{key}: only short scalars or lists of scalars")


_FLOAT = (int, float)


@dataclass
class Message:
    """What every message carries; a subclass's ``KIND`` names it on the wire."""

    KIND: ClassVar[str] = ""
    robot_id: str

    def to_wire(self) -> dict[str, Any]:
        out = {"v": PROTOCOL_VERSION, "kind": self.KIND}
        out.update({name: getattr(self, name) for name in _field_names(type(self))})
        return out


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    """A message class's field names (``dataclasses.fields`` walks the class each call: hot on every frame)."""
    return tuple(f.name for f in dataclasses.fields(cls))


@dataclass
class Hello(Message):
    """Robot → gateway: authenticate this connection (sent again after any ``unknown_session`` error)."""

    KIND: ClassVar[str] = "hello"
    token: str = ""


@dataclass
class Welcome(Message):
    """Gateway → robot: the session is bound; what to send and what comes back."""

    KIND: ClassVar[str] = "welcome"
    task: str = ""
    observation_spec: dict = field(default_factory=dict)
    action_spec: dict = field(default_factory=dict)
    chunk_len: int = 1
    policy_version: int = 0
    heartbeat_s: float = 1.0


@dataclass
class Obs(Message):
    """Robot → gateway: an observation that asks for the next action chunk.

    ``t_robot`` is the robot's monotonic clock when the observation was taken; ``last_latency_ms`` is the
    robot-measured round trip of its previous request (observation sent → action received).
    ``human_action`` is the action an operator executed at this step, when one is intervening.
    ``pending`` [k, *action_shape] are the actions the robot will still execute before the reply's chunk
    starts (the tail of its current chunk; ``fleetrl.robots.pending``), None when there are none.
    """

    KIND: ClassVar[str] = "obs"
    episode_id: str = ""
    step: int = 0
    t_robot: float = 0.0
    observation: dict = field(default_factory=dict)
    human_action: np.ndarray | None = None
    last_latency_ms: float | None = None
    pending: np.ndarray | None = None


@dataclass
class Action(Message):
    """Gateway → robot: an action chunk [chunk_len, action_dim] for the observation at ``step``."""

    KIND: ClassVar[str] = "action"
    episode_id: str = ""
    step: int = 0
    actions: np.ndarray | None = None
    log_prob: float = 0.0
    policy_version: int = 0
    replica: str = ""
    timings: dict = field(default_factory=dict)


@dataclass
class Steps(Message):
    """Robot → gateway: executed steps ``first_step .. first_step + n - 1`` of an episode, columnar.

    ``observations[key]`` is [n, *shape] (the observation before each action), ``actions`` [n, *action]
    (what was executed: the human's action where ``columns['intervention']`` is set), ``columns`` holds
    the per-step columns of ``fleetrl.robots.episode.STEP_COLUMNS``. Sent as the episode goes, so an
    episode is assembled incrementally; steps are re-sent from the point the gateway asks for.
    """

    KIND: ClassVar[str] = "steps"
    episode_id: str = ""
    first_step: int = 0
    observations: dict = field(default_factory=dict)
    actions: np.ndarray | None = None
    columns: dict = field(default_factory=dict)


@dataclass
class EpisodeEnd(Message):
    """Robot → gateway: the episode is over after ``steps`` steps; re-sent until ``ack``."""

    KIND: ClassVar[str] = "episode_end"
    episode_id: str = ""
    outcome: str = "aborted"
    labelled_by: str = "robot"
    steps: int = 0
    total_reward: float = 0.0
    final_observation: dict = field(default_factory=dict)
    terminated: bool = False
    truncated: bool = False
    # "online" (the robot working) or "offline" (a demonstration recorded through the SDK: the task's demo
    # buffer); ``meta`` carries what the robot knows of the episode (reset seed, the state it was reset
    # to, the operator), small JSON-like values only.
    source: str = "online"
    meta: dict = field(default_factory=dict)


@dataclass
class Control(Message):
    """Robot → gateway: who controls the robot from ``step`` of ``episode_id`` on. ``human``: an operator
    took over; the gateway drops the robot's queued observations and sends it no action chunk until it
    hands back. ``autonomous``: handed back; nothing computed from an observation before ``step`` is sent."""

    KIND: ClassVar[str] = "control"
    episode_id: str = ""
    step: int = 0
    mode: str = "autonomous"
    operator: str = ""


@dataclass
class Reset(Message):
    """Gateway → robot: end the current episode and start the next one from a given state (VLAC's
    return-and-explore). ``state`` names a state the robot knows (e.g. ``initial``) or is ``recorded``:
    then ``episode_id``/``step`` say where it was recorded, and ``seed`` plus ``actions`` (the executed
    actions before ``step``) let a simulator replay its way there; a real robot passes the request to its
    operator."""

    KIND: ClassVar[str] = "reset"
    state: str = "initial"
    episode_id: str | None = None
    step: int | None = None
    seed: int | None = None
    actions: np.ndarray | None = None
    request_id: str = ""


@dataclass
class Ack(Message):
    KIND: ClassVar[str] = "ack"
    episode_id: str = ""


@dataclass
class Ping(Message):
    """Robot → gateway heartbeat when no other traffic keeps the lease alive."""

    KIND: ClassVar[str] = "ping"


@dataclass
class Pong(Message):
    KIND: ClassVar[str] = "pong"


@dataclass
class Error(Message):
    """Either direction: a refused frame. ``step`` points at the refused observation or, for
    ``out_of_order`` steps and ``incomplete_episode``, at the first step the gateway still needs."""

    KIND: ClassVar[str] = "error"
    code: str = "internal"
    message: str = ""
    step: int | None = None
    episode_id: str | None = None


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (Hello, Welcome, Obs, Action, Steps, EpisodeEnd, Control, Reset, Ack, Ping, Pong, Error)
}

# Accepted Python types per annotation string (annotations are strings under ``from __future__``).
_TYPE_CHECKS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": _FLOAT,
    "dict": (dict,),
    "np.ndarray | None": (np.ndarray, type(None)),
    "float | None": (int, float, type(None)),
    "int | None": (int, type(None)),
    "str | None": (str, type(None)),
}
_SCHEMAS: dict[str, list[tuple[str, tuple[type, ...], bool]]] = {}
for _kind, _cls in MESSAGE_TYPES.items():
    _SCHEMAS[_kind] = [
        (
            f.name,
            _TYPE_CHECKS[f.type],
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(_cls)
    ]
_SCHEMA_NAMES = {kind: frozenset(name for name, _, _ in schema) for kind, schema in _SCHEMAS.items()}


def encode(msg: Message) -> bytes:
    return pack(msg.to_wire())


def decode(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate one frame and return its message; raise ``ProtocolError`` with a reply code otherwise."""
    obj = unpack(frame, limits)
    if not isinstance(obj, dict):
        raise ProtocolError("bad_frame", "a frame must be a msgpack map")
    version = obj.pop("v", None)
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "version_mismatch", f"protocol version {version!r}, this side speaks {PROTOCOL_VERSION}"
        )
    kind = obj.pop("kind", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("bad_message", f"unknown message kind {kind!r}; known: {sorted(MESSAGE_TYPES)}")
    schema = _SCHEMAS[kind]
    extra = obj.keys() - _SCHEMA_NAMES[kind]
    if extra:
        raise ProtocolError("bad_message", f"{kind}: unknown fields {sorted(map(str, extra))}")
    for name, types, required in schema:
        if name not in obj:
            if required:
                raise ProtocolError("bad_message", f"{kind}: missing field {name!r}")
            continue
        value = obj[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ProtocolError("bad_message", f"{kind}.{name}: wrong type {type(value).__name__}")
    return cls(**obj)
