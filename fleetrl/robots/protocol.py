"""Wire protocol between robots and the gateway: msgpack frames, numpy arrays as an extension type.

This module is shared by the robot SDK and the gateway, and must import with numpy and msgpack only
(a robot PC has neither Ray nor torch). Nothing here unpickles: every frame is plain msgpack, arrays
carry an allow-listed dtype, a bounded shape and raw bytes that are decoded zero-copy.

A message is a dataclass; ``encode(msg)`` turns it into one frame and ``decode(frame)`` validates a frame
(size, version, kind, field types, array sizes) and returns the dataclass or raises ``ProtocolError``
with a code that the gateway sends back in an ``error`` reply.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
ARRAY_EXT = 1
ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "bool"}
)
OUTCOMES = ("success", "failure", "timeout", "aborted")
LABELLERS = ("robot", "critic", "human", "gateway")
CONTROL_MODES = ("autonomous", "human")
EPISODE_SOURCES = ("online", "offline")
MAX_META_KEYS = 32


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


@dataclass(frozen=True)
class Limits:
    """Size limits applied while decoding; the gateway also refuses frames over ``max_frame_bytes``."""

    max_frame_bytes: int = 4 * 1024 * 1024
    max_ndim: int = 6
    max_str_len: int = 4096
    max_keys: int = 64


DEFAULT_LIMITS = Limits()


class ProtocolError(ValueError):
    """A frame that cannot be accepted; ``code`` is what goes back in the ``error`` reply."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------------
# Array specs: what a task's observations and actions look like.


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one array; optional bounds (used for actions)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ALLOWED_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not allowed; use one of {sorted(ALLOWED_DTYPES)}")
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise ValueError(f"shape {self.shape!r} must be non-negative integers")

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype}
        if self.low is not None:
            out["low"] = self.low
        if self.high is not None:
            out["high"] = self.high
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArraySpec:
        if not isinstance(d, dict) or "shape" not in d:
            raise ValueError(f"array spec must be a mapping with 'shape', got {d!r}")
        unknown = set(d) - {"shape", "dtype", "low", "high"}
        if unknown:
            raise ValueError(f"unknown array-spec keys {sorted(unknown)}; allowed: shape, dtype, low, high")
        shape = d["shape"]
        if not isinstance(shape, list | tuple) or not all(type(x) is int for x in shape):
            raise ValueError(f"shape must be a list of integers, got {shape!r}")
        return cls(tuple(shape), str(d.get("dtype", "float32")), d.get("low"), d.get("high"))

    def check(self, name: str, arr: Any) -> None:
        """Raise ProtocolError('bad_observation') if ``arr`` does not match this spec."""
        if not isinstance(arr, np.ndarray):
            raise ProtocolError("bad_observation", f"{name}: expected an array, got {type(arr).__name__}")
        if tuple(arr.shape) != self.shape or arr.dtype.name != self.dtype:
            raise ProtocolError(
                "bad_observation",
                f"{name}: expected shape {list(self.shape)} {self.dtype}, got {list(arr.shape)} {arr.dtype.name}",
            )
        check_finite(name, arr)


def check_finite(name: str, arr: np.ndarray, allow_nan: bool = False) -> None:
    """Raise ProtocolError('bad_observation') if a float array holds inf (or NaN, unless ``allow_nan``).

    Why here: one non-finite observation batched with other robots' would fail the whole forward pass
    (every robot in the batch refused), and a non-finite stored value poisons every update it is sampled in.
    """
    if arr.dtype.kind != "f":
        return
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        raise ProtocolError("bad_observation", f"{name}: {int(bad.sum())} non-finite values (NaN or inf)")


def check_observation(specs: dict[str, ArraySpec], observation: dict, name: str = "observation") -> None:
    """Raise ProtocolError('bad_observation') unless ``observation`` has exactly the spec's keys and arrays."""
    if set(observation) != set(specs):
        raise ProtocolError(
            "bad_observation", f"{name} keys {sorted(observation)}, task needs {sorted(specs)}"
        )
    for key, spec in specs.items():
        spec.check(f"{name}[{key!r}]", observation[key])


