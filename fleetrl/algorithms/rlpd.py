"""RLPD (Ball et al. 2023, "Efficient Online Reinforcement Learning with Offline Data"): soft actor-critic
over action chunks with a LayerNorm critic ensemble, a random-subset target minimum, a high update-to-data
ratio and symmetric offline/online sampling; the off-policy learner HIL-SERL, LeRobot and RLinf use for
real-robot RL. The maths is ``sac_math.py``'s; this class orchestrates it.

* **Actor**: the task's ``gaussian_mlp`` policy (``models/gaussian.py``, PPO's family, served by every
  torch backend): a diagonal Gaussian over the whole flat chunk, tanh-squashed into the action bounds, so
  its log-prob (and the entropy bonus) is exact. Its standard deviation is a state-independent parameter
  where RLPD's TanhNormal has a state-dependent head: the family is reused as it is so the platform serves
  RLPD's policy unchanged and a live switch between ``ppo`` and ``rlpd`` keeps the weights (``flow_chunk``
  has no tractable log-prob for the entropy term). The policy must squash (``policy.squash: true``).
* **Critics**: ``critic.n_critics`` = 10 chunked Q heads with LayerNorm, Polyak targets (``tau``); each
  target takes the minimum over ``target_subset`` = 2 target heads drawn at random per update, and backs
  up the entropy (``backup_entropy``); every head regresses it (td.py's ``ensemble_td_loss``).
* **Update-to-data ratio**: a learner step asks replay for ``utd * batch_size`` chunks and takes ``utd``
  critic steps, each on its own disjoint ``batch_size`` slice (strided, so each keeps the batch's
  offline/online mix), then one actor and one temperature step on the last slice (the reference's order).
* **Offline/online mix**: RLPD samples half of every batch from the offline data. That is the replay's
  ``offline_fraction`` (``ReplayConfig``, default 0.5), not this plug-in's: keep it at 0.5 for RLPD.
* **Temperature**: ``alpha = exp(log_alpha)`` from ``init_temperature``, tuned toward ``target_entropy``
  (default ``-dim(A) / 2`` over the flat chunk, the default of the RLPD and HIL-SERL code; SAC's paper
  uses ``-dim(A)``). ``init_temperature`` is HIL-SERL's 0.01 (its ``make_sac_*_agent``
  ``temperature_init=1e-2``), the real-robot setting: RLPD's 1.0 suits its 10^5-10^6-step runs, where
  log alpha, moving about ``temp_lr`` per step under Adam, has time to fall.

Defaults are the RLPD reference's (github.com/ikostrikov/rlpd: ``configs/rlpd_config.py`` num_qs 10,
num_min_qs 2, critic_layer_norm; ``configs/sac_config.py``/``td_config.py`` lrs 3e-4, hidden (256, 256),
tau 0.005, backup_entropy; ``train_finetuning.py`` batch 256; README utd_ratio 20; Adam without gradient
clipping), but for the initial temperature (above).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from fleetrl.algorithms.base import AlgorithmConfig, BatchRequest, PolicySpec, clipped_step
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.chunk_algorithm import ActorCriticAlgorithm, ActorCriticConfig, ChunkTensors
from fleetrl.algorithms.diagnostics import action_distance, q_diagnostics, return_correlation, uniform_chunks
from fleetrl.algorithms.sac_math import (
    random_subset,
    sac_actor_loss,
    soft_chunk_target,
    squashed_rsample,
    strided_slices,
    temperature_loss,
)
from fleetrl.models.critics import ChunkQConfig
from fleetrl.models.gaussian import GaussianChunkPolicy
from fleetrl.robots.protocol import ArraySpec

RLPD_CRITIC = ChunkQConfig(n_critics=10, hidden=(256, 256), layer_norm=True)


class RLPDConfig(ActorCriticConfig):
    """RLPD's knobs (defaults from the reference, module docstring). ``batch_size`` is one critic
    minibatch; a learner step samples ``utd * batch_size`` chunks."""

    utd: int = Field(20, ge=1, le=256, description="Critic updates per learner step (update-to-data ratio).")
    critic: ChunkQConfig = Field(RLPD_CRITIC, description="Critic ensemble: K heads with LayerNorm.")
    target_subset: int = Field(2, ge=1, description="Target heads drawn per update for the min (RLPD's M).")
    actor_lr: float = Field(3e-4, gt=0.0, description="Adam learning rate of the policy.")
    critic_lr: float = Field(3e-4, gt=0.0, description="Adam learning rate of the critics.")
    temp_lr: float = Field(3e-4, gt=0.0, description="Adam learning rate of log alpha.")
    tau: float = Field(0.005, gt=0.0, le=1.0, description="Polyak coefficient of the target critics.")
    init_temperature: float = Field(
        0.01, gt=0.0, description="Initial entropy temperature alpha (HIL-SERL's; RLPD's code starts at 1)."
    )
    target_entropy: float | None = Field(
        None, description="Entropy target of the flat chunk's policy; None: -dim(A) / 2 (the reference's)."
    )
    backup_entropy: bool = Field(True, description="Subtract alpha * log pi(a'|s') in the critic target.")
    grad_clip: float | None = Field(None, gt=0.0, description="Max global gradient norm; None: no clipping.")

    @model_validator(mode="after")
    def _subset_fits(self) -> RLPDConfig:
        if self.target_subset > self.critic.n_critics:
            raise ValueError(
                f"target_subset ({self.target_subset}) exceeds critic.n_critics ({self.critic.n_critics})"
            )
        return self


def split_obs(flat: torch.Tensor, obs_spec: dict[str, ArraySpec]) -> dict[str, torch.Tensor]:
    """Flat observations [B, D] (``flatten_obs`` in spec order) back into the spec's entries."""
    out, at = {}, 0
    for key, spec in obs_spec.items():
        out[key] = flat[:, at : at + spec.size].reshape(flat.shape[0], *spec.shape)
        at += spec.size
    return out


