"""A state value fitted to the data's own targets by expectile regression (IQL, Kostrikov et al. 2021),
optionally cross-fitted by episode: AWR's ``baseline: data`` (fitted to Q of the data's chunks) and QAM's
``reference_filter`` (fitted to the returns the data's episodes observed).

Why cross-fitting: fitted for long to one target per row, a single value network memorises it (V(s) equals
the row's own target), so target - V is noise and a filter on its sign keeps failing chunks as often as
successful ones (``benchmarks/awr_filter.py``). With ``FOLDS`` networks, each fitted only to the rows of its
share of the episodes (``episode_folds``), a row is judged by a network that never learnt from its episode:
it can only say what *other* episodes got from such states (double machine learning's cross-fitting).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import nn

from fleetrl.models.encoders import EncoderConfig, ObservationEncoder
from fleetrl.models.nets import mlp

FOLDS = 2


def episode_folds(episode_ids, folds: int = FOLDS) -> np.ndarray:
    """Each row's cross-fitting fold in ``[0, folds)``, a stable hash of its episode's id: every row of an
    episode, on every worker and after every restart, falls in the same fold, and the episodes spread
    about evenly."""
    return np.fromiter((zlib.crc32(str(e).encode()) % folds for e in episode_ids), np.int64, len(episode_ids))


def expectile_loss(values: torch.Tensor, target: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric squared error (Kostrikov et al. 2021, eq. 5): ``E[|tau - 1(y - v < 0)| (y - v)^2]``.
    ``expectile`` 0.5 fits the mean (the plain squared error, halved); above 0.5 it leans towards the best
    targets seen in a state. ``values`` and ``target`` [B]; no gradient flows into the target."""
    diff = target.detach() - values
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


class FoldValues(nn.Module):
    """Cross-fitted values: one state-value MLP per fold, no weight shared, features [B, D] -> [B, FOLDS]."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.nets = nn.ModuleList(mlp(in_dim, hidden, 1, layer_norm=True) for _ in range(FOLDS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(x) for net in self.nets], dim=-1)


def data_value_net(
    observation_spec, encoder: EncoderConfig, hidden: tuple[int, ...], cross_fit: bool
) -> nn.Module:
    """Flat observations [B, D_obs] -> values [B, 1] (or [B, FOLDS] with ``cross_fit``); with cameras the
    network has its own encoder in front (no weight shared with the critics or the policy)."""
    enc = ObservationEncoder(observation_spec, encoder)
    head: nn.Module = (
        FoldValues(enc.out_dim, hidden) if cross_fit else mlp(enc.out_dim, hidden, 1, layer_norm=True)
    )
    return nn.Sequential(enc, head) if len(enc.cameras) else head


def fold_value(values: torch.Tensor, folds: torch.Tensor | None, other: bool) -> torch.Tensor:
    """A row's value [B] out of ``data_value_net``'s output: without ``folds`` its only column; with them the
    row's own fold's (``other`` False: what the row trains) or the other fold's (True: what judges it)."""
    if folds is None:
        return values.squeeze(-1)
    pick = (1 - folds) if other else folds
    return values.gather(1, pick.long().view(-1, 1)).squeeze(1)
