"""Small building blocks shared by the policies, critics and value models: MLPs, seeded construction, the
policy families' common base (``ChunkPolicy``) and config-plus-weights checkpoints."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from pydantic import BaseModel
from torch import nn

from fleetrl.models.encoders import EncoderConfig, ObservationEncoder
from fleetrl.robots.pending import PENDING_KEY, pending_spec
from fleetrl.robots.protocol import ArraySpec


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build networks inside with deterministic initial weights (``torch.manual_seed(seed)``), leaving the
    global CPU generator as it was: every replica of a pool starts identical, whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def flatten_obs(obs: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """Concatenate observation entries (in spec order) into one float vector per batch row."""
    parts = [obs[k].reshape(obs[k].shape[0], -1).to(torch.float32) for k in keys]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


Cfg = TypeVar("Cfg", bound=BaseModel)
Net = TypeVar("Net", bound=nn.Module)


def config_checkpoint(model: nn.Module, cfg: BaseModel) -> dict[str, Any]:
    """A self-describing snapshot of a model built from one config: the config as JSON and the weights on
    CPU (``from_config_checkpoint`` reads it back)."""
    return {
        "config": cfg.model_dump(mode="json"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def from_config_checkpoint(
    build: Callable[[Cfg], Net], config_cls: type[Cfg], ckpt: Mapping[str, Any]
) -> Net:
    """The model ``config_checkpoint`` saved: ``build`` from its config, then its weights loaded."""
    model = build(config_cls.model_validate(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model


def action_bounds(action_spec: ArraySpec) -> tuple[float, float]:
    """The action's (low, high), infinite where the spec gives no bound."""
    low = -math.inf if action_spec.low is None else float(action_spec.low)
    high = math.inf if action_spec.high is None else float(action_spec.high)
    return low, high


class RunningObsNorm(nn.Module):
    """Running mean and variance of the flat observation, applied as ``clip((x - mean) / sqrt(var + eps),
    -clip, clip)`` (CleanRL's ``NormalizeObservation`` + ``TransformObservation(clip 10)``). It lives inside
    the policy, as buffers, so its statistics travel with the weights to every replica and into each
    published version (PPO recomputes an old log-prob with the statistics that version acted with)."""

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))  # CleanRL's initial count
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch [B, dim] into the statistics (the parallel mean/variance update of Chan et al.)."""
        if x.shape[0] == 0:
            return
        x = x.to(torch.float64)
        n, batch_mean, batch_var = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift, std = self._affine(x.dtype, x.device)
        return torch.clamp((x - shift) / std, -self.clip, self.clip)

    def _affine(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, sqrt(var + eps))`` in the input's dtype, recomputed only when the statistics
        change (an ``update``, a weight load: both bump the buffers' version counters). A replica
        normalises one or two observations per call, where these conversions cost more than the MLP."""
        key = (
            self.mean._version,
            self.var._version,
            self.mean.data_ptr(),
            self.var.data_ptr(),
            dtype,
            device,
        )
        if getattr(self, "_affine_key", None) != key:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors: usable under autograd too
                std = torch.sqrt(self.var.to(device, dtype) + self.eps)
                self._affine_cache = (self.mean.to(device, dtype), std)
            self._affine_key = key
        return self._affine_cache


class ChunkPolicy(nn.Module):
    """What the MLP policy families (Gaussian, flow, residual) know of their task: the observation keys in
    spec order (``encode`` flattens observations in that order), the chunk length and the action's shape.

    ``pending``: the policy also reads the robot's pending actions (``fleetrl.robots.pending``), after the
    observation; a batch without that entry has none pending (all zeros)."""

    def __init__(
        self,
        obs_spec: dict[str, ArraySpec],
        action_spec: ArraySpec,
        chunk_len: int,
        pending: bool = False,
        encoder: EncoderConfig | None = None,
    ):
        """``encoder``: how camera keys become features (``fleetrl.models.encoders``; the identity for a
        task without cameras)."""
        super().__init__()
        self.obs_keys = list(obs_spec)
        self.chunk_len = chunk_len
        self.action_shape = action_spec.shape
        self.step_dim = action_spec.size  # entries of one step's action
        self.action_dim = chunk_len * action_spec.size  # entries of a flat chunk
        self.pending_dim = pending_spec(action_spec, chunk_len).size if pending else 0
        self.encoder = ObservationEncoder(obs_spec, encoder)
        self.obs_dim = self.encoder.out_dim + self.pending_dim

    def features(self, obs_flat: torch.Tensor) -> torch.Tensor:
        """The flat observation (``flatten_obs``, spec order) as the networks read it: camera keys encoded."""
        return self.encoder(obs_flat)

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The feature vector [B, obs_dim] the networks read (camera keys encoded, pending actions after)."""
        flat = self.features(flatten_obs(obs, self.obs_keys))
        if not self.pending_dim:
            return flat
        pending = obs.get(PENDING_KEY)
        if pending is None:
            pending = flat.new_zeros(flat.shape[0], self.pending_dim)
        return torch.cat([flat, pending.reshape(flat.shape[0], -1).to(flat.dtype)], dim=-1)

    def register_bounds(self, action_spec: ArraySpec) -> tuple[float, float]:
        """Keep the action bounds as (non-persistent) ``low``/``high`` buffers for ``to_chunk``; returns them."""
        low, high = action_bounds(action_spec)
        self.register_buffer("low", torch.tensor(low), persistent=False)
        self.register_buffer("high", torch.tensor(high), persistent=False)
        return low, high

    def unflatten(self, flat: torch.Tensor) -> torch.Tensor:
        """Flat chunks [B, H * action_size] -> [B, H, *action_shape]."""
        return flat.reshape(flat.shape[0], self.chunk_len, *self.action_shape)

    def to_chunk(self, flat: torch.Tensor) -> torch.Tensor:
        """Flat chunks clipped to the registered bounds, as [B, H, *action_shape]."""
        return self.unflatten(flat.clamp(self.low, self.high))


def mlp(
    in_dim: int,
    hidden: tuple[int, ...],
    out_dim: int,
    activation: type[nn.Module] = nn.ReLU,
    layer_norm: bool = False,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(activation())
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def layer_norm_mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU blocks, then a linear head (the value and progress models' MLPs)."""
    return mlp(in_dim, hidden, out_dim, activation=nn.SiLU, layer_norm=True)


class EnsembleLinear(nn.Module):
    """K independent linear layers applied in one batched matmul: [K, B, in] -> [K, B, out]."""

    def __init__(self, k: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(k, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(k, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def ensemble_mlp(
    k: int, in_dim: int, hidden: tuple[int, ...], out_dim: int, layer_norm: bool = True
) -> nn.Sequential:
    """K MLPs with independent weights, LayerNorm after each hidden layer (ALOE/LWD critics)."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers.append(EnsembleLinear(k, width, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(nn.ReLU())
        width = h
    layers.append(EnsembleLinear(k, width, out_dim))
    return nn.Sequential(*layers)