class RLPD(ActorCriticAlgorithm):
    name: ClassVar[str] = "rlpd"
    config_cls: ClassVar[type[AlgorithmConfig]] = RLPDConfig
    policy_families: ClassVar[frozenset[str]] = frozenset({"gaussian_mlp"})
    config: RLPDConfig
    policy: GaussianChunkPolicy

    def __init__(self, config: RLPDConfig, policy: nn.Module, spec: PolicySpec, device: str = "cpu"):
        super().__init__(config, policy, spec, device)
        a = spec.action_spec
        if not getattr(policy, "squash", False) or a.low is None or a.high is None:
            raise ValueError(
                "rlpd needs a tanh-squashed gaussian_mlp policy (policy.squash: true) and bounds"
            )
        self.center, self.scale = (a.high + a.low) / 2, (a.high - a.low) / 2
        self.action_dim = spec.chunk_len * a.size
        self.target_entropy = (
            -self.action_dim / 2 if config.target_entropy is None else float(config.target_entropy)
        )
        self.log_alpha = torch.tensor(math.log(config.init_temperature), device=self.device).requires_grad_()
        self.temp_optim = torch.optim.Adam([self.log_alpha], lr=config.temp_lr)
        self.generator = torch.Generator().manual_seed(config.seed)  # the target subsets
        self.last_diagnostics: dict[str, float] = {}

    def critic_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr)

    def actor_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trained_parameters(), lr=self.config.actor_lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return super().optimizers() | {"temperature": self.temp_optim}

    def batch_request(self) -> BatchRequest:
        return BatchRequest("chunks", self.config.batch_size * self.config.utd)

    def optim_step(self, loss: torch.Tensor, optim: torch.optim.Optimizer, params) -> float:
        """One step; clips the gradient norm at ``grad_clip`` when set (the reference does not clip)."""
        return clipped_step(loss, optim, params, self.config.grad_clip or math.inf)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def pi(self, obs_flat: torch.Tensor) -> torch.distributions.Normal:
        """The policy's pre-squash Gaussian at flat observations (the one its replicas sample)."""
        return self.policy.distribution(split_obs(obs_flat, self.spec.observation_spec))

    def critic_step(self, t: ChunkTensors) -> dict[str, float]:
        """One soft TD step of every head on the subset-min target, then the Polyak step."""
        with torch.no_grad():
            next_a, next_logp = squashed_rsample(self.pi(t.next_obs), self.center, self.scale)
            subset = random_subset(self.critic.k, self.config.target_subset, self.generator).to(self.device)
            next_q = self.target_critic.forward_flat(t.next_obs, next_a)[subset]
            target = soft_chunk_target(
                t.chunk_reward, t.discount, t.done, next_q, next_logp, self.alpha, self.config.backup_entropy
            )
        fit = self.fit_critics(t, target, self.config.tau)
        return {"critic_loss": fit.pop("loss"), **fit}

    def actor_step(self, t: ChunkTensors) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """The reparameterised actor step, then the temperature step on its entropy estimate. Returns the
        metrics, the sampled chunks and the entropy estimate."""
        actions, log_prob = squashed_rsample(self.pi(t.obs), self.center, self.scale)
        self.critic.requires_grad_(False)  # the action gradient only; the critics' own step is critic_step's
        try:
            q = self.critic.forward_flat(t.obs, actions)
            loss = sac_actor_loss(log_prob, q, self.alpha)
            grad_norm = self.optim_step(loss, self.actor_optim, self.trained_parameters())
        finally:
            self.critic.requires_grad_(True)
        entropy = -log_prob.detach().mean()
        temp_loss = temperature_loss(self.log_alpha, entropy, self.target_entropy)
        self.optim_step(temp_loss, self.temp_optim, [self.log_alpha])
        metrics = {
            "actor_loss": loss.item(),
            "actor_grad_norm": grad_norm,
            "entropy": float(entropy),
            "target_entropy": self.target_entropy,
            "temperature_loss": temp_loss.item(),
            "alpha": float(self.alpha),
        }
        return metrics, actions.detach(), entropy

    @torch.no_grad()
    def diagnostics(self, t: ChunkTensors, pi_actions: torch.Tensor) -> dict[str, float]:
        """Q (ensemble mean, what the actor climbs) of the data's, the policy's and uniform chunks; Q's
        correlation with observed returns; the deterministic policy's distance to the data."""
        low = torch.full((self.action_dim,), self.center - self.scale, device=self.device)
        q_data = self.critic.forward_flat(t.obs, t.actions).mean(0)
        q_pi = self.critic.forward_flat(t.obs, pi_actions).mean(0)
        q_rand = self.critic.forward_flat(t.obs, uniform_chunks(len(t.obs), low, low + 2 * self.scale)).mean(
            0
        )
        out = q_diagnostics(q_data, q_pi, q_rand)
        mean_chunk = self.center + self.scale * torch.tanh(self.pi(t.obs).mean)
        out["policy_to_data"] = action_distance(mean_chunk, t.actions, t.mask)
        corr = return_correlation(q_data, t.returns)
        if corr is not None:
            out["q_return_corr"] = corr
        return out

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        t = self.tensors(batch)
        parts = min(self.config.utd, len(t.obs))
        slices = strided_slices(len(t.obs), parts)
        sums: dict[str, float] = {}
        for rows in slices:
            for k, v in self.critic_step(t.take(rows.to(self.device))).items():
                sums[k] = sums.get(k, 0.0) + v
        metrics = {k: v / parts for k, v in sums.items()}  # means over the step's critic updates
        last = t.take(slices[-1].to(self.device))
        actor_metrics, pi_actions, _ = self.actor_step(last)
        if self.diagnostics_due():  # between refreshes the last values are reported again
            self.last_diagnostics = self.diagnostics(last, pi_actions)
        self.steps += 1
        return {
            **metrics,
            **actor_metrics,
            **self.last_diagnostics,
            "critic_updates": float(parts),
            "offline_fraction": batch.offline_fraction,
        }

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "log_alpha": self.log_alpha.detach().clone(),
            "temp_optim": self.temp_optim.state_dict(),
            "generator": self.generator.get_state(),
            "diagnostics": dict(self.last_diagnostics),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_alpha.copy_(torch.as_tensor(state["log_alpha"]))
        self.temp_optim.load_state_dict(state["temp_optim"])
        if "generator" in state:
            self.generator.set_state(torch.as_tensor(state["generator"]).cpu())
        self.last_diagnostics = dict(state.get("diagnostics", {}))
