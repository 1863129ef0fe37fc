"""Small building blocks shared by the policies and critics."""

from __future__ import annotations

import math

import torch
from torch import nn


def flatten_obs(obs: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """Concatenate observation entries (in spec order) into one float vector per batch row."""
    parts = [obs[k].reshape(obs[k].shape[0], -1).to(torch.float32) for k in keys]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


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
