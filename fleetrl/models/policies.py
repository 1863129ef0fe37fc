"""Policy networks. A policy maps a batch of observation dicts to action chunks and their log-probs.

Families are chosen by name (``family``) so inference backends and learners build them from config alone:
``gaussian_mlp`` (PPO: tractable log-probs, a value head), ``flow_chunk`` (AWR, QAM, BC; see flow.py) and
``token_lm`` (PPO: a causal LM that writes actions into a text template; see token_policy.py) and
``residual`` (a bounded, gated residual adapter over a frozen base of another family; see residual.py).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fleetrl.models.flow import FlowChunkConfig, FlowChunkPolicy
from fleetrl.models.nets import flatten_obs, mlp
from fleetrl.models.residual import ResidualAdapterConfig, ResidualAdapterPolicy
from fleetrl.models.token_policy import TokenActionPolicy, TokenLMConfig
from fleetrl.robots.protocol import ArraySpec

SQUASH_EPS = 1e-6  # keeps atanh finite for executed actions that sit on the bounds


class GaussianMLPConfig(BaseModel):
    """A diagonal-Gaussian MLP that emits a whole action chunk at once, with a state-value head."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    family: Literal["gaussian_mlp"] = Field("gaussian_mlp", description="Policy family name.")
    hidden: tuple[int, ...] = Field((64, 64), description="Hidden layer widths of the mean network.")
    value_hidden: tuple[int, ...] = Field((64, 64), description="Hidden layer widths of the value head.")
    init_log_std: float = Field(-0.5, description="Initial log standard deviation of every action dimension.")
    squash: bool = Field(
        True,
        description="tanh-squash samples into the action bounds, so the executed action is the sampled "
        "one and its log-prob can be recomputed exactly (needs finite bounds).",
    )
    seed: int = Field(0, description="Seed for the initial weights; replicas of a pool share it.")


BasePolicyConfig = Annotated[
    GaussianMLPConfig | FlowChunkConfig | TokenLMConfig, Field(discriminator="family")
]
ResidualAdapterConfig.model_rebuild(_types_namespace={"BasePolicyConfig": BasePolicyConfig})
PolicyConfig = Annotated[
    GaussianMLPConfig | FlowChunkConfig | TokenLMConfig | ResidualAdapterConfig, Field(discriminator="family")
]


def action_spec_problem(cfg: BaseModel, action_spec: ArraySpec) -> str | None:
    """Why a policy of config ``cfg`` cannot act in ``action_spec`` (None if it can).

    Checked when a task is configured, so a task whose policy cannot be built is refused with this reason
    instead of failing later inside its inference replicas."""
    if cfg.family == "residual":
        return action_spec_problem(cfg.base, action_spec)
    needs_bounds = {
        "gaussian_mlp": "a squashed Gaussian maps into them (or set policy.squash: false)",
        "token_lm": "its number tokens map onto them",
    }
    if cfg.family == "gaussian_mlp" and not cfg.squash:
        return None
    if cfg.family in needs_bounds:
        low, high = action_spec.low, action_spec.high
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return (
                f"policy family {cfg.family!r} needs finite action bounds (action.low and action.high): "
                f"{needs_bounds[cfg.family]}; got low={low}, high={high}"
            )
    return None


