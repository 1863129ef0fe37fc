"""Critics for the off-policy learners: a chunked Q ensemble (ALOE §IV-B, LWD eq. 19) and DIVL's
categorical state value (LWD §III-A).

``ChunkQEnsemble`` scores an observation with a whole action chunk: ``Q_k(s_t, a_{t:t+H})`` for K
independently initialised MLPs with LayerNorm, evaluated in one batched pass. ``CategoricalValue`` puts a
distribution over ``n_atoms`` fixed return atoms ``z_i`` evenly spaced on ``[v_min, v_max]``.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fleetrl.models.encoders import EncoderConfig, ObservationEncoder
from fleetrl.models.nets import ensemble_mlp, flatten_obs, mlp
from fleetrl.robots.protocol import ArraySpec


class ChunkQConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    n_critics: int = Field(2, ge=1, le=64, description="Ensemble size K.")
    hidden: tuple[int, ...] = Field((256, 256, 256), description="Hidden widths of each critic.")
    layer_norm: bool = Field(True, description="LayerNorm after every hidden layer.")
    encoder: EncoderConfig = Field(
        default_factory=EncoderConfig,
        description="How camera observations become features (models/encoders.py).",
    )


class ChunkQEnsemble(nn.Module):
    def __init__(
        self, cfg: ChunkQConfig, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int
    ):
        super().__init__()
        self.obs_keys = list(obs_spec)
        self.k = cfg.n_critics
        self.encoder = ObservationEncoder(obs_spec, cfg.encoder)  # one for the ensemble's heads
        self.action_dim = chunk_len * action_spec.size
        self.net = ensemble_mlp(
            cfg.n_critics, self.encoder.out_dim + self.action_dim, cfg.hidden, 1, cfg.layer_norm
        )

    def forward_flat(self, obs_flat: torch.Tensor, actions_flat: torch.Tensor) -> torch.Tensor:
        """[B, D_obs] flat observations, [B, D_act] -> Q values [K, B]."""
        x = torch.cat([self.encoder(obs_flat), actions_flat], dim=-1)
        return self.net(x.unsqueeze(0).expand(self.k, -1, -1)).squeeze(-1)

    def forward(self, obs: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        """obs dict of [B, ...], actions [B, H, *action_shape] -> [K, B]."""
        return self.forward_flat(
            flatten_obs(obs, self.obs_keys), actions.reshape(actions.shape[0], -1).float()
        )


class CategoricalValueConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    n_atoms: int = Field(201, ge=2, le=1001, description="Number of return atoms K (LWD app. A1: 201).")
    v_min: float = Field(-100.0, description="Smallest atom (lowest representable return).")
    v_max: float = Field(0.0, description="Largest atom (highest representable return).")
    hidden: tuple[int, ...] = Field(
        (512, 512, 512, 512), description="Hidden widths (the QAM reference's value networks: 512x4)."
    )
    layer_norm: bool = Field(True, description="LayerNorm after every hidden layer.")
    encoder: EncoderConfig = Field(
        default_factory=EncoderConfig,
        description="How camera observations become features (models/encoders.py).",
    )


class CategoricalValue(nn.Module):
    def __init__(self, cfg: CategoricalValueConfig, obs_spec: dict[str, ArraySpec]):
        super().__init__()
        if cfg.v_max <= cfg.v_min:
            raise ValueError(f"v_max ({cfg.v_max}) must exceed v_min ({cfg.v_min})")
        self.obs_keys = list(obs_spec)
        self.encoder = ObservationEncoder(obs_spec, cfg.encoder)
        self.net = mlp(self.encoder.out_dim, cfg.hidden, cfg.n_atoms, nn.ReLU, cfg.layer_norm)
        self.register_buffer("atoms", torch.linspace(cfg.v_min, cfg.v_max, cfg.n_atoms))

    def logits_flat(self, obs_flat: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(obs_flat))

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, n_atoms]."""
        return self.logits_flat(flatten_obs(obs, self.obs_keys))

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.softmax(-1) * self.atoms).sum(-1)
