"""The demo-replay step's config (pydantic, no torch): task configs carry it, and the processes that only
read task configs must not import torch. The step itself is ``demo_replay.py``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DemoReplayConfig(BaseModel):
    """VLAC eq. 6 demonstration replay in the learner loop (``learner.demo_replay``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    weight: float = Field(
        0.0,
        ge=0.0,
        description="lambda: the demo step minimises lambda * L_demo (VLAC eq. 6 NLL, flow matching for "
        "flow policies) on the task's offline partition; 0 turns demo replay off.",
    )
    batch_size: int = Field(64, ge=1, description="Demonstration chunks per demo step.")
    every: int = Field(1, ge=1, description="One demo step after every N learner updates.")
    min_demos: int = Field(
        1,
        ge=1,
        description="Demonstration episodes the offline partition must hold before demo replay starts.",
    )
    max_grad_norm: float = Field(1.0, gt=0.0, description="Global gradient-norm clip of the demo step.")
    lr: float = Field(
        1e-4,
        gt=0.0,
        description="Learning rate of the demo step's own Adam, used only for an algorithm that keeps no "
        "optimizer over the policy (every built-in one does, and the demo step uses that).",
    )

    def due(self, step: int, offline_steps: int = 0) -> bool:
        """Whether learner update number ``step`` (1-based) is followed by a demo step: on, online (past
        the ``offline_steps`` of pretraining, which sample only offline data anyway), every ``every``."""
        return self.weight > 0 and step > offline_steps and step % self.every == 0
