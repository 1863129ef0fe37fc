"""Camera frames on the wire: compressed per frame as their observation spec says (``encoding``).

Why: one 224x224 RGB frame is 147 KiB raw and about 5-17 KiB as JPEG at quality 90 (rendered MuJoCo
frames), so a robot with three cameras at 10 Hz sends ~4.4 MiB/s raw and ~0.2-0.5 MiB/s compressed, and
a step upload of many rows stays under the gateway's frame limit. The robot SDK compresses a key whose
spec declares ``encoding: jpeg`` or ``png``; the gateway decodes each frame once and checks the decoded
shape and dtype against the spec.

Codecs, measured here on rendered 224x224 frames (encode / decode, ms): simplejpeg 0.24-0.28 / 0.18-0.37,
Pillow JPEG 0.23-0.38 / 0.44-0.59, OpenCV JPEG 0.44-0.52 / 0.18-0.27, PNG (Pillow, level 1) 1.5-2.0 /
0.7-0.8. JPEG goes through ``simplejpeg`` (libjpeg-turbo, a 0.4 MB wheel: fastest to encode, no OpenCV's
64 MB); PNG, lossless for frames that must stay exact, through Pillow. Both are imported only when a frame
is encoded or decoded, so this module imports with numpy alone like the rest of the protocol.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fleetrl.robots.protocol.errors import ProtocolError


class FrameSpec(Protocol):
    """What this module reads of ``specs.ArraySpec`` (which imports this module, so not imported here)."""

    shape: tuple[int, ...]
    dtype: str
    encoding: str
    quality: int

    @property
    def size(self) -> int: ...


ENCODINGS = ("raw", "jpeg", "png")
IMAGE_CHANNELS = (1, 3)  # grey or RGB


@dataclass(frozen=True)
class EncodedFrame:
    """One compressed camera frame (``encoding`` jpeg or png) as it travels between robot and gateway."""

    encoding: str
    data: bytes

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS[1:]:
            raise ValueError(f"frame encoding must be one of {ENCODINGS[1:]}, got {self.encoding!r}")

    @property
    def nbytes(self) -> int:
        return len(self.data)


def is_camera(shape: tuple[int, ...], dtype: str) -> bool:
    """A uint8 [H, W] or [H, W, C] (C 1 or 3) entry: a camera frame, whatever encoding it travels in."""
    three = len(shape) == 3 and shape[2] in IMAGE_CHANNELS
    return dtype == "uint8" and (len(shape) == 2 or three) and 0 not in shape


def image_spec_problem(shape: tuple[int, ...], dtype: str, encoding: str, quality: int) -> str | None:
    """Why an array spec cannot carry ``encoding`` (None if it can): compressed keys are uint8 images of
    shape [H, W] or [H, W, C] with C in {1, 3}."""
    if encoding not in ENCODINGS:
        return f"encoding must be one of {list(ENCODINGS)}, got {encoding!r}"
    if encoding == "raw":
        return None
    if dtype != "uint8":
        return f"encoding {encoding!r} needs dtype uint8 (a camera frame), got {dtype}"
    if not is_camera(shape, dtype):
        return f"encoding {encoding!r} needs shape [H, W] or [H, W, C] with C in {list(IMAGE_CHANNELS)}, got {list(shape)}"
    if not 1 <= quality <= 100:
        return f"quality must be in 1..100, got {quality}"
    return None


def encode_frame(arr: np.ndarray, encoding: str, quality: int = 90) -> EncodedFrame:
    """Compress one uint8 frame [H, W] or [H, W, C] (robot side)."""
    arr = np.ascontiguousarray(arr)
    if encoding == "jpeg":
        import simplejpeg

        img = arr if arr.ndim == 3 else arr[:, :, None]
        colorspace = "GRAY" if img.shape[2] == 1 else "RGB"
        sub = "Gray" if colorspace == "GRAY" else "420"
        data = simplejpeg.encode_jpeg(img, quality=quality, colorspace=colorspace, colorsubsampling=sub)
        return EncodedFrame("jpeg", data)
    if encoding == "png":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr if arr.ndim == 2 or arr.shape[2] == 3 else arr[:, :, 0]).save(
            buf, "PNG", compress_level=1
        )
        return EncodedFrame("png", buf.getvalue())
    raise ValueError(f"cannot compress to {encoding!r}")


def decode_frame(frame: EncodedFrame, spec: FrameSpec, name: str) -> np.ndarray:
    """The frame as an array of ``spec``'s shape; ``ProtocolError('bad_observation')`` when its data are
    not a valid image of that encoding or decode to another shape (gateway side)."""
    if frame.encoding != spec.encoding:
        raise ProtocolError(
            "bad_observation", f"{name}: a {frame.encoding} frame, the spec says {spec.encoding}"
        )
    try:
        arr = _decode(frame, spec.shape)
    except Exception as exc:  # noqa: BLE001 - the codecs raise several types for corrupt data
        raise ProtocolError(
            "bad_observation", f"{name}: not a valid {frame.encoding} image ({exc})"
        ) from None
    if arr.shape != spec.shape:
        raise ProtocolError(
            "bad_observation", f"{name}: decoded to shape {list(arr.shape)}, the spec says {list(spec.shape)}"
        )
    return arr


def _decode(frame: EncodedFrame, shape: tuple[int, ...]) -> np.ndarray:
    grey = len(shape) == 2 or shape[2] == 1
    if frame.encoding == "jpeg":
        import simplejpeg

        arr = simplejpeg.decode_jpeg(frame.data, colorspace="GRAY" if grey else "RGB")
    else:
        from PIL import Image

        with Image.open(io.BytesIO(frame.data)) as img:
            if img.format != "PNG":
                raise ValueError(f"{img.format} data")
            arr = np.asarray(img.convert("L" if grey else "RGB"))
    if len(shape) == 2 and arr.ndim == 3:
        arr = arr[:, :, 0]
    elif len(shape) == 3 and arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def encode_observation(specs: dict[str, FrameSpec], observation: dict[str, Any]) -> dict[str, Any]:
    """``observation`` with every key whose spec declares an encoding compressed (robot side)."""
    out = dict(observation)
    for key, spec in specs.items():
        if spec.encoding != "raw" and isinstance(out.get(key), np.ndarray):
            out[key] = encode_frame(out[key], spec.encoding, spec.quality)
    return out


def decode_value(spec: FrameSpec, value: Any, name: str) -> Any:
    """One observation entry as an array: decoded when it is a compressed frame, as given otherwise."""
    if isinstance(value, EncodedFrame):
        if spec.encoding == "raw":
            raise ProtocolError("bad_observation", f"{name}: a compressed frame for a key declared raw")
        return decode_frame(value, spec, name)
    return value


def decode_rows(spec: FrameSpec, value: Any, n: int, name: str) -> Any:
    """Rows of one observation key in a ``steps`` frame as one array [n, *shape]: a list of ``n``
    compressed frames is decoded and stacked; an array is returned as given (checked by the caller)."""
    if not isinstance(value, list):
        return value
    if len(value) != n or not all(isinstance(f, EncodedFrame) for f in value):
        raise ProtocolError("bad_observation", f"{name}: expected {n} compressed frames")
    if spec.encoding == "raw":
        raise ProtocolError("bad_observation", f"{name}: compressed frames for a key declared raw")
    return np.stack([decode_frame(f, spec, f"{name}[{i}]") for i, f in enumerate(value)])


def row_bytes_bound(specs: dict[str, FrameSpec]) -> int:
    """The most bytes one observation row can take on the wire: its raw size (a frame that does not
    compress, e.g. sensor noise, may come out as large as raw). What decides at registration whether a
    task's observations can ever fit a frame."""
    return sum(spec.size * np.dtype(spec.dtype).itemsize for spec in specs.values())
