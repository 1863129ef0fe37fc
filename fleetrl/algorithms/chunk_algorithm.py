"""What the algorithms that learn from chunked replay share: AWR, QAM and BC (a flow-matching chunk policy)
and residual adaptation (a residual adapter).

``ChunkAlgorithm`` holds what all four do: read a ``ChunkBatch`` as flat tensors (``chunk_tensors``), train
the policy with AdamW and clip the global gradient norm of every step at ``grad_clip``. Two kinds build on
it:

* ``ActorCriticAlgorithm`` (AWR, QAM): a chunked Q ensemble, its Polyak target copy and their optimizer
  next to the actor's, checkpointed under the same keys;
* ``PolicyOnlyAlgorithm`` (BC, residual adaptation): no critics, one AdamW over what it trains (``optim``).
"""

from __future__ import annotations

import copy
import dataclasses
from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from fleetrl.algorithms.base import Algorithm, AlgorithmConfig, PolicySpec, clipped_step, idle_step
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.diagnostics import random_chunks
from fleetrl.algorithms.td import (
    conservative_penalty,
    ensemble_td_loss,
    observed_return_target,
    polyak_update,
)
from fleetrl.models.critics import ChunkQConfig, ChunkQEnsemble
from fleetrl.models.flow import FlowChunkPolicy
from fleetrl.models.nets import flatten_obs, seeded


@dataclass
class ChunkTensors:
    """A ``ChunkBatch`` as flat float tensors on one device (observations flattened in spec order)."""

    obs: torch.Tensor  # [B, D_obs]
    actions: torch.Tensor  # [B, H * action_size]
    chunk_reward: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, D_obs]
    done: torch.Tensor  # [B] 1.0 where the episode terminated within the chunk (no bootstrap)
    discount: torch.Tensor  # [B] gamma^h
    mask: torch.Tensor  # [B, H * action_size] 1.0 for executed entries of the chunk
    offline: torch.Tensor  # [B] bool
    returns: torch.Tensor  # [B] observed discounted return to the episode's end; NaN where not observed
    folds: torch.Tensor | None = None  # [B] int64: the row's episode's cross-fitting fold (AWR cross_fit)

    def take(self, rows: torch.Tensor) -> ChunkTensors:
        """The rows ``rows`` of every field."""
        return ChunkTensors(
            **{
                f.name: None if (v := getattr(self, f.name)) is None else v[rows]
                for f in dataclasses.fields(self)
            }
        )


