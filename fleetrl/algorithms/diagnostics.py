"""What a value-based learner reports so that "the critic ranks nothing" or "the policy is not moving" shows
in the learner status, TensorBoard and the console without reading code (pure functions, no gradient).

* ``q_diagnostics``: the critic's value of the data's chunks, of the current policy's and of uniformly random
  ones in the same states. A trained critic scores the data (expert) and the policy above random chunks; a
  ``random_above_data`` near 0.5 means it does not yet tell actions apart, and policy extraction then follows
  noise.
* ``return_correlation``: Pearson correlation of Q on the data with the discounted return actually observed
  from that state on, over the chunks whose episode is complete (the only ground truth a critic has).
* ``action_distance``: RMS distance between two chunk batches over the executed entries (policy to data,
  policy to a frozen reference): a policy that stays at 0.01 of its reference has not been improved.
* ``weight_stats``: advantage-weight statistics; ``weight_ess`` is the effective sample size fraction
  (sum w)^2 / (n sum w^2): 1.0 for uniform weights, 1/n when one sample takes all.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def q_diagnostics(q_data: torch.Tensor, q_policy: torch.Tensor, q_random: torch.Tensor) -> dict[str, float]:
    """Aggregated Q [B] of the data's chunks, the policy's and random ones, in the same B states."""
    return {
        "q_data": float(q_data.mean()),
        "q_policy": float(q_policy.mean()),
        "q_random": float(q_random.mean()),
        "random_above_data": float((q_random > q_data).float().mean()),
        "policy_above_data": float((q_policy > q_data).float().mean()),
    }


@torch.no_grad()
def return_correlation(q: torch.Tensor, returns: torch.Tensor) -> float | None:
    """Pearson correlation of ``q`` [B] with the observed discounted ``returns`` [B] (NaN where the episode
    is not complete: those rows are left out). None with fewer than 8 complete rows or no spread."""
    keep = torch.isfinite(returns)
    if int(keep.sum()) < 8:
        return None
    x, y = q[keep].double(), returns[keep].double()
    x, y = x - x.mean(), y - y.mean()
    denom = x.norm() * y.norm()
    return float((x @ y) / denom) if denom > 0 else None


@torch.no_grad()
def action_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """RMS of ``a - b`` [B, D] over the entries where ``mask`` [B, D] is 1 (all entries without a mask)."""
    sq = (a - b).square()
    if mask is None:
        return float(sq.mean().sqrt())
    return float(((sq * mask).sum() / mask.sum().clamp_min(1.0)).sqrt())


@torch.no_grad()
def weight_stats(w: torch.Tensor) -> dict[str, float]:
    """Mean, max and effective-sample-size fraction of per-sample weights ``w`` [B] (>= 0; all zero: ESS 0)."""
    n, power = w.numel(), w.square().sum()
    ess = float(w.sum().square() / (n * power)) if n and power > 0 else 0.0
    return {"weight_mean": float(w.mean()), "weight_max": float(w.max()), "weight_ess": ess}


@torch.no_grad()
def uniform_chunks(n: int, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``n`` flat chunks drawn uniformly within the per-entry bounds ``low``/``high`` [D]."""
    return low + (high - low) * torch.rand(n, low.numel(), device=low.device)


@torch.no_grad()
def random_chunks(n: int, data: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``n`` flat chunks uniformly within the action bounds ``low``/``high``, or where a bound is infinite
    within the range the batch's chunks ``data`` [B, D] span (an unbounded box has no uniform law)."""
    lo = torch.full_like(data[0], low) if math.isfinite(low) else data.min(0).values
    hi = torch.full_like(data[0], high) if math.isfinite(high) else data.max(0).values
    return uniform_chunks(n, lo, hi)
