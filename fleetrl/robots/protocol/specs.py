"""Array specs: what a task's observations and actions look like, and the checks of arrays against them.

A task declares its specs once (REST registration, the ``welcome`` reply, the models' input shapes); the
gateway checks every observation against them before it is batched with other robots'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from fleetrl.robots.protocol.codec import ALLOWED_DTYPES
from fleetrl.robots.protocol.errors import ProtocolError
from fleetrl.robots.protocol.images import decode_value, image_spec_problem


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one array; optional bounds (used for actions); for a camera frame (uint8
    [H, W] or [H, W, C]) the ``encoding`` it travels in (``raw``, ``jpeg`` or ``png``; ``images.py``) and
    the JPEG ``quality``."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None
    encoding: str = "raw"
    quality: int = 90

    def __post_init__(self) -> None:
        if self.dtype not in ALLOWED_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not allowed; use one of {sorted(ALLOWED_DTYPES)}")
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise ValueError(f"shape {self.shape!r} must be non-negative integers")
        problem = image_spec_problem(self.shape, self.dtype, self.encoding, self.quality)
        if problem:
            raise ValueError(problem)

    @cached_property
    def np_dtype(self) -> np.dtype:
        """``dtype`` as numpy's (compared per observation: numpy builds ``dtype.name`` in Python each time)."""
        return np.dtype(self.dtype)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype}
        if self.low is not None:
            out["low"] = self.low
        if self.high is not None:
            out["high"] = self.high
        if self.encoding != "raw":
            out["encoding"], out["quality"] = self.encoding, self.quality
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArraySpec:
        if not isinstance(d, dict) or "shape" not in d:
            raise ValueError(f"array spec must be a mapping with 'shape', got {d!r}")
        unknown = set(d) - {"shape", "dtype", "low", "high", "encoding", "quality"}
        if unknown:
            raise ValueError(
                f"unknown array-spec keys {sorted(unknown)}; allowed: shape, dtype, low, high, encoding, quality"
            )
        shape = d["shape"]
        if not isinstance(shape, list | tuple) or not all(type(x) is int for x in shape):
            raise ValueError(f"shape must be a list of integers, got {shape!r}")
        quality = d.get("quality", 90)
        if type(quality) is not int:
            raise ValueError(f"quality must be an integer, got {quality!r}")
        return cls(
            tuple(shape),
            str(d.get("dtype", "float32")),
            d.get("low"),
            d.get("high"),
            str(d.get("encoding", "raw")),
            quality,
        )

    def clip(self, action: np.ndarray) -> np.ndarray:
        """``action`` within the bounds (what a robot executes); unchanged when there are none."""
        if self.low is None and self.high is None:
            return action
        return np.clip(action, self.low, self.high)

    def check(self, name: str, arr: Any) -> None:
        """Raise ProtocolError('bad_observation') if ``arr`` does not match this spec."""
        if not isinstance(arr, np.ndarray):
            raise ProtocolError("bad_observation", f"{name}: expected an array, got {type(arr).__name__}")
        if arr.shape != self.shape or (arr.dtype != self.np_dtype and arr.dtype.name != self.dtype):
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


def decode_observation(
    specs: dict[str, ArraySpec], observation: dict, name: str = "observation"
) -> dict[str, np.ndarray]:
    """``observation`` as arrays, its compressed camera frames decoded, checked like ``check_observation``
    (a frame that does not decode, or decodes to another shape, is a ``bad_observation``)."""
    if set(observation) != set(specs):
        raise ProtocolError(
            "bad_observation", f"{name} keys {sorted(observation)}, task needs {sorted(specs)}"
        )
    out = {key: decode_value(spec, observation[key], f"{name}[{key!r}]") for key, spec in specs.items()}
    check_observation(specs, out, name)
    return out


def specs_to_dict(specs: dict[str, ArraySpec]) -> dict[str, dict[str, Any]]:
    return {k: v.to_dict() for k, v in specs.items()}


def specs_from_dict(d: dict[str, Any]) -> dict[str, ArraySpec]:
    if not isinstance(d, dict) or not d:
        raise ValueError("observation spec must be a non-empty mapping of name -> {shape, dtype}")
    return {str(k): ArraySpec.from_dict(v) for k, v in d.items()}
