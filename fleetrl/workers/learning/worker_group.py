"""The workers of a multi-worker learner (``learner.num_workers`` K > 1) taking the same steps.

Ray Train starts K workers in one ``torch.distributed`` group (gloo on CPU, NCCL on GPU). Each runs the
learner loop on batches it samples itself, and the algorithms average their gradients across the group
(``algorithms/data_parallel.py``), so the weights stay identical as long as every worker takes the same
steps. This module keeps them in step:

* the leader (rank 0) alone talks to the control actor, publishes weights, reports and writes checkpoints
  (the others report to Ray Train without one: its ``report`` is a barrier every worker must reach);
* every loop turn one small all-reduce tells each worker whether every worker has a batch and whether the
  leader received commands, which it then broadcasts: all update, switch or stop at the same step;
* after a start, a restore or a switch the leader's whole state (policy, every algorithm with its
  optimizers and target networks) goes to the others;
* every ``CHECK_EVERY`` steps the workers compare a checksum of the policy's weights (``in_sync``).

A group of one (the default) does none of this: no collective, no copies.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class WorkerGroup:
    CHECK_EVERY = 100  # learner steps between weight checksums across the workers

    def __init__(self, rank: int = 0, size: int = 1, device: torch.device | None = None):
        self.rank, self.size = rank, size
        self.device = device or torch.device("cpu")
        self.in_sync: bool | None = None  # None until the first check (and always for one worker)
        self.checked_step: int | None = None

    @classmethod
    def of_this_worker(cls, device: torch.device) -> WorkerGroup:
        """The group of the Ray Train worker this runs in."""
        import ray.train

        ctx = ray.train.get_context()
        size = ctx.get_world_size()
        if size > 1 and not dist.is_initialized():
            raise RuntimeError("a multi-worker learner needs Ray Train's torch.distributed group")
        return cls(ctx.get_world_rank(), size, device)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def turn(self, commands: list[dict[str, Any]], has_batch: bool) -> tuple[list[dict[str, Any]], bool]:
        """One loop turn: the leader's ``commands`` (every worker gets them) and whether every worker
        has a batch to update on."""
        if self.size == 1:
            return commands, has_batch
        counts = torch.tensor(
            [float(has_batch), float(len(commands) if self.leader else 0)], device=self.device
        )
        dist.all_reduce(counts)
        if counts[1] > 0:
            commands = self.broadcast(commands if self.leader else None)
        return commands, int(counts[0]) == self.size

    def broadcast(self, obj: Any) -> Any:
        """The leader's ``obj`` on every worker (pickled; for commands and state, not per-step tensors)."""
        if self.size == 1:
            return obj
        box = [obj if self.leader else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def check_sync(self, step: int, policy: nn.Module) -> None:
        """Every ``CHECK_EVERY`` steps (a collective: every worker calls it at the same step): do all the
        workers hold the same policy weights?"""
        if self.size == 1 or step % self.CHECK_EVERY:
            return
        mine = weights_checksum(policy).to(self.device)
        everyone = [torch.zeros_like(mine) for _ in range(self.size)]
        dist.all_gather(everyone, mine)
        self.in_sync = all(torch.equal(everyone[0], other) for other in everyone[1:])
        self.checked_step = step

    def status(self) -> dict[str, Any]:
        return {
            "workers": self.size,
            "workers_in_sync": self.in_sync,
            "workers_checked_at": self.checked_step,
        }


def weights_checksum(module: nn.Module) -> torch.Tensor:
    """Sum and absolute sum of every parameter (float64): equal on two workers when their weights are."""
    params = [p.detach().double() for p in module.parameters()]
    return torch.stack([sum(p.sum() for p in params), sum(p.abs().sum() for p in params)]).cpu()