def chunk_tensors(
    batch: ChunkBatch,
    obs_keys: list[str],
    device: torch.device | str = "cpu",
    bounds: tuple[float | None, float | None] = (None, None),
) -> ChunkTensors:
    """``bounds``: the action spec's (low, high). Robots record a Gaussian policy's sample, which may lie
    outside them, and execute it clipped: the critics learn the values of what was executed."""
    b = len(batch)
    step_size = int(batch.actions[0, 0].size) if b else 1

    def t(x, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(x, dtype=dtype, device=device)

    obs = flatten_obs({k: t(batch.obs[k]) for k in obs_keys}, obs_keys)
    actions = t(batch.actions).reshape(b, -1)
    if bounds != (None, None):
        actions = actions.clamp(*bounds)
    next_obs = flatten_obs({k: t(batch.next_obs[k]) for k in obs_keys}, obs_keys)
    return ChunkTensors(
        obs=obs,
        actions=actions,
        chunk_reward=t(batch.chunk_reward),
        next_obs=next_obs,
        done=t(batch.done),
        discount=t(batch.discount),
        mask=t(batch.mask).repeat_interleave(step_size, dim=1),
        offline=t(batch.offline, torch.bool),
        returns=t(batch.returns)
        if batch.returns is not None
        else torch.full((b,), float("nan"), device=device),
    )


def chunk_critic_pair(
    cfg: ChunkQConfig, spec: PolicySpec, seed: int, device: torch.device
) -> tuple[ChunkQEnsemble, ChunkQEnsemble]:
    """A seeded chunked Q ensemble and its frozen target copy (AWR and QAM start their critics alike)."""
    with seeded(seed):
        critic = ChunkQEnsemble(cfg, spec.observation_spec, spec.action_spec, spec.chunk_len).to(device)
    return critic, copy.deepcopy(critic).requires_grad_(False)


class ChunkAlgorithmConfig(AlgorithmConfig):
    """Fields of every chunk-replay algorithm."""

    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm of every optimizer step.")

    def adamw_options(self) -> dict[str, Any]:
        """AdamW arguments of the algorithm's optimizers besides the learning rate: torch's defaults."""
        return {}


class ChunkAdamWConfig(ChunkAlgorithmConfig):
    """A chunk-replay algorithm whose AdamW betas and weight decay are knobs (ALOE app. C's settings)."""

    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas (ALOE app. C).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")

    def adamw_options(self) -> dict[str, Any]:
        return {"betas": self.adam_betas, "weight_decay": self.weight_decay}


class ChunkAlgorithm(Algorithm):
    """An algorithm on ``ChunkBatch`` replay. It trains a ``flow_chunk`` policy unless a subclass says
    otherwise (``policy_families``, ``trained_parameters``)."""

    data: ClassVar[Literal["episodes", "chunks"]] = "chunks"
    policy_families: ClassVar[frozenset[str]] = frozenset({"flow_chunk"})
    config: ChunkAlgorithmConfig
    policy: FlowChunkPolicy

    def trained_parameters(self) -> list[nn.Parameter]:
        """The policy parameters the algorithm trains: all of them."""
        return list(self.policy.parameters())

    def policy_adamw(self, lr: float) -> torch.optim.AdamW:
        """The AdamW over ``trained_parameters`` that the algorithm declares as its ``"policy"`` optimizer."""
        return torch.optim.AdamW(self.trained_parameters(), lr=lr, **self.config.adamw_options())

    def tensors(self, batch: ChunkBatch) -> ChunkTensors:
        """``batch`` as flat tensors on the algorithm's device, observations in the policy's key order."""
        a = self.spec.action_spec
        return chunk_tensors(batch, self.policy.obs_keys, self.device, (a.low, a.high))

    def optim_step(
        self, loss: torch.Tensor, optim: torch.optim.Optimizer, params: Iterable[nn.Parameter]
    ) -> float:
        """One ``optim`` step on ``loss``, the gradient norm of ``params`` clipped at ``grad_clip``."""
        return clipped_step(loss, optim, params, self.config.grad_clip)

    def idle_optim_step(self, optim: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> bool:
        """This worker has no loss for ``optim`` this time: ``idle_step`` (a multi-worker learner's other
        workers may step); whether a step was taken."""
        return idle_step(optim, params, self.config.grad_clip)


class ActorCriticConfig(ChunkAlgorithmConfig):
    """The actor and critics of an actor-critic chunk algorithm."""

    critic: ChunkQConfig = Field(
        default_factory=ChunkQConfig, description="Chunked Q ensemble (K critics; K = 2: clipped double Q)."
    )
    actor_lr: float = Field(3e-4, gt=0.0, description="AdamW learning rate of the flow policy.")
    critic_lr: float = Field(3e-4, gt=0.0, description="Learning rate of the critics.")
    critic_target: Literal["td", "mc_bound", "return"] = Field(
        "td",
        description="What the critics regress where a row's episode terminated, so its discounted return G "
        "is known: 'td' the TD target alone; 'mc_bound' max(TD, G) (MCAC, Wilcox et al. 2022: a return "
        "seen is a lower bound on the optimal Q, and reaches the critic at once instead of one chunk per "
        "Polyak time constant); 'return' G itself, the behaviour policy's Q (AWR with lambda = 1, Peng et "
        "al. 2019; one-step RL, Brandfonbrener et al. 2021). Rows without G always use the TD target.",
    )
    conservative_alpha: float = Field(
        0.0, ge=0.0, description="Weight of CQL's conservative term in the critics' loss (Kumar et al. "
        "2020): alpha * mean of logsumexp over proposal chunks of Q_k(s, .) minus Q_k(s, a_data), the "
        "proposals conservative_samples uniformly random chunks and one of the current policy's. It ranks "
        "chunks the data lacks below the data's own, so an actor that follows the critic's action gradient "
        "(QAM) is not led off the data. 0: off (one critic pass per update instead of two).",
    )  # fmt: skip
    conservative_samples: int = Field(
        4, ge=1, le=64, description="Uniformly random proposal chunks per state of the conservative term."
    )
    diagnostics_every: int = Field(
        10, ge=0, description="Updates between the diagnostics' extra forward passes (Q of policy and random "
        "chunks, distances; algorithms/diagnostics.py); 0: never.",
    )  # fmt: skip


class ActorCriticAlgorithm(ChunkAlgorithm):
    """A flow actor against a seeded chunked Q ensemble (``critic``) with a Polyak-averaged copy
    (``target_critic``); ``steps`` counts updates. Subclasses choose the critics' optimizer."""

    config: ActorCriticConfig

    def __init__(self, config: ActorCriticConfig, policy: nn.Module, spec: PolicySpec, device: str = "cpu"):
        super().__init__(config, policy, spec, device)
        self.critic, self.target_critic = chunk_critic_pair(config.critic, spec, config.seed, self.device)
        self.critic_optim = self.critic_optimizer()
        self.actor_optim = self.actor_optimizer()
        self.steps = 0

    @abstractmethod
    def critic_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over ``self.critic``'s parameters."""

    def actor_optimizer(self) -> torch.optim.Optimizer:
        """The ``"policy"`` optimizer: AdamW over ``trained_parameters`` at ``actor_lr``."""
        return self.policy_adamw(self.config.actor_lr)

    def diagnostics_due(self) -> bool:
        """Whether this update (``steps`` so far) also computes the diagnostics."""
        every = self.config.diagnostics_every
        return bool(every) and self.steps % every == 0

    def fit_critics(self, t: ChunkTensors, target: torch.Tensor, polyak: float) -> dict[str, float]:
        """One regression step of every critic head on the TD ``target`` [B] (the ensemble's mean squared
        error), then the Polyak step of the target copy at rate ``polyak``. ``critic_target`` says how the
        row's observed return enters first (``observed_return_target``)."""
        target = observed_return_target(target, t.returns, self.config.critic_target)
        q = self.critic.forward_flat(t.obs, t.actions)
        loss = ensemble_td_loss(q, target)
        metrics = {}
        if self.config.conservative_alpha > 0:
            obs, proposals = self.conservative_proposals(t)
            q_prop = self.critic.forward_flat(obs, proposals).unflatten(1, (-1, t.obs.shape[0]))
            gap = conservative_penalty(q_prop, q)
            loss = loss + self.config.conservative_alpha * gap
            metrics["conservative_gap"] = float(gap.detach())
        grad_norm = self.optim_step(loss, self.critic_optim, self.critic.parameters())
        polyak_update(self.target_critic, self.critic, polyak)
        return metrics | {
            "loss": float(loss.detach()),
            "q_mean": float(q.detach().mean()),
            "target_mean": float(target.mean()),
            "critic_grad_norm": grad_norm,
        }

    @torch.no_grad()
    def conservative_proposals(self, t: ChunkTensors) -> tuple[torch.Tensor, torch.Tensor]:
        """The conservative term's proposal chunks: ``conservative_samples`` uniformly random ones and one
        sampled from the current policy (clipped to the bounds) per state, sample-major, beside the batch's
        observations repeated to match: ([M * B, D_obs], [M * B, D_act]) with M = samples + 1."""
        b, low, high = t.obs.shape[0], float(self.policy.low), float(self.policy.high)
        random = random_chunks(self.config.conservative_samples * b, t.actions, low, high)
        noise = torch.randn(b, self.policy.action_dim, device=t.obs.device)
        policy = self.policy.sample_flat(self.policy.features(t.obs), noise).clamp(low, high)
        m = self.config.conservative_samples + 1
        return t.obs.repeat(m, 1), torch.cat([random, policy])

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.actor_optim, "critic": self.critic_optim}

    def state_dict(self) -> dict[str, Any]:
        return {
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.steps = int(state.get("steps", 0))


class PolicyOnlyConfig(ChunkAdamWConfig):
    """The one optimizer of a chunk algorithm that trains only (part of) the policy."""

    lr: float = Field(3e-4, gt=0.0, description="AdamW learning rate of the parameters trained.")


class PolicyOnlyAlgorithm(ChunkAlgorithm):
    """A chunk algorithm with no networks of its own: one AdamW (``optim``) over ``trained_parameters``."""

    config: PolicyOnlyConfig

    def __init__(self, config: PolicyOnlyConfig, policy: nn.Module, spec: PolicySpec, device: str = "cpu"):
        super().__init__(config, policy, spec, device)
        self.optim = self.policy_adamw(config.lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optim}

    def state_dict(self) -> dict[str, Any]:
        return {"optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optim" in state:
            self.optim.load_state_dict(state["optim"])
