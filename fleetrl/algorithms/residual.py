"""Online residual policy adaptation (Robo-ValueRL §3.3 "Training Recipe", eq. 8; appendix C.3).

Only the adapter ``h_phi`` of a ``residual`` policy is trained; the base policy stays frozen. Each batch
row belongs to one of three sets:

* ``D_on^+``: online rows of high action quality (``high_quality_weights`` below);
* ``D_on^-``: the other online rows: used by no loss (there is no corrected action to learn from them);
* ``D_off``: offline rows (demonstrations, the base policy's own prior).

and the adapter minimises (eq. 8) ``L = L_corr + lambda_keep L_keep + lambda_gate L_gate`` with

    L_corr = E_{D_on^+} || x_adapt - x ||^2          (move toward the executed high-quality chunk x)
    L_keep = E_{D_off}  || x_adapt - x_base ||^2     (behaviour preservation: stay near the frozen base)
    L_gate = E_{D_on^+ ∪ D_off} [ CE(g, y^g) ]       (y^g = 1 on D_on^+, 0 on D_off: app. C.3)

where ``x_adapt = x_base + g ⊙ r`` (eq. 7, models/residual.py) and ``||.||^2`` sums the chunk's executed
entries (padding past an episode's end is left out). The gate cross-entropy is per chunk step, averaged
over executed steps.

Action quality. The paper thresholds a value improvement ``Δv = V(o_{t+Δ}) - V(o_t)`` with a positive
margin ``δ+`` (§3.1, ``q_act = 2``). ``ChunkBatch`` carries no quality field, so we take ``Δv`` from the
rewards: ``Δv ≈ sum_{k<h} r_{t+k}``, the undiscounted reward over the chunk's executed steps, which is
exactly the value improvement over the chunk when rewards are progress increments (a progress critic
scored the steps). An online row is in ``D_on^+`` when that sum exceeds ``delta_plus``; with
``interventions_high_quality`` an operator-executed chunk counts as high quality too (DAgger-style; the
paper scores human corrections with the value model instead). Choose ``delta_plus`` on the scale of the
task's rewards. The paper mixes online and offline rows 3:1: set the replay's ``offline_fraction`` to 0.25.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fleetrl.algorithms.base import AlgorithmConfig
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.chunk_algorithm import PolicyOnlyAlgorithm, PolicyOnlyConfig
from fleetrl.models.residual import ResidualAdapterPolicy

# --- loss maths (pure functions) -------------------------------------------------------------------


def high_quality_weights(
    step_rewards: torch.Tensor,
    offline: torch.Tensor,
    intervention: torch.Tensor,
    delta_plus: float,
    interventions_high_quality: bool = False,
) -> torch.Tensor:
    """1.0 for rows of ``D_on^+``, else 0.0 [B]: online rows whose summed chunk reward (``step_rewards``
    [B, H], 0 past the episode's end; the Δv proxy) exceeds ``delta_plus``, optionally also online rows an
    operator executed (``intervention`` [B] bool). ``offline`` [B] bool rows are never high quality."""
    good = step_rewards.sum(-1) > delta_plus
    if interventions_high_quality:
        good = good | intervention
    return (good & ~offline).float()


def _subset_mean(per_row: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """E over the rows with weight 1 (0 when there are none), i.e. the weighted mean of ``per_row``."""
    return (weights * per_row).sum() / weights.sum().clamp_min(1.0)


def correction_loss(
    adapted: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Robo-ValueRL §3.3: ``L_corr = E_{D_on^+} || x_adapt - x ||^2`` over flat chunks [B, D]; ``mask``
    [B, D] keeps executed entries, ``weights`` [B] marks ``D_on^+``."""
    return _subset_mean(((adapted - actions).square() * mask).sum(-1), weights)


def keep_loss(
    adapted: torch.Tensor, base: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Robo-ValueRL §3.3: ``L_keep = E_{D_off} || x_adapt - x_base ||^2``; ``weights`` [B] marks ``D_off``."""
    return _subset_mean(((adapted - base.detach()).square() * mask).sum(-1), weights)


def gate_loss(
    gate_logits: torch.Tensor, step_mask: torch.Tensor, open_rows: torch.Tensor, closed_rows: torch.Tensor
) -> torch.Tensor:
    """Robo-ValueRL §3.3 / app. C.3: ``L_gate = E_{D_on^+ ∪ D_off} [CE(g, y^g)]`` with ``y^g = 1`` on
    ``open_rows`` (D_on^+) and 0 on ``closed_rows`` (D_off); ``gate_logits`` [B, H] are ``g~``,
    ``step_mask`` [B, H] keeps executed steps. Binary cross-entropy on logits (stable)."""
    target = open_rows[:, None].expand_as(gate_logits)
    ce = F.binary_cross_entropy_with_logits(gate_logits, target, reduction="none")
    per_row = (ce * step_mask).sum(-1) / step_mask.sum(-1).clamp_min(1.0)
    return _subset_mean(per_row, ((open_rows + closed_rows) > 0).float())


def adapter_objective(
    l_corr: torch.Tensor, l_keep: torch.Tensor, l_gate: torch.Tensor, lambda_keep: float, lambda_gate: float
) -> torch.Tensor:
    """Robo-ValueRL eq. 8: ``L_adapter = L_corr + lambda_keep L_keep + lambda_gate L_gate``."""
    return l_corr + lambda_keep * l_keep + lambda_gate * l_gate


# --- the plug-in ------------------------------------------------------------------------------------


class ResidualConfig(PolicyOnlyConfig):
    """The paper gives no values for lambda_keep, lambda_gate or the optimiser; these are small-MLP
    defaults. App. C.3 caps each update round at 900 steps (the learner's ``max_updates``)."""

    lambda_keep: float = Field(0.1, ge=0.0, description="Weight of the behaviour-preservation loss L_keep.")
    lambda_gate: float = Field(0.1, ge=0.0, description="Weight of the gate cross-entropy L_gate.")
    delta_plus: float = Field(
        0.0, description="Online rows whose summed chunk reward (the Δv proxy) exceeds this are D_on^+."
    )
    interventions_high_quality: bool = Field(
        False, description="Also count operator-executed online chunks as high quality."
    )
    deterministic_base: bool = Field(
        False,
        description="Draw x_base as act(deterministic=True) does; keep it as the task's inference runs "
        "the policy (the backends sample: False).",
    )


class ResidualAdaptation(PolicyOnlyAlgorithm):
    name: ClassVar[str] = "residual"
    config_cls: ClassVar[type[AlgorithmConfig]] = ResidualConfig
    policy_families: ClassVar[frozenset[str]] = frozenset({"residual"})
    config: ResidualConfig
    policy: ResidualAdapterPolicy

    def trained_parameters(self) -> list[nn.Parameter]:
        """The adapter h_phi's parameters (``lr`` is its learning rate); the base policy stays frozen."""
        return list(self.policy.adapter_parameters())

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg, keys = self.config, self.policy.obs_keys
        t = self.tensors(batch)
        rewards = torch.as_tensor(batch.rewards, dtype=torch.float32, device=self.device)
        intervention = torch.as_tensor(batch.intervention, dtype=torch.bool, device=self.device)
        hq = high_quality_weights(
            rewards, t.offline, intervention, cfg.delta_plus, cfg.interventions_high_quality
        )
        off = t.offline.float()
        rows = (hq > 0) | t.offline  # D_on^- takes part in no loss: skip its forward passes
        n_rows = int(rows.sum())
        stats = {
            "high_quality_fraction": float(hq.mean()) if len(batch) else 0.0,
            "adapter_rows": float(n_rows),
        }
        if n_rows == 0:
            return stats
        obs = {k: torch.as_tensor(batch.obs[k], device=self.device)[rows] for k in keys}
        step_mask = torch.as_tensor(batch.mask, dtype=torch.float32, device=self.device)[rows]
        hq, off, mask, actions = hq[rows], off[rows], t.mask[rows], t.actions[rows]
        out = self.policy.adapt(obs, self.policy.base_chunk(obs, cfg.deterministic_base))
        l_corr = correction_loss(out.adapted, actions, mask, hq)
        l_keep = keep_loss(out.adapted, out.base, mask, off)
        l_gate = gate_loss(out.gate_logits, step_mask, hq, off)
        loss = adapter_objective(l_corr, l_keep, l_gate, cfg.lambda_keep, cfg.lambda_gate)
        grad_norm = self.optim_step(loss, self.optim, self.trained_parameters())
        gate = torch.sigmoid(out.gate_logits.detach()).mean(-1)
        return stats | {
            "adapter_loss": loss.item(),
            "corr_loss": l_corr.item(),
            "keep_loss": l_keep.item(),
            "gate_loss": l_gate.item(),
            "gate_mean_online": _subset_mean(gate, hq).item(),
            "gate_mean_offline": _subset_mean(gate, off).item(),
            "residual_abs_mean": out.residual.detach().abs().mean().item(),
            "grad_norm": grad_norm,
        }
