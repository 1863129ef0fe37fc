"""A bounded, gated residual adapter over a frozen base policy (Robo-ValueRL §3.3, eqs. 6-7; app. C.3).

The base policy ``pi_base`` (any other family) proposes a chunk ``x_base``; a small network ``h_phi``
reads the observation and that chunk and predicts an unconstrained residual and one gate logit per chunk
step (eq. 6), ``(r~, g~) = h_phi(s, x_base)``. The residual is bounded, ``r = r_max * tanh(r~)``, the gate
squashed, ``g = sigmoid(g~)``, and the adapted chunk is (eq. 7)

    x_adapt = x_base + g ⊙ r

so ``|x_adapt - x_base| <= r_max`` element-wise whatever ``h_phi`` outputs. The executed chunk is
``x_adapt`` clipped to the action bounds (as every family here clips); losses use the unclipped eq. 7.

Differences from the paper, and why: the paper's ``h_phi`` is a Perceiver over the VLA's action context
``c^a`` plus a small Transformer; our base families share no latent context, so ``h_phi`` is an MLP over
the flattened observation (which holds the robot state ``s_t``) and the flattened base chunk. ``r_max`` is
given as a fraction of the action half-range ``(high - low) / 2`` (absolute units when the action has no
finite bounds). As in app. C.3 the adapter is zero-initialised (its output layer starts at zero weights,
residual bias 0, gate bias ``gate_init``), so at the start ``r = 0`` and ``x_adapt = x_base`` exactly.

Only the adapter is trained and published: ``state_dict`` leaves the frozen base out (replicas rebuild it
from ``base`` + ``base_checkpoint``), and ``load_state_dict`` accepts such an adapter-only dict. The
adapted chunk has no tractable likelihood (the residual depends on the sampled base chunk), so ``act``
reports NaN log-probs, as the flow family does; PPO does not train this family.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from fleetrl.models.configs import BasePolicyConfig, ResidualAdapterConfig  # noqa: F401 - re-exported
from fleetrl.models.nets import ChunkPolicy, mlp
from fleetrl.robots.protocol import ArraySpec

BASE_PREFIX = "base."


class AdapterOutput(NamedTuple):
    """One pass of the adapter over flat chunks [B, D]: eq. 7's pieces."""

    adapted: torch.Tensor  # [B, D] x_base + g ⊙ r, unclipped
    base: torch.Tensor  # [B, D] x_base (no gradient)
    residual: torch.Tensor  # [B, D] r = r_max tanh(r~)
    gate_logits: torch.Tensor  # [B, H] g~, one per chunk step


# --- maths (pure functions) ------------------------------------------------------------------------


def bounded_residual(raw: torch.Tensor, r_max: torch.Tensor | float) -> torch.Tensor:
    """Robo-ValueRL §3.3: ``r = r_max * tanh(r~)``."""
    return r_max * torch.tanh(raw)


def adapted_action(base: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Robo-ValueRL eq. 7: ``x_adapt = x_base + g ⊙ r``; ``gate`` [B, H] is broadcast over each step's
    action entries of the flat chunks ``base``/``residual`` [B, H * A]."""
    step_dim = base.shape[-1] // gate.shape[-1]
    return base + gate.repeat_interleave(step_dim, dim=-1) * residual


def load_base_checkpoint(base: nn.Module, path: str) -> None:
    """Load base weights from ``path``: a state dict, or a learner checkpoint's ``policy`` entry."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("policy"), dict):
        state = state["policy"]
    base.load_state_dict(state)


# --- the policy ------------------------------------------------------------------------------------


class ResidualAdapterPolicy(ChunkPolicy):
    """``act`` like any other family; ``base`` is frozen (no gradient, always in eval mode)."""

    def __init__(
        self,
        cfg: ResidualAdapterConfig,
        base: nn.Module,
        obs_spec: dict[str, ArraySpec],
        action_spec: ArraySpec,
        chunk_len: int,
    ):
        super().__init__(obs_spec, action_spec, chunk_len, encoder=cfg.encoder)
        if cfg.base_checkpoint is not None:
            load_base_checkpoint(base, cfg.base_checkpoint)
        self.base = base.requires_grad_(False).eval()
        low, high = self.register_bounds(action_spec)
        half_range = (high - low) / 2 if math.isfinite(low) and math.isfinite(high) else 1.0
        self.register_buffer("r_max", torch.tensor(cfg.max_residual * half_range), persistent=False)
        self.net = mlp(self.obs_dim + self.action_dim, cfg.hidden, self.action_dim + chunk_len, nn.SiLU)
        with torch.no_grad():  # zero-initialised (app. C.3): r = 0 at the start, so x_adapt = x_base
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()
            self.net[-1].bias[self.action_dim :] = cfg.gate_init

    # -- training-side API ----------------------------------------------------------------------------
    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters (h_phi); the base's are frozen."""
        return self.net.parameters()

    @torch.no_grad()
    def base_chunk(self, obs: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        """The frozen base policy's flat chunk x_base [B, D] (no gradient)."""
        chunk, _ = self.base.act(obs, deterministic)
        return chunk.reshape(chunk.shape[0], -1).float()

    def adapt(self, obs: dict[str, torch.Tensor], base: torch.Tensor) -> AdapterOutput:
        """Eqs. 6-7 for flat base chunks ``base`` [B, D]: the adapted chunk (unclipped) and its pieces."""
        out = self.net(torch.cat([self.encode(obs), base], dim=-1))
        residual = bounded_residual(out[:, : self.action_dim], self.r_max)
        gate_logits = out[:, self.action_dim :]
        return AdapterOutput(
            adapted_action(base, torch.sigmoid(gate_logits), residual), base, residual, gate_logits
        )

    # -- the interface inference backends and evaluation loops use ------------------------------------
    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted chunks [B, H, *action_shape] clipped to the bounds, and NaN log-probs [B]."""
        out = self.adapt(obs, self.base_chunk(obs, deterministic))
        nan = torch.full((out.adapted.shape[0],), float("nan"), device=out.adapted.device)
        return self.to_chunk(out.adapted), nan

    def train(self, mode: bool = True) -> ResidualAdapterPolicy:
        """The base stays in eval mode (frozen: no dropout or norm-statistics updates)."""
        super().train(mode)
        self.base.eval()
        return self

    # -- what is published and checkpointed: the adapter only ----------------------------------------
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False):
        """The adapter's weights only: the frozen base is rebuilt from config, never published."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if k.startswith(prefix + BASE_PREFIX)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        """Accepts an adapter-only dict (what ``state_dict`` gives); base entries, if present, load too."""
        base_state = {BASE_PREFIX + k: v for k, v in self.base.state_dict().items()}
        return super().load_state_dict({**base_state, **state_dict}, strict=strict, assign=assign)
