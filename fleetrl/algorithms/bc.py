"""Behaviour cloning of a flow-matching chunk policy (ALOE appendix C-3, eq. 16).

    L_BC = E_D || v_theta(a_w, s, w) - (a_{t:t+h} - eps) ||^2,   a_w = w a_{t:t+h} + (1 - w) eps

i.e. ``flow_matching_loss`` with unit weights; padded chunk entries (past the episode's end, ``mask = 0``)
are left out of the regression. With ``offline_only`` only the batch rows drawn from the offline partition
(demonstrations) are cloned, which is how a policy is warm-started before RL (ALOE Algorithm 1, line 1).
With ``human_only`` the rows people produced are cloned: the offline partition plus online chunks in which
an operator intervened (HG-DAgger: the fleet's own autonomous actions, good or bad, are not imitated; the
corrections operators make where the policy gets stuck are).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from fleetrl.algorithms.base import AlgorithmConfig
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.chunk_algorithm import PolicyOnlyAlgorithm, PolicyOnlyConfig
from fleetrl.models.flow import flow_matching_loss


class BCConfig(PolicyOnlyConfig):
    """Flow-matching behaviour cloning; ``offline_only`` / ``human_only`` choose the rows it clones."""

    offline_only: bool = Field(False, description="Clone only the batch rows with offline=True (demos).")
    human_only: bool = Field(
        False, description="Clone only demonstrations and online chunks an operator intervened in."
    )


class BC(PolicyOnlyAlgorithm):
    name: ClassVar[str] = "bc"
    config_cls: ClassVar[type[AlgorithmConfig]] = BCConfig
    config: BCConfig

    def _rows(self, batch: ChunkBatch) -> Any:
        """The batch rows to clone (a numpy bool mask), or None for all of them."""
        if self.config.offline_only:
            return batch.offline
        if self.config.human_only:
            return batch.offline | batch.intervention
        return None

    def ready_to_update(self, batch: ChunkBatch) -> bool:
        rows = self._rows(batch)
        return bool(rows.any()) if rows is not None else len(batch) > 0

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        t = self.tensors(batch)
        obs, actions, mask = t.obs, t.actions, t.mask
        rows = self._rows(batch)
        if rows is not None:
            keep = torch.as_tensor(rows, device=self.device)
            obs, actions, mask = obs[keep], actions[keep], mask[keep]
        if obs.shape[0] == 0:
            self.idle_optim_step(self.optim, self.trained_parameters())
            return {"bc_rows": 0.0}
        loss = flow_matching_loss(self.policy, obs, actions, mask=mask)
        grad_norm = self.optim_step(loss, self.optim, self.trained_parameters())
        return {"bc_loss": loss.item(), "bc_rows": float(obs.shape[0]), "grad_norm": grad_norm}