def specs_to_dict(specs: dict[str, ArraySpec]) -> dict[str, dict[str, Any]]:
    return {k: v.to_dict() for k, v in specs.items()}


def specs_from_dict(d: dict[str, Any]) -> dict[str, ArraySpec]:
    if not isinstance(d, dict) or not d:
        raise ValueError("observation spec must be a non-empty mapping of name -> {shape, dtype}")
    return {str(k): ArraySpec.from_dict(v) for k, v in d.items()}


# ---------------------------------------------------------------------------------------------------
# Array codec.


def _ext_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in ALLOWED_DTYPES:
            raise TypeError(f"array dtype {obj.dtype.name} cannot go on the wire")
        # Little-endian, C order, on the wire. Not np.ascontiguousarray: it turns a 0-d array into 1-d.
        arr = obj.astype(obj.dtype.newbyteorder("<"), order="C", copy=False)
        header = msgpack.packb([arr.dtype.name, list(arr.shape)])
        return msgpack.ExtType(ARRAY_EXT, header + arr.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _make_ext_hook(limits: Limits):
    def ext_hook(code: int, data: bytes) -> Any:
        if code != ARRAY_EXT:
            raise ProtocolError("bad_frame", f"unknown extension type {code}")
        unpacker = msgpack.Unpacker(
            max_buffer_size=len(data), max_str_len=64, max_array_len=limits.max_ndim + 1
        )
        unpacker.feed(data)
        try:
            dtype, shape = unpacker.unpack()
        except Exception as exc:  # noqa: BLE001 - any failure here is a malformed array header
            raise ProtocolError("bad_frame", f"malformed array header: {exc}") from None
        if dtype not in ALLOWED_DTYPES:
            raise ProtocolError("bad_frame", f"array dtype {dtype!r} not allowed")
        if (
            not isinstance(shape, list)
            or len(shape) > limits.max_ndim
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise ProtocolError("bad_frame", f"bad array shape {shape!r}")
        offset = unpacker.tell()
        expected = math.prod(shape) * np.dtype(dtype).itemsize
        if len(data) - offset != expected:
            raise ProtocolError(
                "bad_frame", f"array payload has {len(data) - offset} bytes, shape needs {expected}"
            )
        # Zero-copy: the array is a read-only view on the frame's bytes.
        return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), offset=offset).reshape(shape)

    return ext_hook


_EXT_HOOKS: dict[Limits, Any] = {}


def pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, default=_ext_default, use_bin_type=True)


def unpack(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    if len(frame) > limits.max_frame_bytes:
        raise ProtocolError(
            "frame_too_large", f"frame of {len(frame)} bytes exceeds {limits.max_frame_bytes}"
        )
    hook = _EXT_HOOKS.get(limits)
    if hook is None:
        hook = _EXT_HOOKS.setdefault(limits, _make_ext_hook(limits))
    try:
        return msgpack.unpackb(
            frame,
            ext_hook=hook,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_str_len,
            max_map_len=limits.max_keys,
            max_array_len=1 << 16,
            max_bin_len=limits.max_frame_bytes,
            max_ext_len=limits.max_frame_bytes,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types for malformed input
        raise ProtocolError("bad_frame", f"not a valid msgpack frame: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# Messages. Field annotations double as the wire schema checked by ``decode``.

_FLOAT = (int, float)


@dataclass
class Message:
    KIND: ClassVar[str] = ""
    robot_id: str

    def to_wire(self) -> dict[str, Any]:
        out = {"v": PROTOCOL_VERSION, "kind": self.KIND}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        return out


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
    """

    KIND: ClassVar[str] = "obs"
    episode_id: str = ""
    step: int = 0
    t_robot: float = 0.0
    observation: dict = field(default_factory=dict)
    human_action: np.ndarray | None = None
    last_latency_ms: float | None = None


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
    names = {name for name, _, _ in schema}
    extra = set(obj) - names
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
