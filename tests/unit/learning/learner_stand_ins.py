"""Plain-Python stand-ins for the Ray actor handles the learner's parts call (``handle.method.remote(...)``),
a small flow policy with the algorithms that train it, and batches for them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fleetrl.algorithms.base import PolicySpec
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.models.flow import FlowChunkConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots.episode import Episode
from fleetrl.robots.protocol import ArraySpec

OBS = {"state": ArraySpec((3,), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)
H = 3
SPEC = PolicySpec(OBS, ACT, H, gamma=0.9)
FAMILY = "flow_chunk"
AWR_CONFIG = {"batch_size": 8, "critic": {"n_critics": 2, "hidden": [16]}, "n_policy_samples": 2}


class Ref:
    """What a stand-in ``.remote`` returns: the answer, or the error that resolving it raises."""

    def __init__(self, answer: Any = None, error: Exception | None = None):
        self.answer, self.error = answer, error


def resolve(ref: Ref) -> Any:
    """The stand-ins' ``ray.get``."""
    if ref.error is not None:
        raise ref.error
    return ref.answer


class Method:
    """``.remote(*args)`` records the call and answers it at once with ``answer(*args)``, as an idle actor
    would; an error it raises comes out of ``resolve``, as from ``ray.get``."""

    def __init__(self, answer: Callable[..., Any]):
        self.answer, self.calls = answer, []

    def remote(self, *args: Any) -> Ref:
        self.calls.append(args)
        try:
            return Ref(self.answer(*args))
        except Exception as exc:  # noqa: BLE001 - handed to whoever resolves the ref
            return Ref(error=exc)


def small_policy(seed: int = 0, hidden: tuple[int, ...] = (16,)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_policy(FlowChunkConfig(hidden=hidden, flow_steps=2, seed=seed), OBS, ACT, H)


def chunk_batch(b: int = 8, seed: int = 0) -> ChunkBatch:
    rng = np.random.default_rng(seed)
    return ChunkBatch(
        obs={"state": rng.normal(size=(b, 3)).astype(np.float32)},
        actions=rng.uniform(-1, 1, (b, H, 2)).astype(np.float32),
        rewards=rng.normal(size=(b, H)).astype(np.float32),
        chunk_reward=rng.normal(size=b).astype(np.float32),
        next_obs={"state": rng.normal(size=(b, 3)).astype(np.float32)},
        done=np.arange(b) % 4 == 0,
        mask=np.ones((b, H), bool),
        discount=np.full(b, 0.9**H, np.float32),
        intervention=np.zeros(b, bool),
        offline=np.ones(b, bool),
        robot_id=np.array(["r"] * b),
        episode_id=np.array(["e"] * b),
        step=np.zeros(b, np.int32),
        snapshot=1,
        gamma=0.9,
    )


def episode(versions: list[int], name: str = "ep") -> Episode:
    """An online episode whose steps were chosen by these policy versions (-1: an operator's step)."""
    n = len(versions)
    return Episode(
        episode_id=name,
        task="reach",
        robot_id="r",
        outcome="success",
        observations={"state": np.zeros((n, 3), np.float32)},
        actions=np.zeros((n, 2), np.float32),
        columns={"policy_version": np.asarray(versions, np.int32)},
        final_observation={"state": np.zeros(3, np.float32)},
    )
