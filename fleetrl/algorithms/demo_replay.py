"""Offline demonstration replay (VLAC §3.2.3, eq. 6): an imitation loss on the human demonstration buffer
applied periodically during online training, for every algorithm and every policy family.

VLAC keeps "an expert demonstration replay buffer, pre-populating it with data collected by human
operators", adds the operator's guided-explore demonstrations to it, and "periodically sample[s] from this
dataset and update[s] the model using negative log-likelihood (NLL) loss"

    L_NLL(theta) = - sum_{(a_t, s_t) in D_human} log pi_theta(a_t | s_t)                       (eq. 6)

Here ``D_human`` is the task's *offline* replay partition (demonstrations, play and imported data; human
demonstrations recorded through the robot client land there too), sampled with ``offline_fraction=1.0``.
A decision is an action chunk, so ``a_t`` is the executed chunk ``a_{t:t+H}`` (steps past the episode's end
left out by ``mask``), and the sum over ``D_human`` is estimated by the mean over a sampled batch (the
factor ``|D_human|`` is absorbed into the weight ``lambda``). The learner takes one optimizer step on
``lambda * L_demo`` every ``every`` steps, after ``Algorithm.update`` (``Algorithm.imitation_step``).

``L_demo`` per policy family (``imitation_loss`` dispatches on the family name):

* ``gaussian_mlp``, ``token_lm``: eq. 6 exactly, the chunk's negative log-likelihood (``chunk_nll``). For
  the token policy that is the token NLL of the rendered action text: the template words are forced (log-
  prob 0), so it is the sum of the number tokens' NLL under the constrained distribution the policy samples
  from; demo actions are rounded onto the number grid as ``render`` writes them.
* ``flow_chunk``: a flow policy has no tractable likelihood; the conditional flow-matching loss (ALOE
  eq. 15-16, ``flow_matching_loss``) is its standard maximum-likelihood surrogate (``flow_imitation_loss``).
* ``residual``: the adapted chunk has no tractable likelihood either (the residual depends on the sampled
  base chunk); the adapter regresses ``x_adapt = x_base + g ⊙ r`` toward the demonstrated chunk, the NLL of
  a fixed-variance Gaussian around ``x_adapt`` up to constants, like Robo-ValueRL's ``L_corr`` on human
  data (``residual_imitation_loss``). Only the adapter moves, at most ``r_max`` from the frozen base.

Any other family whose policy offers ``log_prob(obs, actions, mask)`` gets ``chunk_nll``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.demo_replay_config import DemoReplayConfig  # noqa: F401 - re-exported
from fleetrl.models.flow import flow_matching_loss
from fleetrl.models.nets import flatten_obs


@dataclass
class DemoTensors:
    """A demonstration ``ChunkBatch`` as tensors in the shapes the policies' ``log_prob`` takes."""

    obs: dict[str, torch.Tensor]  # key -> [B, *shape] float32
    actions: torch.Tensor  # [B, H, *action_shape] float32, padded past the episode's end
    mask: torch.Tensor  # [B, H] bool: executed steps

    @property
    def flat_actions(self) -> torch.Tensor:
        return self.actions.reshape(self.actions.shape[0], -1)

    @property
    def flat_mask(self) -> torch.Tensor:
        """[B, H * action_size] float: the step mask spread over each step's action entries."""
        step_size = self.flat_actions.shape[1] // max(self.mask.shape[1], 1)
        return self.mask.float().repeat_interleave(step_size, dim=1)


def demo_tensors(batch: ChunkBatch, obs_keys: list[str], device: torch.device | str = "cpu") -> DemoTensors:
    return DemoTensors(
        obs={k: torch.as_tensor(batch.obs[k], dtype=torch.float32, device=device) for k in obs_keys},
        actions=torch.as_tensor(batch.actions, dtype=torch.float32, device=device),
        mask=torch.as_tensor(batch.mask, dtype=torch.bool, device=device),
    )


# -- the losses (tensors in, a scalar out) -------------------------------------------------------------


def chunk_nll(policy: nn.Module, t: DemoTensors) -> torch.Tensor:
    """VLAC eq. 6 over a batch: mean over rows of ``-log pi(a_{t:t+H} | s_t)``, unexecuted steps left out.
    For policies with an exact chunk log-prob (``gaussian_mlp``, ``token_lm``)."""
    return -policy.log_prob(t.obs, t.actions, t.mask).mean()


def flow_imitation_loss(policy: nn.Module, t: DemoTensors) -> torch.Tensor:
    """Flow-matching surrogate of eq. 6 for ``flow_chunk`` (ALOE eq. 16: BC of the velocity field)."""
    return flow_matching_loss(policy, flatten_obs(t.obs, policy.obs_keys), t.flat_actions, mask=t.flat_mask)


def residual_imitation_loss(policy: nn.Module, t: DemoTensors) -> torch.Tensor:
    """``residual``: mean over rows of ``|| x_adapt - a ||^2`` over the executed chunk entries, with
    ``x_base`` drawn from the frozen base as inference draws it; gradients reach the adapter only."""
    out = policy.adapt(t.obs, policy.base_chunk(t.obs))
    return ((out.adapted - t.flat_actions).square() * t.flat_mask).sum(-1).mean()


FAMILY_LOSSES: dict[str, Callable[[nn.Module, DemoTensors], torch.Tensor]] = {
    "gaussian_mlp": chunk_nll,
    "token_lm": chunk_nll,
    "flow_chunk": flow_imitation_loss,
    "residual": residual_imitation_loss,
}


def imitation_loss(
    policy: nn.Module, family: str, batch: ChunkBatch, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``L_demo`` of a ``family`` policy on ``batch``'s (observation, action chunk) pairs (module doc)."""
    loss_fn = FAMILY_LOSSES.get(family)
    if loss_fn is None:
        if not hasattr(policy, "log_prob"):
            raise ValueError(
                f"demo replay has no imitation loss for policy family {family!r}: it is not one of "
                f"{sorted(FAMILY_LOSSES)} and its policy has no log_prob(obs, actions, mask)"
            )
        loss_fn = chunk_nll
    keys = list(getattr(policy, "obs_keys", batch.obs))
    return loss_fn(policy, demo_tensors(batch, keys, device))
