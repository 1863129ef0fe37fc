"""ALOE (arXiv seed 001, §IV, Algorithm 1): a chunked Q ensemble plus advantage-weighted flow matching.

Policy evaluation (§IV-A): K critics ``Q_i(s_t, a_{t:t+h})`` regress the Q-chunking TD target (eq. 7)

    y = sum_{k<h} gamma^k r_{t+k} + (1 - done) gamma^h min_i Q^-_i(s_{t+h}, a'),   a' ~ pi(. | s_{t+h})

with the squared error averaged over the ensemble (eq. 8); ``Q^-`` are Polyak-averaged targets
(``phi^- <- omega phi + (1 - omega) phi^-``, omega = ``tau`` = 0.005 in appendix C). The target takes the
pessimistic min over the target ensemble ("TD targets (eq. 7) and pessimistic aggregation", app. C-2).

Policy improvement (§IV-B/C): ``Q_pess = min_i Q_i`` (eq. 9), ``A = Q_pess(s, a_data) - sg(V^pi(s))`` with
``V^pi(s) = E_{a ~ pi}[Q_pess(s, a)]`` estimated from ``n_policy_samples`` chunks sampled from the current
flow policy (eq. 10), weights ``w = exp(clip(A / beta, -eps, eps))`` (eq. 11), and the actor minimises the
w-weighted flow-matching loss (eq. 15, the tractable surrogate of the weighted log-likelihood eq. 12).

One ``update`` is one learner step: a critic step, a Polyak step, and (every ``actor_every`` steps after
``actor_delay`` critic-only warm-up steps, Algorithm 1's N_Q/N_pi split) an actor step.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from fleetrl.algorithms.base import AlgorithmConfig
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.chunk_algorithm import (
    ActorCriticAlgorithm,
    ActorCriticConfig,
    ChunkAdamWConfig,
    ChunkTensors,
)
from fleetrl.algorithms.td import ensemble_td_loss, n_step_chunk_target, pessimistic_q, polyak_update
from fleetrl.models.flow import flow_matching_loss

# --- loss maths (pure functions; the TD maths is td.py's) ----------------------------------------------


def advantage_vs_policy(q_data: torch.Tensor, q_policy_samples: torch.Tensor) -> torch.Tensor:
    """ALOE eq. 10: ``A = Q_pess(s, a_data) - sg(V^pi(s))`` with ``V^pi`` the mean of ``q_policy_samples``
    [N, B] (``Q_pess`` of N chunks sampled from the current policy); ``q_data`` [B]."""
    return q_data - q_policy_samples.mean(dim=0).detach()


def awr_weights(advantages: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """ALOE eq. 11: ``w = exp(clip(A / beta, -eps, eps))`` (no gradient)."""
    return torch.exp(torch.clamp(advantages.detach() / beta, -eps, eps))


# --- the plug-in ------------------------------------------------------------------------------------


class AWRConfig(ActorCriticConfig, ChunkAdamWConfig):
    """ALOE's knobs. Appendix C: Polyak 0.005, gamma 0.99 (the replay's), AdamW (0.9, 0.95), gradient
    clipping 1.0, batch 256. Its peak lr 3e-5 is for a 3B-parameter VLA; small MLPs use 3e-4. ALOE gives
    no numbers for K, beta or eps_clip; the defaults here are the common K = 2 (clipped double Q), beta
    on the scale of a few reward units, and weights within [e^-2, e^2]."""

    tau: float = Field(0.005, gt=0.0, le=1.0, description="Polyak coefficient omega of the target critics.")
    beta: float = Field(1.0, gt=0.0, description="Advantage temperature beta (eq. 11).")
    eps_clip: float = Field(2.0, gt=0.0, description="Clip of A / beta before exp (eq. 11).")
    n_policy_samples: int = Field(4, ge=1, le=256, description="Chunks sampled from pi to estimate V^pi.")
    flow_steps: int | None = Field(
        None, ge=1, le=256, description="Euler steps when sampling pi for targets/V^pi; None: the policy's."
    )
    actor_every: int = Field(1, ge=1, description="One actor step per this many critic steps (N_Q / N_pi).")
    actor_delay: int = Field(0, ge=0, description="Critic-only steps before the first actor step.")


class AWR(ActorCriticAlgorithm):
    name: ClassVar[str] = "awr"
    config_cls: ClassVar[type[AlgorithmConfig]] = AWRConfig
    config: AWRConfig

    def critic_optimizer(self) -> torch.optim.Optimizer:
        """AdamW with the actor's betas and weight decay (ALOE app. C)."""
        return torch.optim.AdamW(
            self.critic.parameters(), lr=self.config.critic_lr, **self.config.adamw_options()
        )

    @torch.no_grad()
    def _sample_pi(self, obs_flat: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` chunks per row from the current policy, clipped to the action bounds: obs repeated
        [n * B, D_obs] and flat chunks [n * B, D_act] (sample-major)."""
        obs_rep = obs_flat.repeat(n, 1)
        noise = torch.randn(obs_rep.shape[0], self.policy.action_dim, device=obs_flat.device)
        flat = self.policy.sample_flat(obs_rep, noise, self.config.flow_steps)
        return obs_rep, flat.clamp(self.policy.low, self.policy.high)

    def critic_step(self, t: ChunkTensors) -> dict[str, float]:
        """Eqs. 7-8 and the Polyak step of Algorithm 1 (lines 5-8)."""
        with torch.no_grad():
            next_obs, next_actions = self._sample_pi(t.next_obs, 1)
            next_q = pessimistic_q(self.target_critic.forward_flat(next_obs, next_actions))
            target = n_step_chunk_target(t.chunk_reward, t.discount, t.done, next_q)
        q = self.critic.forward_flat(t.obs, t.actions)
        loss = ensemble_td_loss(q, target)
        grad_norm = self.optim_step(loss, self.critic_optim, self.critic.parameters())
        polyak_update(self.target_critic, self.critic, self.config.tau)
        return {
            "critic_loss": loss.item(),
            "q_mean": q.mean().item(),
            "target_mean": float(target.mean()),
            "critic_grad_norm": grad_norm,
        }

    def actor_step(self, t: ChunkTensors) -> dict[str, float]:
        """Eqs. 9-11 and 15 (Algorithm 1, lines 11-14)."""
        b, n = t.obs.shape[0], self.config.n_policy_samples
        with torch.no_grad():
            q_data = pessimistic_q(self.critic.forward_flat(t.obs, t.actions))
            obs_rep, pi_actions = self._sample_pi(t.obs, n)
            q_pi = pessimistic_q(self.critic.forward_flat(obs_rep, pi_actions)).reshape(n, b)
            adv = advantage_vs_policy(q_data, q_pi)
            w = awr_weights(adv, self.config.beta, self.config.eps_clip)
        loss = flow_matching_loss(self.policy, t.obs, t.actions, w, t.mask)
        grad_norm = self.optim_step(loss, self.actor_optim, self.trained_parameters())
        clipped = (adv / self.config.beta).abs() >= self.config.eps_clip
        return {
            "actor_loss": loss.item(),
            "v_pi_mean": float(q_pi.mean()),
            "advantage_mean": float(adv.mean()),
            "advantage_std": float(adv.std()) if b > 1 else 0.0,
            "weight_mean": float(w.mean()),
            "weight_max": float(w.max()),
            "clip_fraction": float(clipped.float().mean()),
            "actor_grad_norm": grad_norm,
        }

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        t = self.tensors(batch)
        metrics = self.critic_step(t)
        self.steps += 1
        if self.steps > self.config.actor_delay and self.steps % self.config.actor_every == 0:
            metrics |= self.actor_step(t)
        return metrics
