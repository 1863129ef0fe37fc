"""Temporal-difference maths of the critic ensembles, shared by ALOE's AWR and LWD's QAM/DIVL.

Both papers train an ensemble of chunked critics ``Q_k(s_t, a_{t:t+H})`` on the same Q-chunking target
(ALOE eq. 7 is LWD eq. 19 with one chunk), aggregate the ensemble pessimistically by its minimum (ALOE
eq. 9, LWD §IV-D's clipped double Q), regress every head on the target with a squared error (ALOE eq. 8,
LWD eq. 15) and keep Polyak-averaged target copies. The functions here are that maths, written once:
tensors in, tensors out (``polyak_update`` writes into the target network it is given).
"""

from __future__ import annotations

import torch
from torch import nn


def pessimistic_q(q_values: torch.Tensor) -> torch.Tensor:
    """``min_k Q_k`` over the ensemble's leading dimension: ``q_values`` [K, ...] -> [...] (ALOE eq. 9;
    with K = 2 it is LWD's clipped double Q)."""
    return q_values.min(dim=0).values


def ensemble_td_loss(q_values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1/K sum_k E[(Q_k - y)^2]``: every head regresses the same target (ALOE eq. 8, LWD eq. 15);
    ``q_values`` [K, B], ``target`` [B] (no gradient flows into it)."""
    return (q_values - target.detach()).square().mean()


def n_step_chunk_target(
    chunk_rewards: torch.Tensor, chunk_discounts: torch.Tensor, dones: torch.Tensor, bootstrap: torch.Tensor
) -> torch.Tensor:
    """The Q-chunking TD target over n consecutive chunks (LWD eq. 19; ALOE eq. 7 is n = 1):

        y = sum_{i<n} gamma^{iH} r_{t+iH} + gamma^{nH} V(s_{t+nH})

    ``chunk_rewards`` (each chunk's discounted reward sum), ``chunk_discounts`` (``gamma^h`` of each
    chunk, so a chunk cut short by the episode's end discounts by its own length) and ``dones`` (the
    episode terminated within chunk i; bool or 0/1) are [B, n], or [B] for one chunk per row (a
    ``ChunkBatch``); ``bootstrap`` [B] is the value at the state after the last chunk. Terms after a
    terminal chunk and the bootstrap are dropped, so n = 1 is ``r + (1 - done) * gamma^h * bootstrap``."""
    if chunk_rewards.dim() == 1:
        chunk_rewards, chunk_discounts, dones = (
            chunk_rewards[:, None],
            chunk_discounts[:, None],
            dones[:, None],
        )
    y = torch.zeros_like(bootstrap)
    scale = torch.ones_like(bootstrap)  # gamma^{sum of earlier chunk lengths}, 0 after a termination
    for i in range(chunk_rewards.shape[1]):
        y = y + scale * chunk_rewards[:, i]
        scale = scale * chunk_discounts[:, i] * (1.0 - dones[:, i].float())
    return y + scale * bootstrap


def observed_return_target(target: torch.Tensor, returns: torch.Tensor, mode: str) -> torch.Tensor:
    """The critics' regression target under ``critic_target`` ``mode``: the TD target ``y`` [B] (``"td"``),
    ``max(y, G)`` (``"mc_bound"``) or ``G`` (``"return"``) where the observed discounted return ``G`` [B] is
    known, ``y`` where it is NaN (the episode did not terminate, so its return is incomplete). MCAC (Wilcox
    et al. 2022): with sparse rewards a TD target needs one chunk per target-network time constant to carry a
    success back to the episode's start; the return the data achieved is a lower bound on the optimal Q that
    carries it at once."""
    if mode == "td":
        return target
    observed = returns if mode == "return" else torch.maximum(target, returns)
    return torch.where(torch.isnan(returns), target, observed)


def conservative_penalty(q_proposals: torch.Tensor, q_data: torch.Tensor) -> torch.Tensor:
    """CQL's regulariser (Kumar et al. 2020, eq. 4, CQL(H)) with sampled proposals: the mean over heads and
    states of ``logsumexp_m Q_k(s, a_m) - Q_k(s, a_data)``; ``q_proposals`` [K, M, B], ``q_data`` [K, B].
    Minimised beside the TD loss it pushes the soft maximum over chunks the data does not hold down and the
    data's own chunk up, so the critic stops ranking unsupported chunks above the data's."""
    return (torch.logsumexp(q_proposals, dim=1) - q_data).mean()


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """The target networks' step, ``target <- (1 - tau) target + tau source`` (ALOE's omega, LWD's EMA
    rate); buffers are copied."""
    for tp, sp in zip(target.parameters(), source.parameters(), strict=True):
        tp.lerp_(sp, tau)
    for tb, sb in zip(target.buffers(), source.buffers(), strict=True):
        tb.copy_(sb)
