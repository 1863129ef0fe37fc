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

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from fleetrl.algorithms.base import Algorithm, AlgorithmConfig, PolicySpec
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.common import chunk_tensors
from fleetrl.models.flow import FlowChunkPolicy, flow_matching_loss


class BCConfig(AlgorithmConfig):
    lr: float = Field(3e-4, gt=0.0, description="AdamW learning rate.")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm.")
    offline_only: bool = Field(False, description="Clone only the batch rows with offline=True (demos).")
    human_only: bool = Field(
        False, description="Clone only demonstrations and online chunks an operator intervened in."
    )


class BC(Algorithm):
    name: ClassVar[str] = "bc"
    config_cls: ClassVar[type[AlgorithmConfig]] = BCConfig
    data: ClassVar[Literal["episodes", "chunks"]] = "chunks"
    policy_families: ClassVar[frozenset[str]] = frozenset({"flow_chunk"})
    config: BCConfig
    policy: FlowChunkPolicy

    def __init__(self, config: BCConfig, policy: nn.Module, spec: PolicySpec, device: str = "cpu"):
        super().__init__(config, policy, spec, device)
        self.optim = torch.optim.AdamW(
            self.policy.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )

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
        t = chunk_tensors(batch, self.policy.obs_keys, self.device)
        obs, actions, mask = t.obs, t.actions, t.mask
        rows = self._rows(batch)
        if rows is not None:
            keep = torch.as_tensor(rows, device=self.device)
            obs, actions, mask = obs[keep], actions[keep], mask[keep]
        if obs.shape[0] == 0:
            return {"bc_rows": 0.0}
        loss = flow_matching_loss(self.policy, obs, actions, mask=mask)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
        self.optim.step()
        return {"bc_loss": loss.item(), "bc_rows": float(obs.shape[0]), "grad_norm": grad_norm.item()}

    def state_dict(self) -> dict[str, Any]:
        return {"optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optim" in state:
            self.optim.load_state_dict(state["optim"])
