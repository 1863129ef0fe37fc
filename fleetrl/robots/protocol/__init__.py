"""Wire protocol between robots and the gateway: msgpack frames, numpy arrays as an extension type.

Shared by the robot SDK and the gateway, so it must import with numpy and msgpack only (a robot PC has
neither Ray nor torch). Nothing here unpickles. The parts: ``codec`` (framing, the array extension type,
decoding limits), ``specs`` (what observations and actions look like), ``messages`` (the message kinds and
the validating ``encode``/``decode``), ``errors`` (``ProtocolError``, whose code goes back to the sender).
Callers use the package as one namespace: ``from fleetrl.robots import protocol as P``.
"""

from fleetrl.robots.protocol.codec import ALLOWED_DTYPES, ARRAY_EXT, DEFAULT_LIMITS, Limits, pack, unpack
from fleetrl.robots.protocol.errors import ProtocolError
from fleetrl.robots.protocol.messages import (
    CONTROL_MODES,
    EPISODE_REFUSALS,
    EPISODE_SOURCES,
    ERROR_CODES,
    LABELLERS,
    MAX_META_KEYS,
    MESSAGE_TYPES,
    OUTCOMES,
    PROTOCOL_VERSION,
    Ack,
    Action,
    Control,
    EpisodeEnd,
    Error,
    Hello,
    Message,
    Obs,
    Ping,
    Pong,
    Reset,
    Steps,
    Welcome,
    check_meta,
    decode,
    encode,
)
from fleetrl.robots.protocol.specs import (
    ArraySpec,
    check_finite,
    check_observation,
    specs_from_dict,
    specs_to_dict,
)

__all__ = [
    "ALLOWED_DTYPES",
    "ARRAY_EXT",
    "CONTROL_MODES",
    "DEFAULT_LIMITS",
    "EPISODE_REFUSALS",
    "EPISODE_SOURCES",
    "ERROR_CODES",
    "LABELLERS",
    "MAX_META_KEYS",
    "MESSAGE_TYPES",
    "OUTCOMES",
    "PROTOCOL_VERSION",
    "Ack",
    "Action",
    "ArraySpec",
    "Control",
    "EpisodeEnd",
    "Error",
    "Hello",
    "Limits",
    "Message",
    "Obs",
    "Ping",
    "Pong",
    "ProtocolError",
    "Reset",
    "Steps",
    "Welcome",
    "check_finite",
    "check_meta",
    "check_observation",
    "decode",
    "encode",
    "pack",
    "specs_from_dict",
    "specs_to_dict",
    "unpack",
]
