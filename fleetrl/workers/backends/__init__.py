"""Inference backends: one interface, chosen per pool in config. vLLM (later) imports lazily."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class InferenceBackend(Protocol):
    """Runs a batched forward pass of one task's policy."""

    version: int

    def infer(
        self, batch: dict[str, np.ndarray], pins: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return action chunks [B, H, *action_shape], the log-prob of each sampled chunk [B] and the
        weight version of each row [B]; ``pins[i]`` asks for a kept older version (-1: the newest)."""
        ...

    def load_weights(self, state_dict: dict, version: int) -> None: ...


def build_backend(name: str, **kwargs) -> InferenceBackend:
    if name == "torch":
        from fleetrl.workers.backends.torch_backend import TorchBackend

        return TorchBackend(**kwargs)
    raise ValueError(f"unknown inference backend {name!r}; available: torch")
