"""PPO's maths over decisions (tensors in, tensors out): GAE with a per-decision discount, the clipped
surrogate and value losses, truncated importance weights, the reward scale and the diagnostics PPO reports
(approximate KL, explained variance, ratio quantiles). ``ppo.py`` runs them; ``ppo_decisions.py`` makes
their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fleetrl.models.nets import RunningObsNorm


def discounted_running_return(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t = gamma G_{t-1} + r_t`` from ``G_{-1} = 0``: the return-so-far NormalizeReward tracks."""
    out, acc = np.empty(len(rewards), np.float64), 0.0
    for t, r in enumerate(np.asarray(rewards, np.float64)):
        acc = out[t] = gamma * acc + r
    return out


class RewardScale:
    """CleanRL's ``NormalizeReward`` for whole episodes: the running variance of ``G_t`` (from each
    episode's start) over every step seen, and rewards divided by its standard deviation (not centred, so
    the sign of a reward and the meaning of termination stay). CleanRL also clips each scaled reward to
    +-10; a decision's reward is a sum over its steps, so that clip is left out."""

    def __init__(self, gamma: float, eps: float = 1e-8):
        self.gamma, self.eps = gamma, eps
        self.stats = RunningObsNorm(1)  # gymnasium's RunningMeanStd: count 1e-4, mean 0, var 1

    def observe(self, episode_rewards: Sequence[np.ndarray]) -> None:
        returns = [discounted_running_return(r, self.gamma) for r in episode_rewards if len(r)]
        if returns:
            self.stats.update(torch.as_tensor(np.concatenate(returns))[:, None])

    @property
    def std(self) -> float:
        return float(torch.sqrt(self.stats.var[0] + self.eps))

    def state_dict(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in self.stats.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    discounts: torch.Tensor,
    dones: torch.Tensor,
    chain_ends: torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a flat sequence of decisions; returns (advantages, returns).

    All inputs are [N]: ``values`` = V(s_i), ``next_values`` = V(s'_i) (the next decision's state, or the
    bootstrap state where a chain ends), ``discounts`` = gamma^h_i, ``dones`` = terminal (no bootstrap),
    ``chain_ends`` = decision i+1 does not continue decision i's chain (episode end, or non-policy rows
    in between). delta_i = r_i + d_i (1 - done_i) V(s'_i) - V(s_i);
    A_i = delta_i + d_i lam (1 - done_i)(1 - end_i) A_{i+1}; returns = A + V(s)."""
    live = 1.0 - dones.float()
    deltas = rewards + discounts * live * next_values - values
    carry = (discounts * lam * live * (1.0 - chain_ends.float())).tolist()
    out, acc = deltas.tolist(), 0.0
    for i in reversed(range(len(out))):
        acc = out[i] = out[i] + carry[i] * acc
    adv = torch.tensor(out, dtype=values.dtype, device=values.device)
    return adv, adv + values


def ppo_clip_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate (VLAC eq. 5) as a loss to minimise, and the fraction of rows whose ratio is clipped.
    ``weights`` (e.g. truncated importance weights) scale each row's surrogate."""
    ratio = torch.exp(new_logp - old_logp)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    if weights is not None:
        surrogate = surrogate * weights
    return -surrogate.mean(), ((ratio - 1).abs() > clip).float().mean()


def tis_weights(
    proximal_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights min(pi_proximal / mu_behaviour, cap) between the recomputed fp32 policy
    and the backend that sampled (rows without a behaviour log-prob get 1); and the fraction capped."""
    ratio = torch.exp(proximal_logp - behaviour_logp)
    ratio = torch.where(torch.isfinite(behaviour_logp), ratio, torch.ones_like(ratio))
    return ratio.clamp(max=cap), (ratio > cap).float().mean()


def ratio_quantiles(log_ratio: torch.Tensor, prefix: str) -> dict[str, float]:
    """P1/P50/P99 of exp(log_ratio) (NaN when empty): the spread of an importance ratio."""
    if log_ratio.numel() == 0:
        return {f"{prefix}_p{q:02d}": float("nan") for q in (1, 50, 99)}
    qs = torch.quantile(log_ratio.double().exp(), torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64))
    return {f"{prefix}_p{q:02d}": float(v) for q, v in zip((1, 50, 99), qs.tolist(), strict=True)}


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """0.5 * mean squared error; with ``clip`` the pessimistic max over the clipped and unclipped errors."""
    err = (values - returns).square()
    if clip is not None and old_values is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.max(err, (clipped - returns).square())
    return 0.5 * err.mean()


def approx_kl(new_logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """KL(old || new) estimated from samples of old: mean((r - 1) - log r), r = new / old (non-negative)."""
    log_ratio = new_logp - old_logp
    return (log_ratio.exp() - 1 - log_ratio).mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); NaN when the target is constant."""
    var = target.var(unbiased=False)
    return float("nan") if var <= 0 else float(1 - (target - predicted).var(unbiased=False) / var)
