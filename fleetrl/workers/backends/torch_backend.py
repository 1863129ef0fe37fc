"""The fp32 torch backend: the reference numerics that learners recompute log-probs with.

It keeps the newest few weight versions, so that in episode-boundary reload mode a robot's episode
keeps the version that started it while new episodes get the newest one.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch

from fleetrl.models.policies import FlowChunkConfig, GaussianMLPConfig, build_policy
from fleetrl.robots.protocol import ArraySpec


class TorchBackend:
    def __init__(
        self,
        policy: GaussianMLPConfig | FlowChunkConfig,
        observation_spec: dict[str, ArraySpec],
        action_spec: ArraySpec,
        chunk_len: int,
        threads: int = 1,
        seed: int = 0,
        keep_versions: int = 2,
    ):
        torch.set_num_threads(threads)
        self.keep_versions = keep_versions
        self.policies: OrderedDict[int, torch.nn.Module] = OrderedDict()
        self.policies[0] = build_policy(policy, observation_spec, action_spec, chunk_len).eval()
        torch.manual_seed(seed)  # replicas of a pool share weights but not their sampling noise

    @property
    def version(self) -> int:
        return next(reversed(self.policies))

    @torch.inference_mode()
    def infer(
        self, batch: dict[str, np.ndarray], pins: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Action chunks, log-probs and the version per row. ``pins[i]`` asks for a kept version (-1: newest)."""
        obs = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
        n = next(iter(obs.values())).shape[0]
        versions = np.full(n, self.version, dtype=np.int64)
        if pins is not None:
            pinned = np.asarray(pins, dtype=np.int64)
            kept = np.isin(pinned, list(self.policies))
            versions[kept] = pinned[kept]
        groups = np.unique(versions) if pins is not None else versions[:1]
        if len(groups) == 1:  # every row on one version (always so in batch reload mode): one forward pass
            actions, log_prob = self.policies[int(groups[0])].act(obs)
            return (
                actions.numpy().astype(np.float32, copy=False),
                log_prob.numpy().astype(np.float32),
                versions,
            )
        actions_out, log_out = None, np.empty(n, dtype=np.float32)
        for v in groups:
            rows = np.flatnonzero(versions == v)
            a, lp = self.policies[int(v)].act({k: t[rows] for k, t in obs.items()})
            if actions_out is None:
                actions_out = np.empty((n, *a.shape[1:]), dtype=np.float32)
            actions_out[rows], log_out[rows] = a.numpy(), lp.numpy()
        return actions_out, log_out, versions

    def load_weights(self, state_dict: dict, version: int) -> None:
        if version <= self.version:
            return  # already serving it or something newer
        policy = copy.deepcopy(self.policies[self.version])
        policy.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()})
        self.policies[version] = policy
        while len(self.policies) > self.keep_versions:
            self.policies.popitem(last=False)
