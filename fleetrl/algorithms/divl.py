"""DIVL, Distributional Implicit Value Learning (LWD seed 003, §IV-A and appendix A1), in pure torch.

The value model ``V_psi(s)`` is a categorical distribution over ``K`` fixed atoms ``z_1 < ... < z_K`` on
``[v_min, v_max]`` (eq. 20). It is fitted to the *distribution of replay action-values* at ``s`` (eq. 11):
for every replay pair ``(s, a)`` the scalar EMA-critic value ``Q^-(s, a)`` (the minimum of the two target
critics, clipped double Q, §IV-D) is clipped to the support and split between its two neighbouring atoms
(the C51 projection), and ``V_psi`` minimises the cross-entropy to that two-hot target (eqs. 12, 21).

The critic bootstraps from a quantile of that distribution instead of IQL's expectile (eqs. 13-15):

    y = sum_{i<n} gamma^{iH} r_{t+iH} + gamma^{nH} Quant_tau(V(s_{t+nH}))                      (eq. 19)

with ``Quant_tau`` the first atom whose CDF reaches ``tau`` (eq. 23) and an entropy-adapted level
``tau(s) = clip(tau_base - alpha * H(s), tau_min, tau_max)`` with ``H`` the entropy of ``V(s)``
normalised by ``log K`` (eqs. 17-18, 24), treated as a constant (stop-gradient).

Which V bootstraps: eqs. 14 and 19 and Algorithm 2 (line 1 updates ``psi``, line 2 builds the target with
``V_psi``) read the *online* value model, as IQL does; app. B2 also keeps an EMA copy of the value network
(rate 0.005). ``V_psi`` already fits the EMA critics (eq. 12), so bootstrapping from its EMA copy as well
puts two moving averages in series (about twice the lag); ``bootstrap_from="online"`` (default) follows the
equations, ``"ema"`` the copy. The paper gives no ``tau_min``/``tau_max``; ours are loose safety bounds
(0.1, 0.99) that the paper's ``tau_base - alpha H`` never reaches for its settings.

The distribution maths are pure functions (tensors in, tensors out); the TD target of eq. 19, the clipped
double Q and the critics' loss are ``td.py``'s, shared with AWR. ``DIVL`` only holds the value model, its
EMA copy and optimizer and calls them.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from fleetrl.algorithms.base import clipped_step
from fleetrl.algorithms.td import polyak_update
from fleetrl.models.critics import CategoricalValue, CategoricalValueConfig
from fleetrl.robots.protocol import ArraySpec

# --- distribution maths (pure functions) -------------------------------------------------------------


def c51_project(values: torch.Tensor, probs: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """C51 projection (Bellemare et al. 2017; LWD app. A1): put mass ``probs`` [B, K'] sitting at
    ``values`` [B, K'] onto the fixed, evenly spaced ``atoms`` [K]; returns [B, K].

    Each value is clipped to ``[atoms[0], atoms[-1]]`` and its mass split linearly between the two
    neighbouring atoms (``(1 - f)`` to the lower, ``f`` to the upper, ``f`` its fractional position). A
    value within 1e-4 atom spacings of an atom is snapped to it, so values on atoms give exact one-hots.
    For a scalar target use ``values[:, None]`` with ``probs = 1`` (``scalar_to_categorical``); for a
    distributional Bellman target pass ``r + gamma * atoms`` with the next state's probabilities.
    """
    k = atoms.numel()
    v_min, v_max = atoms[0], atoms[-1]
    pos = (values.clamp(v_min, v_max) - v_min) / ((v_max - v_min) / (k - 1))  # fractional atom index
    snapped = pos.round()
    pos = torch.where((pos - snapped).abs() < 1e-4, snapped, pos)
    lower = pos.floor().clamp(0, k - 1)
    frac = pos - lower
    upper = (lower + 1).clamp(max=k - 1)  # frac is 0 whenever lower is the last atom
    out = torch.zeros(values.shape[0], k, dtype=probs.dtype, device=probs.device)
    out.scatter_add_(1, lower.long(), probs * (1 - frac))
    out.scatter_add_(1, upper.long(), probs * frac)
    return out


def scalar_to_categorical(values: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """The two-hot target ``m(s, a)`` of app. A1 for scalar targets ``values`` [B] -> [B, K]."""
    return c51_project(values[:, None], torch.ones_like(values)[:, None], atoms)


def quantile_readout(
    probs: torch.Tensor, atoms: torch.Tensor, tau: torch.Tensor | float, interpolate: bool = False
) -> torch.Tensor:
    """``Quant_tau`` of categorical distributions ``probs`` [B, K] over ``atoms`` [K]; ``tau`` [B] or scalar.

    ``interpolate=False`` (default) is eq. 23 exactly: the first atom ``z_j`` with ``F(z_j) >= tau``, a
    step function of ``tau``. ``interpolate=True`` reads the quantile off the CDF linearly interpolated
    between atoms, ``z_{j-1} + (tau - F_{j-1}) / p_j * dz`` (continuous in ``tau``; it equals eq. 23
    whenever ``F(z_j) = tau`` exactly); it is below eq. 23's value by less than one atom spacing."""
    cdf = probs.cumsum(-1)
    tau_t = torch.as_tensor(tau, dtype=cdf.dtype, device=cdf.device).expand(cdf.shape[0])
    idx = torch.searchsorted(cdf.contiguous(), tau_t[:, None].contiguous()).clamp(max=atoms.numel() - 1)
    step = atoms[idx[:, 0]]
    if not interpolate:
        return step
    p_j = probs.gather(1, idx)[:, 0]
    cdf_prev = (cdf.gather(1, idx) - probs.gather(1, idx))[:, 0]
    dz = atoms[1] - atoms[0]
    frac = ((tau_t - cdf_prev) / p_j.clamp_min(1e-12)).clamp(0.0, 1.0)
    return torch.where(idx[:, 0] == 0, atoms[0], step - dz + frac * dz)


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Eqs. 17/24: ``H(s) = -sum_i p_i log p_i / log K`` in [0, 1]; ``probs`` [B, K] -> [B]."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(probs.shape[-1])


def entropy_adapted_tau(
    probs: torch.Tensor, tau_base: float, alpha: float, tau_min: float, tau_max: float
) -> torch.Tensor:
    """Eq. 18: ``tau(s) = clip(tau_base - alpha * H(s), tau_min, tau_max)`` (no gradient); [B, K] -> [B].

    Non-increasing in the entropy: confident (peaked) value distributions keep the optimistic
    ``tau_base``, diffuse ones get a more conservative quantile."""
    return (tau_base - alpha * normalized_entropy(probs.detach())).clamp(tau_min, tau_max)


def value_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Eq. 21: ``-E[sum_i m_i log p_psi(i | s)]`` with ``p_psi = softmax(logits)`` (eq. 20); [B, K] each."""
    return -(target_probs.detach() * F.log_softmax(logits, dim=-1)).sum(-1).mean()


# --- the value learner ---------------------------------------------------------------------------------


class DIVLConfig(BaseModel):
    """DIVL's knobs (LWD app. A1, B2). The paper uses K = 201 atoms on [-0.1, 1.1] for 0/1 sparse rewards
    and gamma = 0.9999; set ``value.v_min``/``v_max`` to cover your task's discounted chunk returns and
    ``n_atoms`` so that one atom is small next to one chunk's reward (eq. 23 reads whole atoms)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    value: CategoricalValueConfig = Field(default_factory=CategoricalValueConfig, description="V_psi.")
    lr: float = Field(3e-4, gt=0.0, description="Adam learning rate of V_psi (paper: 5e-4 for its VLM).")
    ema: float = Field(0.005, gt=0.0, le=1.0, description="EMA rate of the target value model (app. B2).")
    tau_base: float = Field(
        0.6, gt=0.0, lt=1.0, description="tau for confident states (0.6 offline, 0.9 online)."
    )
    alpha: float = Field(0.3, ge=0.0, description="Entropy sensitivity of tau (eq. 18).")
    tau_min: float = Field(0.1, gt=0.0, lt=1.0, description="Lower clip of tau (not given by the paper).")
    tau_max: float = Field(0.99, gt=0.0, lt=1.0, description="Upper clip of tau (not given by the paper).")
    bootstrap_from: Literal["online", "ema"] = Field(
        "online", description="V whose quantile bootstraps: V_psi (eqs. 14, 19, Alg. 2) or its EMA copy."
    )
    interpolate: bool = Field(False, description="Interpolated quantile instead of eq. 23's atom.")
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm of V_psi.")


class DIVL:
    """The distributional value model ``V_psi``, its EMA copy and optimizer (Algorithm 2, line 1)."""

    def __init__(self, cfg: DIVLConfig, obs_spec: dict[str, ArraySpec], device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.value = CategoricalValue(cfg.value, obs_spec).to(device)
        self.target = copy.deepcopy(self.value).requires_grad_(False)
        self.optim = torch.optim.Adam(self.value.parameters(), lr=cfg.lr)

    @torch.no_grad()
    def bootstrap(self, next_obs_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Quant_tau(s')`` of ``V_psi`` (or its EMA copy, ``bootstrap_from``) with the entropy-adapted
        ``tau(s')`` (eqs. 17-18, 23); returns (quantiles [B], tau [B], normalised entropy [B])."""
        model = self.value if self.cfg.bootstrap_from == "online" else self.target
        probs = model.logits_flat(next_obs_flat).softmax(-1)
        c = self.cfg
        tau = entropy_adapted_tau(probs, c.tau_base, c.alpha, c.tau_min, c.tau_max)
        return quantile_readout(probs, model.atoms, tau, c.interpolate), tau, normalized_entropy(probs)

    def step(self, obs_flat: torch.Tensor, q_target: torch.Tensor) -> dict[str, float]:
        """One cross-entropy step of ``V_psi(s)`` towards the projected scalar ``q_target`` [B] (eqs. 12,
        21), then the EMA step of its target copy."""
        target = scalar_to_categorical(q_target.detach(), self.value.atoms)
        logits = self.value.logits_flat(obs_flat)
        loss = value_cross_entropy(logits, target)
        clipped_step(loss, self.optim, self.value.parameters(), self.cfg.grad_clip)
        polyak_update(self.target, self.value, self.cfg.ema)
        return {"v_loss": float(loss.detach()), "v_mean": float(self.value.mean(logits.detach()).mean())}

    def state_dict(self) -> dict[str, Any]:
        return {
            "value": self.value.state_dict(),
            "target": self.target.state_dict(),
            "optim": self.optim.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value.load_state_dict(state["value"])
        self.target.load_state_dict(state["target"])
        self.optim.load_state_dict(state["optim"])
