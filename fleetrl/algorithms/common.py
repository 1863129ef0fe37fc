"""Helpers every torch learner shares: batches to tensors, Polyak averaging, optimizer construction."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fleetrl.algorithms.base import PolicySpec
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.models.critics import ChunkQConfig, ChunkQEnsemble
from fleetrl.models.nets import flatten_obs


@dataclass
class ChunkTensors:
    """A ``ChunkBatch`` as flat float tensors on one device (observations flattened in spec order)."""

    obs: torch.Tensor  # [B, D_obs]
    actions: torch.Tensor  # [B, H * action_size]
    chunk_reward: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, D_obs]
    not_done: torch.Tensor  # [B] 1.0 where the target bootstraps
    discount: torch.Tensor  # [B] gamma^h
    mask: torch.Tensor  # [B, H * action_size] 1.0 for executed entries of the chunk
    offline: torch.Tensor  # [B] bool


def chunk_tensors(batch: ChunkBatch, obs_keys: list[str], device: torch.device | str = "cpu") -> ChunkTensors:
    b = len(batch)
    step_size = int(batch.actions[0, 0].size) if b else 1

    def t(x, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(x, dtype=dtype, device=device)

    obs = flatten_obs({k: t(batch.obs[k]) for k in obs_keys}, obs_keys)
    next_obs = flatten_obs({k: t(batch.next_obs[k]) for k in obs_keys}, obs_keys)
    return ChunkTensors(
        obs=obs,
        actions=t(batch.actions).reshape(b, -1),
        chunk_reward=t(batch.chunk_reward),
        next_obs=next_obs,
        not_done=1.0 - t(batch.done),
        discount=t(batch.discount),
        mask=t(batch.mask).repeat_interleave(step_size, dim=1),
        offline=t(batch.offline, torch.bool),
    )


def chunk_critic_pair(
    cfg: ChunkQConfig, spec: PolicySpec, seed: int, device: torch.device
) -> tuple[ChunkQEnsemble, ChunkQEnsemble]:
    """A seeded chunked Q ensemble and its frozen target copy (AWR and QAM start their critics alike)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = ChunkQEnsemble(cfg, spec.observation_spec, spec.action_spec, spec.chunk_len).to(device)
    return critic, copy.deepcopy(critic).requires_grad_(False)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, parameters and buffers alike."""
    for tp, sp in zip(target.parameters(), source.parameters(), strict=True):
        tp.lerp_(sp, tau)
    for tb, sb in zip(target.buffers(), source.buffers(), strict=True):
        tb.copy_(sb)
