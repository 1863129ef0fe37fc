"""Data parallelism for every algorithm: gradients averaged across the workers of a multi-worker learner.

A learner with ``num_workers`` K runs K Ray Train workers in one ``torch.distributed`` group, each on its
own batches. DDP's rule is that every worker applies the same averaged gradient, so their weights stay
identical; fleetrl applies it at the one place every algorithm takes an optimizer step (``clipped_step``)
instead of wrapping each network in ``DistributedDataParallel``: algorithms hold several networks (actor,
critic ensembles, values, target copies) and step them in their own order, and all of that keeps working.

A worker whose batch gives it nothing to learn from at some step (no demonstration rows to clone, say)
still takes part: it contributes no gradient, the step averages over the workers that did, and it is
skipped everywhere only when none did. One process (no group, or a group of one) is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Workers in this process's ``torch.distributed`` group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def average_gradients(params: Sequence[nn.Parameter], contributes: bool) -> bool:
    """All-reduce the gradients of ``params`` to their mean over the workers that ``contributes`` (a
    parameter without a gradient on a worker counts as zero there; one that has none anywhere keeps
    none). Returns whether any worker contributed, i.e. whether the optimizer should step."""
    if world_size() == 1 or not params:
        return contributes
    grads = [p.grad for p in params]
    ref = params[0]
    flat = torch.cat(
        [torch.zeros(p.numel(), dtype=torch.float32, device=ref.device) if g is None or not contributes
         else g.detach().reshape(-1).float() for p, g in zip(params, grads, strict=True)]
        + [torch.tensor([float(contributes and g is not None) for g in grads] + [float(contributes)],
                        device=ref.device)]
    )  # fmt: skip
    dist.all_reduce(flat)
    contributors = int(round(float(flat[-1])))
    if contributors == 0:
        return False
    has_grad = flat[-1 - len(params) : -1]
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if has_grad[i] > 0:
            p.grad = (flat[offset : offset + n] / contributors).view_as(p).to(p.dtype)
        else:
            p.grad = None
        offset += n
    return True
