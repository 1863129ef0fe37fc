"""Flow-matching action-chunk policy (ALOE §IV-C, LWD §III-B): a velocity field over noisy action chunks.

With noise ``x_0 ~ N(0, I)`` and a data chunk ``x_1``, the straight path ``x_w = (1 - w) x_0 + w x_1`` has
velocity ``x_1 - x_0``; the network ``v(obs, x_w, w)`` regresses it (``flow_matching_loss``). Sampling
integrates ``dx/dw = v`` from ``w = 0`` to 1 with ``steps`` Euler steps. The chunk is flattened to one
vector of ``chunk_len * action_size`` numbers; sampled chunks are clipped to the action bounds.

A flow policy has no tractable log-likelihood, so ``act`` reports NaN log-probs (PPO does not train it).
"""

from __future__ import annotations

import torch
from torch import nn

from fleetrl.models.configs import FlowChunkConfig
from fleetrl.models.nets import ChunkPolicy, mlp
from fleetrl.robots.protocol import ArraySpec


class FlowChunkPolicy(ChunkPolicy):
    # ``act`` branches on no tensor value: a replica may run it traced (inference/backends/traced_act.py)
    straight_line_act = True

    def __init__(
        self, cfg: FlowChunkConfig, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int
    ):
        super().__init__(obs_spec, action_spec, chunk_len, encoder=cfg.encoder)
        self.flow_steps = cfg.flow_steps
        self.register_bounds(action_spec)
        freqs = torch.pi * 2.0 ** torch.arange(cfg.time_features, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)
        in_dim = self.obs_dim + self.action_dim + 2 * self.freqs.numel() + 1
        self.net = mlp(in_dim, cfg.hidden, self.action_dim, nn.SiLU)

    def _time_embedding(self, w: torch.Tensor) -> torch.Tensor:
        angles = w[:, None] * self.freqs
        return torch.cat([w[:, None], angles.sin(), angles.cos()], dim=-1)

    def velocity(self, feat: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """v(obs, x_w, w): ``feat`` [B, obs_dim] the observation's features (``features(obs_flat)``; the
        flat observation itself for a task without cameras), x [B, D_act] flat chunk, w [B] in [0, 1]."""
        return self.net(torch.cat([feat, x, self._time_embedding(w)], dim=-1))

    def sample_flat(self, feat: torch.Tensor, noise: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Euler-integrate the flow from ``noise`` [B, D_act] at features ``feat``; returns the unclipped
        flat chunk."""
        steps = steps or self.flow_steps
        x, dt = noise, 1.0 / steps
        for i in range(steps):
            w = torch.full((x.shape[0],), i * dt, device=x.device)
            x = x + dt * self.velocity(feat, x, w)
        return x

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.encode(obs)
        noise = torch.randn(feat.shape[0], self.action_dim, device=feat.device)
        if deterministic:
            noise = torch.zeros_like(noise)
        chunk = self.to_chunk(self.sample_flat(feat, noise))
        return chunk, torch.full((feat.shape[0],), float("nan"), device=feat.device)


def flow_matching_loss(
    policy: FlowChunkPolicy,
    obs_flat: torch.Tensor,
    actions_flat: torch.Tensor,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(Weighted) conditional flow-matching loss, ALOE eq. 15: E[w * ||v(o, x_w, w) - (x_1 - x_0)||^2].

    ``obs_flat``: the flat observations (``flatten_obs``); their camera keys are encoded here, so the
    policy's encoder trains with it. ``mask`` [B, D_act] leaves padded chunk entries (past the episode's
    end) out of the regression."""
    x1 = actions_flat
    x0 = torch.randn_like(x1)
    w = torch.rand(x1.shape[0], device=x1.device)
    xw = (1 - w[:, None]) * x0 + w[:, None] * x1
    err = (policy.velocity(policy.features(obs_flat), xw, w) - (x1 - x0)).square()
    per_row = err.mean(-1) if mask is None else (err * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    if weights is not None:
        return (weights * per_row).mean()
    return per_row.mean()
