"""The policy families by name, and the builder inference backends and learners use.

A policy maps a batch of observation dicts to action chunks and their log-probs. Families are chosen by
name (``family``) so inference backends and learners build them from config alone: ``gaussian_mlp`` (PPO:
tractable log-probs, a value head; gaussian.py), ``flow_chunk`` (AWR, QAM, BC; flow.py), ``token_lm``
(PPO: a causal LM that writes actions into a text template; token_policy.py) and ``residual`` (a bounded,
gated residual adapter over a frozen base of another family; residual.py).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fleetrl.models.configs import (  # noqa: F401 - re-exported
    FlowChunkConfig,
    GaussianMLPConfig,
    PolicyConfig,
    ResidualAdapterConfig,
    TokenLMConfig,
    action_spec_problem,
)
from fleetrl.models.export import load_weights
from fleetrl.models.flow import FlowChunkPolicy
from fleetrl.models.gaussian import GaussianChunkPolicy
from fleetrl.models.nets import seeded
from fleetrl.models.residual import ResidualAdapterPolicy
from fleetrl.models.token_policy import TokenActionPolicy
from fleetrl.robots.protocol import ArraySpec


def build_policy(
    cfg: GaussianMLPConfig | FlowChunkConfig | TokenLMConfig | ResidualAdapterConfig,
    obs_spec: dict[str, ArraySpec],
    action_spec: ArraySpec,
    chunk_len: int,
) -> nn.Module:
    """Build a policy with deterministic initial weights (every replica of a pool starts identical), or
    with an exported policy's (``cfg.checkpoint``, checked to fit: ``export.load_weights``)."""
    policy = _build(cfg, obs_spec, action_spec, chunk_len)
    if cfg.family != "token_lm" and cfg.checkpoint is not None:  # token_lm reads its own checkpoints
        load_weights(policy, cfg, obs_spec, action_spec, chunk_len, cfg.checkpoint)
    return policy


def _build(cfg: Any, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int) -> nn.Module:
    with seeded(cfg.seed):
        if cfg.family == "gaussian_mlp":
            return GaussianChunkPolicy(cfg, obs_spec, action_spec, chunk_len)
        if cfg.family == "flow_chunk":
            return FlowChunkPolicy(cfg, obs_spec, action_spec, chunk_len)
        if cfg.family == "token_lm":
            return TokenActionPolicy(cfg, obs_spec, action_spec, chunk_len)
        if cfg.family == "residual":
            base = build_policy(cfg.base, obs_spec, action_spec, chunk_len)
            return ResidualAdapterPolicy(cfg, base, obs_spec, action_spec, chunk_len)
    raise ValueError(f"unknown policy family {cfg.family!r}")
