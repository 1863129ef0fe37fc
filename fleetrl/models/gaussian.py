"""The ``gaussian_mlp`` policy family (PPO's): a diagonal Gaussian over the whole flat action chunk, emitted by
an MLP, with a separate state-value MLP; tanh-squashed into the action bounds by default, so a log-prob is
a function of the executed action alone and can be recomputed exactly."""

from __future__ import annotations

import math

import torch
from torch import nn

from fleetrl.models.configs import GaussianMLPConfig
from fleetrl.models.nets import ChunkPolicy, RunningObsNorm, mlp
from fleetrl.robots.protocol import ArraySpec

SQUASH_EPS = 1e-6  # keeps atanh finite for executed actions that sit on the bounds
LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


class GaussianChunkPolicy(ChunkPolicy):
    """MLP mean over the flattened chunk, a state-independent log-std, and a separate value MLP.

    With ``squash`` the action is ``center + scale * tanh(u)``, ``u ~ N(mean, std)``, and log-probs include
    the change-of-variables term, so a log-prob is a function of the executed action alone. A chunk's
    log-prob sums its steps; ``mask`` leaves out steps that were never executed (episode ended)."""

    # ``act`` branches on no tensor value: a replica may run it traced (inference/backends/traced_act.py)
    straight_line_act = True

    def __init__(
        self, cfg: GaussianMLPConfig, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int
    ):
        super().__init__(obs_spec, action_spec, chunk_len, pending=cfg.pending_actions, encoder=cfg.encoder)
        self.body = mlp(self.obs_dim, cfg.hidden, self.action_dim, nn.Tanh)
        with torch.no_grad():
            self.body[-1].weight.mul_(0.01)
            self.body[-1].bias.zero_()
        self.log_std = nn.Parameter(torch.full((self.action_dim,), cfg.init_log_std))
        self.value_net = mlp(self.obs_dim, cfg.value_hidden, 1, nn.Tanh)
        self.obs_norm = RunningObsNorm(self.obs_dim) if cfg.normalize_obs else None
        self.squash = cfg.squash
        if cfg.squash:
            if action_spec.low is None or action_spec.high is None:
                raise ValueError("a squashed Gaussian policy needs finite action bounds (low/high)")
            self.center = (action_spec.high + action_spec.low) / 2
            self.scale = (action_spec.high - action_spec.low) / 2

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = super().encode(obs)
        return flat if self.obs_norm is None else self.obs_norm(flat)

    def observe(self, obs: dict[str, torch.Tensor]) -> None:
        """Fold observations the policy acted on into the running statistics (no-op without them)."""
        if self.obs_norm is not None:
            self.obs_norm.update(super().encode(obs))

    def distribution(self, obs: dict[str, torch.Tensor]) -> torch.distributions.Normal:
        """The Gaussian over the flat pre-squash chunk ``u``. Without torch's argument checks: the scale is
        an exp (positive) and the mean a network output; the checks were 7 % of a replica's small-batch infer."""
        mean = self.body(self.encode(obs))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False)

    def value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.value_net(self.encode(obs)).squeeze(-1)

    def entropy(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Entropy of the pre-squash Gaussian per row (the usual PPO bonus for squashed policies)."""
        return self.distribution(obs).entropy().sum(-1)

    def evaluate(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob, entropy) per row from one pass of the mean network."""
        dist = self.distribution(obs)
        return self._chunk_log_prob(dist.mean, actions, mask), dist.entropy().sum(-1)

    def _log_prob_flat(self, mean: torch.Tensor, flat_action: torch.Tensor) -> torch.Tensor:
        """Per-dimension log-prob [B, D] of executed flat actions under N(mean, exp(log_std)), squash
        included: the one formula the replica's ``act`` and the learner's recomputation share."""
        if self.squash:
            y = ((flat_action - self.center) / self.scale).clamp(-1 + SQUASH_EPS, 1 - SQUASH_EPS)
            u, jacobian = torch.atanh(y), torch.log(self.scale * (1 - y.square()))
        else:
            u, jacobian = flat_action, 0.0
        # the operations of torch's Normal.log_prob, in its order: the same numbers to the last bit
        std = self.log_std.exp().expand_as(mean)
        return -((u - mean) ** 2) / (2 * std**2) - std.log() - LOG_SQRT_2PI - jacobian

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A sampled (or, ``deterministic``, the mean's) chunk and its log-prob. Plain tensor ops, no
        ``torch.distributions`` object: a replica calls this once per batch of one or two observations,
        where building the distribution cost more than the network."""
        mean = self.body(self.encode(obs))
        u = mean if deterministic else mean + self.log_std.exp() * torch.randn_like(mean)  # as Normal.sample
        flat = self.center + self.scale * torch.tanh(u) if self.squash else u
        return self.unflatten(flat), self._log_prob_flat(mean, flat).sum(-1)

    def log_prob(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Log-prob [B] of executed chunks [B, H, *action_shape]; ``mask`` [B, H] marginalises unexecuted steps."""
        return self._chunk_log_prob(self.body(self.encode(obs)), actions, mask)

    def _chunk_log_prob(
        self, mean: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        per_dim = self._log_prob_flat(mean, actions.reshape(actions.shape[0], -1).float())
        if mask is not None:
            per_dim = per_dim * mask.float().repeat_interleave(self.step_dim, dim=1)
        return per_dim.sum(-1)