class GaussianChunkPolicy(nn.Module):
    """MLP mean over the flattened chunk, a state-independent log-std, and a separate value MLP.

    With ``squash`` the action is ``center + scale * tanh(u)``, ``u ~ N(mean, std)``, and log-probs include
    the change-of-variables term, so a log-prob is a function of the executed action alone. A chunk's
    log-prob sums its steps; ``mask`` leaves out steps that were never executed (episode ended)."""

    def __init__(
        self, cfg: GaussianMLPConfig, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int
    ):
        super().__init__()
        self.obs_keys = list(obs_spec)
        self.chunk_len = chunk_len
        self.action_shape = action_spec.shape
        self.step_dim = action_spec.size
        obs_dim = sum(s.size for s in obs_spec.values())
        out_dim = chunk_len * action_spec.size
        self.body = mlp(obs_dim, cfg.hidden, out_dim, nn.Tanh)
        with torch.no_grad():
            self.body[-1].weight.mul_(0.01)
            self.body[-1].bias.zero_()
        self.log_std = nn.Parameter(torch.full((out_dim,), cfg.init_log_std))
        self.value_net = mlp(obs_dim, cfg.value_hidden, 1, nn.Tanh)
        self.squash = cfg.squash
        if cfg.squash:
            if action_spec.low is None or action_spec.high is None:
                raise ValueError("a squashed Gaussian policy needs finite action bounds (low/high)")
            self.center = (action_spec.high + action_spec.low) / 2
            self.scale = (action_spec.high - action_spec.low) / 2

    def distribution(self, obs: dict[str, torch.Tensor]) -> torch.distributions.Normal:
        """The Gaussian over the flat pre-squash chunk ``u``."""
        mean = self.body(flatten_obs(obs, self.obs_keys))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.value_net(flatten_obs(obs, self.obs_keys)).squeeze(-1)

    def entropy(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Entropy of the pre-squash Gaussian per row (the usual PPO bonus for squashed policies)."""
        return self.distribution(obs).entropy().sum(-1)

    def evaluate(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob, entropy) per row from one pass of the mean network."""
        dist = self.distribution(obs)
        return self._chunk_log_prob(dist, actions, mask), dist.entropy().sum(-1)

    def _log_prob_flat(self, dist: torch.distributions.Normal, flat_action: torch.Tensor) -> torch.Tensor:
        """Per-dimension log-prob [B, D] of executed flat actions."""
        if not self.squash:
            return dist.log_prob(flat_action)
        y = ((flat_action - self.center) / self.scale).clamp(-1 + SQUASH_EPS, 1 - SQUASH_EPS)
        u = torch.atanh(y)
        return dist.log_prob(u) - torch.log(self.scale * (1 - y.square()))

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.distribution(obs)
        u = dist.mean if deterministic else dist.sample()
        flat = self.center + self.scale * torch.tanh(u) if self.squash else u
        log_prob = self._log_prob_flat(dist, flat).sum(-1)
        return flat.reshape(flat.shape[0], self.chunk_len, *self.action_shape), log_prob

    def log_prob(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Log-prob [B] of executed chunks [B, H, *action_shape]; ``mask`` [B, H] marginalises unexecuted steps."""
        return self._chunk_log_prob(self.distribution(obs), actions, mask)

    def _chunk_log_prob(self, dist, actions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        per_dim = self._log_prob_flat(dist, actions.reshape(actions.shape[0], -1).float())
        if mask is not None:
            per_dim = per_dim * mask.float().repeat_interleave(self.step_dim, dim=1)
        return per_dim.sum(-1)


def build_policy(
    cfg: GaussianMLPConfig | FlowChunkConfig | TokenLMConfig | ResidualAdapterConfig,
    obs_spec: dict[str, ArraySpec],
    action_spec: ArraySpec,
    chunk_len: int,
) -> nn.Module:
    """Build a policy with deterministic initial weights (every replica of a pool starts identical)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        if cfg.family == "gaussian_mlp":
            return GaussianChunkPolicy(cfg, obs_spec, action_spec, chunk_len)
        if cfg.family == "flow_chunk":
            return FlowChunkPolicy(cfg, obs_spec, action_spec, chunk_len)
        if cfg.family == "token_lm":
            return TokenActionPolicy(cfg, obs_spec, action_spec, chunk_len)
        if cfg.family == "residual":
            base = build_policy(cfg.base, obs_spec, action_spec, chunk_len)
            return ResidualAdapterPolicy(cfg, base, obs_spec, action_spec, chunk_len)
    finally:
        torch.random.set_rng_state(gen_state)
    raise ValueError(f"unknown policy family {cfg.family!r}")
