"""The soft actor-critic maths of RLPD (Ball et al. 2023, "Efficient Online Reinforcement Learning with
Offline Data"), over whole action chunks: pure functions, tensors in, tensors out.

RLPD is SAC (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications") with an ensemble of
``K`` LayerNorm critics whose target takes the minimum over a random subset of ``M`` of them (REDQ's
in-target minimisation, Chen et al. 2021), a high update-to-data ratio and symmetric offline/online
sampling. With a chunk as the action (Q-chunking, LWD eq. 19 with one chunk) the soft TD target is

    y = R_chunk + (1 - done) gamma^h ( min_{k in S} Q^-_k(s', a') - alpha log pi(a' | s') ),
    a' ~ pi(. | s'),   S a random M-subset of the K target critics,

the actor minimises ``E[alpha log pi(a | s) - mean_k Q_k(s, a)]`` (reparameterised ``a``, the mean over all
K online critics) and the temperature ``alpha = exp(log_alpha)`` minimises ``alpha (H - H_target)`` with
``H = -E[log pi]`` (no gradient into ``H``), so alpha grows while the policy's entropy is below its target.
These follow the RLPD reference code (github.com/ikostrikov/rlpd, ``rlpd/agents/sac/sac_learner.py``:
``update_critic``, ``update_actor``, ``update_temperature``).
"""

from __future__ import annotations

import math

import torch

from fleetrl.algorithms.td import n_step_chunk_target

LOG_2 = math.log(2.0)


def squashed_log_prob(
    dist: torch.distributions.Normal, u: torch.Tensor, scale: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Log-density [B] of ``a = center + scale * tanh(u)`` for pre-squash samples ``u`` [B, D] of ``dist``:
    ``sum_d log N(u_d) - log(scale * (1 - tanh(u_d)^2))``, the log-determinant written as
    ``2 (log 2 - u - softplus(-2u))`` so it stays finite where ``tanh(u)`` rounds to +-1."""
    log_det = 2.0 * (LOG_2 - u - torch.nn.functional.softplus(-2.0 * u))
    scale_t = torch.as_tensor(scale, dtype=u.dtype, device=u.device)
    return (dist.log_prob(u) - log_det - torch.log(scale_t)).sum(-1)


def squashed_rsample(
    dist: torch.distributions.Normal, center: float | torch.Tensor, scale: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A reparameterised squashed sample: (action ``center + scale * tanh(u)`` [B, D], its log-prob [B])."""
    u = dist.rsample()
    return center + scale * torch.tanh(u), squashed_log_prob(dist, u, scale)


def random_subset(k: int, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``m`` distinct critic indices out of ``k`` (RLPD/REDQ's target subset; ``m = k`` keeps all)."""
    if not 1 <= m <= k:
        raise ValueError(f"target subset size must be in [1, {k}], got {m}")
    return torch.randperm(k, generator=generator)[:m]


def soft_bootstrap(
    next_q_subset: torch.Tensor, next_log_prob: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """The soft value at the next state: ``min_{k in S} Q^-_k(s', a') - alpha log pi(a' | s')``;
    ``next_q_subset`` [M, B] (the target critics of the subset), ``next_log_prob`` [B]."""
    return next_q_subset.min(dim=0).values - alpha * next_log_prob


def soft_chunk_target(
    chunk_reward: torch.Tensor,
    discount: torch.Tensor,
    done: torch.Tensor,
    next_q_subset: torch.Tensor,
    next_log_prob: torch.Tensor,
    alpha: torch.Tensor,
    backup_entropy: bool = True,
) -> torch.Tensor:
    """RLPD's critic target over one chunk (module docstring): the chunk's discounted reward plus
    ``(1 - done) gamma^h`` times ``soft_bootstrap`` (without the entropy term if not ``backup_entropy``);
    all [B] but ``next_q_subset`` [M, B]. No gradient flows out of it."""
    with torch.no_grad():
        a = alpha if backup_entropy else torch.zeros_like(alpha)
        bootstrap = soft_bootstrap(next_q_subset, next_log_prob, a)
        return n_step_chunk_target(chunk_reward, discount, done, bootstrap)


def sac_actor_loss(log_prob: torch.Tensor, q_values: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``E[alpha log pi(a | s) - mean_k Q_k(s, a)]``: ``log_prob`` [B] of reparameterised chunks, their
    values ``q_values`` [K, B] under the online critics (the mean over all K, as the reference), ``alpha``
    a constant here."""
    return (alpha.detach() * log_prob - q_values.mean(dim=0)).mean()


def temperature_loss(log_alpha: torch.Tensor, entropy: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """``alpha (H - H_target)`` with ``alpha = exp(log_alpha)`` and the entropy estimate ``H`` detached:
    gradient descent on ``log_alpha`` raises alpha while ``H < H_target`` and lowers it otherwise."""
    return log_alpha.exp() * (entropy.detach() - target_entropy)


def strided_slices(n: int, parts: int) -> list[torch.Tensor]:
    """Row indices of ``parts`` disjoint minibatches of an ``n``-row batch, row ``i`` going to slice
    ``i % parts``: a replay batch lists its offline rows first, so strided slices each keep the batch's
    offline/online mix (the reference interleaves the two halves, then slices contiguously)."""
    return [torch.arange(i, n, parts) for i in range(parts)]
