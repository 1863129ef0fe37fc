"""Policy networks. A policy maps a batch of observation dicts to action chunks and their log-probs.

Families are registered by name so inference backends and learners build them from config alone.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fleetrl.robots.protocol import ArraySpec


class GaussianMLPConfig(BaseModel):
    """A diagonal-Gaussian MLP that emits a whole action chunk at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    family: Literal["gaussian_mlp"] = Field("gaussian_mlp", description="Policy family name.")
    hidden: tuple[int, ...] = Field((64, 64), description="Hidden layer widths.")
    init_log_std: float = Field(-0.5, description="Initial log standard deviation of every action dimension.")
    seed: int = Field(0, description="Seed for the initial weights; replicas of a pool share it.")


PolicyConfig = GaussianMLPConfig  # later families join as a discriminated union on ``family``


def flatten_obs(obs: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """Concatenate observation entries (in spec order) into one float vector per batch row."""
    parts = [obs[k].reshape(obs[k].shape[0], -1).to(torch.float32) for k in keys]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class GaussianChunkPolicy(nn.Module):
    """MLP mean over the flattened chunk and a state-independent log-std; log-prob sums the chunk."""

    def __init__(
        self, cfg: GaussianMLPConfig, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int
    ):
        super().__init__()
        self.obs_keys = list(obs_spec)
        self.chunk_len = chunk_len
        self.action_shape = action_spec.shape
        obs_dim = sum(s.size for s in obs_spec.values())
        out_dim = chunk_len * action_spec.size
        layers: list[nn.Module] = []
        width = obs_dim
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.body = nn.Sequential(*layers)
        self.mean = nn.Linear(width, out_dim)
        nn.init.zeros_(self.mean.bias)
        with torch.no_grad():
            self.mean.weight.mul_(0.01)
        self.log_std = nn.Parameter(torch.full((out_dim,), cfg.init_log_std))

    def distribution(self, obs: dict[str, torch.Tensor]) -> torch.distributions.Normal:
        mean = self.mean(self.body(flatten_obs(obs, self.obs_keys)))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.distribution(obs)
        flat = dist.mean if deterministic else dist.sample()
        log_prob = dist.log_prob(flat).sum(-1)
        return flat.reshape(flat.shape[0], self.chunk_len, *self.action_shape), log_prob

    def log_prob(self, obs: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        dist = self.distribution(obs)
        return dist.log_prob(actions.reshape(actions.shape[0], -1)).sum(-1)


def build_policy(
    cfg: PolicyConfig, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int
) -> nn.Module:
    """Build a policy with deterministic initial weights (every replica of a pool starts identical)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        if cfg.family == "gaussian_mlp":
            return GaussianChunkPolicy(cfg, obs_spec, action_spec, chunk_len)
    finally:
        torch.random.set_rng_state(gen_state)
    raise ValueError(f"unknown policy family {cfg.family!r}")
