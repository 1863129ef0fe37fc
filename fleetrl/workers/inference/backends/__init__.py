"""Inference backends: one interface, chosen per pool in config (``inference.backend``). ``torch`` (fp32),
``torch-fast`` (bf16 autocast) and ``vllm`` (token policies on a GPU; the vllm package imports lazily)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class InferenceBackend(Protocol):
    """Runs a batched forward pass of one task's policy."""

    version: int

    def infer(
        self,
        batch: dict[str, np.ndarray],
        pins: np.ndarray | None = None,
        deterministic: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return action chunks [B, H, *action_shape], the log-prob of each sampled chunk [B] and the
        weight version of each row [B]; ``pins[i]`` asks for a kept older version (-1: the newest),
        ``deterministic[i]`` for the policy's mode instead of a sample."""
        ...

    def load_weights(self, state_dict: dict, version: int) -> None: ...

    def prepare(self, state_dict: dict, version: int) -> Any:
        """What ``install`` needs to serve ``version``, made without changing what is served (a replica
        calls it off its lock, while batches run)."""
        ...

    def install(self, prepared: Any) -> None:
        """Serve what ``prepare`` made (under the replica's lock, between batches)."""
        ...

    def hold(self, versions: dict[int, dict | None]) -> list[int]:
        """Keep serving these versions besides the newest (rollback, canary, evaluation)."""
        ...

    def kept_versions(self) -> list[int]:
        """The weight versions it can serve now."""
        ...


BACKENDS = ("torch", "torch-fast", "vllm")


def build_backend(name: str, **kwargs) -> InferenceBackend:
    if name in ("torch", "torch-fast"):
        from fleetrl.workers.inference.backends.torch_backend import TorchBackend

        fast = kwargs.pop("fast_numerics", "bf16")
        return TorchBackend(**kwargs, precision=fast if name == "torch-fast" else "fp32")
    if name == "vllm":
        from fleetrl.workers.inference.backends.vllm_backend import (
            VLLMBackend,  # needs the optional vllm extra
        )

        kwargs.pop("fast_numerics", None)
        return VLLMBackend(**kwargs)
    raise ValueError(f"unknown inference backend {name!r}; available: {', '.join(BACKENDS)}")
