"""The fp32 torch backend: the reference numerics that learners recompute log-probs with."""

from __future__ import annotations

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
    ):
        torch.set_num_threads(threads)
        self.policy = build_policy(policy, observation_spec, action_spec, chunk_len).eval()
        self.version = 0
        torch.manual_seed(seed)  # replicas of a pool share weights but not their sampling noise

    @torch.inference_mode()
    def infer(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        obs = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
        actions, log_prob = self.policy.act(obs)
        return actions.numpy().astype(np.float32, copy=False), log_prob.numpy().astype(np.float32, copy=False)

    def load_weights(self, state_dict: dict, version: int) -> None:
        self.policy.load_state_dict(state_dict)
        self.version = version
