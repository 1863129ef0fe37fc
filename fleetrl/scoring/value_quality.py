"""Action-quality indicators from value deltas (Robo-ValueRL §3.1 "Action Quality Indicator", used by the
quality-conditioned policy of §3.2 / App. C.2 and the online data split of §3.3; thresholds of App. E).

For a transition from t to t + Δ, ``Δv_t = V(o_{t+Δ}, h_{t+Δ}) - V(o_t, h_t)``; thresholding it with a
positive margin δ+ and a negative margin δ- gives ``q_t ∈ {0, 1, 2}`` (low, neutral, high quality):

    q_t = 2 if Δv_t > δ+,   q_t = 0 if Δv_t < δ-,   q_t = 1 otherwise   (δ- <= δ+; δ- is usually <= 0).

The paper does not say how the horizon is handled near the end of an episode; here ``t + Δ`` is clamped
to the last step (the delta is then over the steps that remain), so every step gets an indicator.
App. E sets the margins from the data: "strict" labels the top 30 % of ``v(t+20) - v(t)`` high, "soft"
the top 50 % of ``v(t+60) - v(t)``; ``quantile_margins`` computes such margins.

Everything works on numpy arrays and torch tensors alike, along the last axis ([..., T]).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

LOW, NEUTRAL, HIGH = 0, 1, 2
# App. C.2 eq. 12: the textual action-quality prompt of each indicator.
QUALITY_PROMPTS = ("Quality: Low", "Quality: Medium", "Quality: High")

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def value_deltas(values: Array, horizon: int) -> Array:
    """``Δv_t = v_{min(t + horizon, T - 1)} - v_t`` along the last axis (§3.1)."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    n = values.shape[-1]
    ahead = np.minimum(np.arange(n) + horizon, max(n - 1, 0))
    if isinstance(values, torch.Tensor):
        return values[..., torch.as_tensor(ahead, device=values.device)] - values
    values = np.asarray(values)
    return values[..., ahead] - values


def quality_from_deltas(deltas: Array, delta_pos: float, delta_neg: float) -> Array:
    """``q = 2`` where Δv > δ+, ``0`` where Δv < δ-, else ``1`` (int64, same shape)."""
    if delta_neg > delta_pos:
        raise ValueError(f"delta_neg ({delta_neg}) must be <= delta_pos ({delta_pos})")
    if isinstance(deltas, torch.Tensor):
        return 1 + (deltas > delta_pos).long() - (deltas < delta_neg).long()
    d = np.asarray(deltas)
    return 1 + (d > delta_pos).astype(np.int64) - (d < delta_neg).astype(np.int64)


def quality_indicators(values: Array, horizon: int, delta_pos: float, delta_neg: float) -> Array:
    """Indicators ``q_t`` of every step of value sequences [..., T] (§3.1)."""
    return quality_from_deltas(value_deltas(values, horizon), delta_pos, delta_neg)


def quantile_margins(deltas: np.ndarray, top_frac: float, bottom_frac: float = 0.0) -> tuple[float, float]:
    """Margins (δ+, δ-) that label about the top ``top_frac`` of the deltas high and the bottom
    ``bottom_frac`` low (App. E: strict = top 0.3 at Δ=20, soft = top 0.5 at Δ=60). With
    ``bottom_frac = 0`` δ- is below every delta (no low labels). Ties at a quantile may shift the shares."""
    if not (0.0 <= top_frac <= 1.0 and 0.0 <= bottom_frac <= 1.0 and top_frac + bottom_frac <= 1.0):
        raise ValueError(f"need 0 <= fractions and top + bottom <= 1, got {top_frac}, {bottom_frac}")
    d = np.asarray(deltas, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("no deltas to take quantiles of")
    pos = float(np.quantile(d, 1.0 - top_frac)) if top_frac > 0 else float(np.inf)
    neg = float(np.quantile(d, bottom_frac)) if bottom_frac > 0 else float(-np.inf)
    return pos, min(neg, pos)


def quality_prompt(q: int) -> str:
    """The textual prompt of App. C.2 eq. 12."""
    return QUALITY_PROMPTS[int(q)]
