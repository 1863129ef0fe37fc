"""Msgpack framing with numpy arrays as an extension type, and the size limits applied while decoding.

Nothing here unpickles: every frame is plain msgpack, arrays carry an allow-listed dtype, a bounded shape
and raw little-endian bytes that are decoded zero-copy. Messages are built on top (``messages``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from fleetrl.robots.protocol.errors import ProtocolError
from fleetrl.robots.protocol.images import EncodedFrame

ARRAY_EXT = 1
FRAME_EXT = 2  # a compressed camera frame (images.EncodedFrame): msgpack [encoding] + the codec's bytes
ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "bool"}
)


@dataclass(frozen=True)
class Limits:
    """Size limits applied while decoding; the gateway also refuses frames over ``max_frame_bytes``."""

    max_frame_bytes: int = 4 * 1024 * 1024
    max_ndim: int = 6
    max_str_len: int = 4096
    max_keys: int = 64


DEFAULT_LIMITS = Limits()


_WIRE_DTYPES: dict[np.dtype, tuple[str, np.dtype]] = {}  # dtype -> (name, little-endian dtype)


def _wire_dtype(dtype: np.dtype) -> tuple[str, np.dtype]:
    """An array dtype's wire name and little-endian form, looked up once per dtype (``dtype.name`` is
    computed in Python by numpy each time: a third of an observation frame's encoding)."""
    known = _WIRE_DTYPES.get(dtype)
    if known is None:
        if dtype.name not in ALLOWED_DTYPES:
            raise TypeError(f"array dtype {dtype.name} cannot go on the wire")
        known = _WIRE_DTYPES[dtype] = (dtype.name, dtype.newbyteorder("<"))
    return known


def _ext_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        name, little = _wire_dtype(obj.dtype)
        # Little-endian, C order, on the wire. Not np.ascontiguousarray: it turns a 0-d array into 1-d.
        arr = obj.astype(little, order="C", copy=False)
        header = msgpack.packb([name, list(arr.shape)])
        return msgpack.ExtType(ARRAY_EXT, header + arr.tobytes())
    if isinstance(obj, EncodedFrame):
        return msgpack.ExtType(FRAME_EXT, msgpack.packb([obj.encoding]) + obj.data)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _make_ext_hook(limits: Limits):
    def ext_hook(code: int, data: bytes) -> Any:
        if code == FRAME_EXT:
            return _frame(data)
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


def _frame(data: bytes) -> EncodedFrame:
    """A compressed frame's header and bytes (decoded later, against its key's spec)."""
    unpacker = msgpack.Unpacker(max_buffer_size=len(data), max_str_len=16, max_array_len=1)
    unpacker.feed(data)
    try:
        (encoding,) = unpacker.unpack()
        return EncodedFrame(encoding, bytes(data[unpacker.tell() :]))
    except Exception as exc:  # noqa: BLE001 - any failure here is a malformed frame header
        raise ProtocolError("bad_frame", f"malformed image frame header: {exc}") from None


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
