"""ALOE (arXiv seed 001, §IV, Algorithm 1): a chunked Q ensemble plus advantage-weighted flow matching.

Policy evaluation (§IV-A): K critics ``Q_i(s_t, a_{t:t+h})`` regress the Q-chunking TD target (eq. 7)

    y = sum_{k<h} gamma^k r_{t+k} + (1 - done) gamma^h min_i Q^-_i(s_{t+h}, a'),   a' ~ pi(. | s_{t+h})

with the squared error averaged over the ensemble (eq. 8); ``Q^-`` are Polyak-averaged targets
(``phi^- <- omega phi + (1 - omega) phi^-``, omega = ``tau`` = 0.005 in appendix C). The target takes the
pessimistic min over the target ensemble ("TD targets (eq. 7) and pessimistic aggregation", app. C-2).

Policy improvement (§IV-B/C): ``Q_pess = min_i Q_i`` (eq. 9), ``A = Q_pess(s, a_data) - sg(V^pi(s))`` with
``V^pi(s) = E_{a ~ pi}[Q_pess(s, a)]`` estimated from ``n_policy_samples`` chunks sampled from the current
flow policy (eq. 10), weights ``w = exp(clip(A / (beta * sigma_A), -eps, eps))`` (eq. 11, the advantage in
units of a running scale ``sigma_A`` of its spread, as AWR implementations do: see ``AWRConfig``), and the
actor minimises the w-weighted flow-matching loss (eq. 15, the surrogate of the weighted likelihood eq. 12).

Three knobs for data of mixed quality (a fleet's, or noisy demonstrations with failures), where eq. 7's TD
target carries a failure back only one chunk per Polyak time constant and eq. 11's soft weights leave most
of the batch to the failing episodes, which are also the longest: ``critic_target: return`` regresses
the critics on the discounted return each terminated episode observed (AWR's lambda = 1 return, Peng et
al. 2019; one-step RL); ``weighting: binary`` keeps exactly the chunks with A > 0 (CRR, Wang et al.
2020); ``baseline: data`` measures A against a state value fitted to the data's own chunks (AWR's
baseline; IQL's expectile regression, Kostrikov et al. 2021) instead of eq. 10's V^pi, which reads Q on
the policy's chunks, where a critic fitted to the data's returns knows nothing. ``benchmarks/results/
learning.json`` (``offline``, columns ``awr_filtered`` and ``awr_mixed``) measures them. Trained long, the data
baseline memorises Q of each row, so A is noise: ``cross_fit`` subtracts a baseline that never learnt from the
row's episode.

One ``update`` is one learner step; its schedule follows Algorithm 1 (``phase``):

* updates 1..``bc_steps``: behaviour cloning of the offline rows (line 1: the policy is warm-started by
  imitation on the demonstrations; unit-weight flow matching, eq. 16) while the critics already train on
  the cloned policy's next actions;
* the next ``actor_delay`` updates: critic only (the first N_Q critic steps against the fixed warm-started
  policy, lines 4-9);
* then a critic step every update and an advantage-weighted actor step every ``actor_every`` (N_Q/N_pi).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from fleetrl.algorithms.base import AlgorithmConfig, PolicySpec
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.chunk_algorithm import (
    ActorCriticAlgorithm,
    ActorCriticConfig,
    ChunkAdamWConfig,
    ChunkTensors,
)
from fleetrl.algorithms.data_value import data_value_net, episode_folds, expectile_loss, fold_value
from fleetrl.algorithms.diagnostics import (
    action_distance,
    q_diagnostics,
    random_chunks,
    return_correlation,
    weight_stats,
)
from fleetrl.algorithms.td import n_step_chunk_target, pessimistic_q
from fleetrl.models.flow import flow_matching_loss
from fleetrl.models.nets import seeded

# --- loss maths (pure functions; the TD maths is td.py's) ----------------------------------------------


def policy_value(q_policy_samples: torch.Tensor) -> torch.Tensor:
    """ALOE eq. 10's baseline ``sg(V^pi(s))``: the mean of ``q_policy_samples`` [N, B] (``Q_pess`` of N chunks
    sampled from the current policy), so ``A = Q_pess(s, a_data) - V^pi(s)``."""
    return q_policy_samples.mean(dim=0).detach()


def awr_weights(advantages: torch.Tensor, beta: float, eps: float, scale: float = 1.0) -> torch.Tensor:
    """ALOE eq. 11 on the advantage in units of ``scale``: ``w = exp(clip(A / (beta * scale), -eps, eps))``
    (no gradient). ``scale = 1`` is eq. 11 on raw advantages."""
    return torch.exp(torch.clamp(advantages.detach() / (beta * scale), -eps, eps))


def binary_weights(advantages: torch.Tensor) -> torch.Tensor:
    """CRR's binary filter (Wang et al. 2020, ``f = 1[A > 0]``): clone exactly the data chunks the critic
    ranks above the current policy (no gradient)."""
    return (advantages.detach() > 0).to(advantages.dtype)


def running_scale(previous: float, batch_spread: float, rate: float, floor: float = 1e-6) -> float:
    """One step of the running advantage scale: the batch's spread itself at the first step
    (``previous <= 0``), else ``previous + rate * (batch_spread - previous)`` (an exponential moving
    average, as TD-MPC2's ``RunningScale``); never below ``floor``."""
    value = batch_spread if previous <= 0.0 else previous + rate * (batch_spread - previous)
    return max(float(value), floor)


# --- the plug-in ------------------------------------------------------------------------------------


class AWRConfig(ActorCriticConfig, ChunkAdamWConfig):
    """ALOE's knobs. Appendix C: Polyak 0.005, gamma 0.99 (the replay's), AdamW (0.9, 0.95), gradient
    clipping 1.0, batch 256; its peak lr 3e-5 is for a 3B-parameter VLA, small MLPs use AWAC's 3e-4
    (rlkit examples/awac). ALOE gives no numbers for K, beta, eps_clip, the number of policy samples or
    N_Q/N_pi; each default below names the reference it comes from."""

    tau: float = Field(0.005, gt=0.0, le=1.0, description="Polyak coefficient omega (ALOE app. C: 0.005).")
    beta: float = Field(
        1.0,
        gt=0.0,
        description="Temperature beta of eq. 11, in units of the advantage scale when normalize_advantages "
        "(AWR, Peng et al. 2019, xbpeng/awr learning/awr_agent.py: temp 1.0 on normalised advantages); "
        "in reward units otherwise.",
    )
    eps_clip: float = Field(
        3.0,
        gt=0.0,
        description="Clip of A / beta before exp (eq. 11): weights within [e^-eps, e^eps]; 3.0 puts the upper "
        "bound at e^3 = 20, AWR's weight_clip 20 (xbpeng/awr awr_agent.py).",
    )
    normalize_advantages: bool = Field(
        True,
        description="Divide A by a running scale of its batch standard deviation before eq. 11 (AWR "
        "normalises advantages by their std, xbpeng/awr awr_agent.py _calc_adv; the running average is "
        "TD-MPC2's RunningScale). Scale only: A = 0 stays 'as good as the current policy' (eq. 10).",
    )
    adv_scale_rate: float = Field(
        0.01, gt=0.0, le=1.0, description="Rate of the running advantage scale (TD-MPC2's scale tau 0.01)."
    )
    weighting: Literal["exp", "binary"] = Field(
        "exp",
        description="'exp': eq. 11's exponential weights; 'binary': CRR's 1[A > 0] (Wang et al. 2020), a hard "
        "filter that drops every chunk the critic ranks below the policy, whatever its margin (beta, eps_clip "
        "and the advantage scale then do not apply).",
    )
    baseline: Literal["policy", "data"] = Field(
        "policy",
        description="What A is measured against. 'policy': eq. 10's V^pi, the mean Q_pess of chunks sampled "
        "from the current policy. 'data': a state-value network fitted to Q_pess of the data's own chunks "
        "(AWR's baseline, Peng et al. 2019: the behaviour policy's value; with expectile > 0.5 IQL's upper "
        "expectile, Kostrikov et al. 2021), so A ranks the data's chunks against each other in a state and "
        "never reads Q on chunks the data does not contain.",
    )
    expectile: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="Expectile of the 'data' baseline's regression: 0.5 the mean (Peng et al.), 0.7 IQL's "
        "locomotion setting, 0.9 its AntMaze one.",
    )
    cross_fit: bool = Field(
        False,
        description="'data' baseline only. Two baseline outputs, each fitted to half of the episodes (a "
        "stable hash of the episode id); a row's advantage subtracts the output that never learnt from its "
        "episode. Fitted to Q of every row for long, one baseline memorises it (V(s) = Q(s, a) on each row: A "
        "is noise, and the binary filter kept failing chunks as often as successful ones on cube-single mixed "
        "data after 5,000 updates); the held-out half can only say what other episodes got from such states, "
        "so A = Q(s, a) - V_other(s) keeps ranking each chunk against them.",
    )
    n_policy_samples: int = Field(
        4,
        ge=1,
        le=256,
        description="Chunks sampled from pi per state to estimate V^pi as their mean Q_pess (eq. 10; CRR, "
        "Wang et al. 2020, averages m = 4 policy samples).",
    )
    flow_steps: int | None = Field(
        None, ge=1, le=256, description="Euler steps when sampling pi for targets/V^pi; None: the policy's."
    )
    bc_steps: int = Field(
        1000,
        ge=0,
        description="Warm start (Algorithm 1 line 1): updates that clone the offline rows with plain flow "
        "matching while the critics train. 1000 = 5 / tau: five time constants of the Polyak targets, so they "
        "have moved 1 - e^-5 > 99 % away from their initialisation before the first weighted step.",
    )
    actor_delay: int = Field(
        0,
        ge=0,
        description="Critic-only updates after the warm start (Algorithm 1's first N_Q steps against the fixed "
        "cloned policy). 0: the critics already trained for bc_steps updates during the warm start.",
    )
    actor_every: int = Field(
        1,
        ge=1,
        description="One actor step per this many critic steps (N_Q / N_pi; AWAC's update periods 1).",
    )

    @model_validator(mode="after")
    def _cross_fit_needs_the_data_baseline(self) -> AWRConfig:
        if self.cross_fit and self.baseline != "data":
            raise ValueError("cross_fit cross-fits the 'data' baseline: set baseline: data")
        return self


class AWR(ActorCriticAlgorithm):
    name: ClassVar[str] = "awr"
    config_cls: ClassVar[type[AlgorithmConfig]] = AWRConfig
    config: AWRConfig

    def __init__(self, config: AWRConfig, policy: torch.nn.Module, spec: PolicySpec, device: str = "cpu"):
        super().__init__(config, policy, spec, device)
        self.adv_scale = 0.0  # running scale of the advantages' spread; 0 until the first weighted step
        self.value: torch.nn.Module | None = None  # the 'data' baseline V(s)
        self.value_optim: torch.optim.Optimizer | None = None
        if config.baseline == "data":
            with seeded(config.seed + 1):
                self.value = data_value_net(
                    spec.observation_spec, config.critic.encoder, config.critic.hidden, config.cross_fit
                ).to(self.device)
            self.value_optim = torch.optim.Adam(self.value.parameters(), lr=config.critic_lr)

    def critic_optimizer(self) -> torch.optim.Optimizer:
        """AdamW with the actor's betas and weight decay (ALOE app. C)."""
        return torch.optim.AdamW(
            self.critic.parameters(), lr=self.config.critic_lr, **self.config.adamw_options()
        )

    def phase(self, step: int) -> str:
        """What update number ``step`` (1-based) trains: ``"bc"`` (critic + cloning), ``"critic"`` (critic
        only) or ``"awr"`` (critic, and the weighted actor step every ``actor_every``)."""
        c = self.config
        if step <= c.bc_steps:
            return "bc"
        if step <= c.bc_steps + c.actor_delay:
            return "critic"
        return "awr"

    @torch.no_grad()
    def _sample_pi(self, obs_flat: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` chunks per row from the current policy, clipped to the action bounds: obs repeated
        [n * B, D_obs] and flat chunks [n * B, D_act] (sample-major)."""
        obs_rep = obs_flat.repeat(n, 1)
        noise = torch.randn(obs_rep.shape[0], self.policy.action_dim, device=obs_flat.device)
        flat = self.policy.sample_flat(
            self.policy.features(obs_flat).repeat(n, 1), noise, self.config.flow_steps
        )
        return obs_rep, flat.clamp(self.policy.low, self.policy.high)

    def tensors(self, batch: ChunkBatch) -> ChunkTensors:
        """With ``cross_fit``, each row also carries its episode's fold."""
        t = super().tensors(batch)
        if self.config.cross_fit:
            t.folds = torch.as_tensor(episode_folds(batch.episode_id), device=self.device)
        return t

    @torch.no_grad()
    def _q_pess(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return pessimistic_q(self.critic.forward_flat(obs, actions))

    def _value(self, obs: torch.Tensor, folds: torch.Tensor | None, other: bool) -> torch.Tensor:
        """The 'data' baseline V(s) [B]: with ``folds``, the output of the row's own fold (``other`` False:
        what it learns) or of the other fold (True: what the advantage subtracts)."""
        assert self.value is not None
        return fold_value(self.value(obs), folds, other)

    @torch.no_grad()
    def data_advantages(self, t: ChunkTensors) -> torch.Tensor:
        """A = Q_pess(s, a_data) - V(s) [B] against the 'data' baseline (with ``cross_fit`` the fold that never
        learnt from the row's episode): what the binary filter thresholds."""
        return self._q_pess(t.obs, t.actions) - self._value(t.obs, t.folds, other=True)

    def critic_step(self, t: ChunkTensors) -> dict[str, float]:
        """Eqs. 7-8 and the Polyak step of Algorithm 1 (lines 5-8)."""
        with torch.no_grad():
            next_obs, next_actions = self._sample_pi(t.next_obs, 1)
            next_q = pessimistic_q(self.target_critic.forward_flat(next_obs, next_actions))
            target = n_step_chunk_target(t.chunk_reward, t.discount, t.done, next_q)
        fit = self.fit_critics(t, target, self.config.tau)
        metrics = {"critic_loss": fit.pop("loss"), **fit}
        if self.value is not None:
            metrics |= self.value_step(t)
        return metrics

    def value_step(self, t: ChunkTensors) -> dict[str, float]:
        """The 'data' baseline: V(s) regresses the target critics' Q_pess of the data's chunk by the
        configured expectile (IQL eq. 5; 0.5: the data's mean, AWR's V)."""
        assert self.value is not None and self.value_optim is not None
        with torch.no_grad():
            q_data = pessimistic_q(self.target_critic.forward_flat(t.obs, t.actions))
        v = self._value(t.obs, t.folds, other=False)  # cross-fitting: each output learns its own fold's rows
        loss = expectile_loss(v, q_data, self.config.expectile)
        self.optim_step(loss, self.value_optim, self.value.parameters())
        return {"value_loss": float(loss.detach()), "v_data_mean": float(v.detach().mean())}

    @torch.no_grad()
    def _baseline(self, t: ChunkTensors, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The baseline A subtracts [B], and the policy's chunks [n * B, D_act] with their Q_pess [n, B]
        (eq. 10's samples; one per state for the diagnostics when the baseline is the data's)."""
        n = self.config.n_policy_samples if self.value is None else 1
        obs_rep, pi_actions = self._sample_pi(t.obs, n)
        q_pi = self._q_pess(obs_rep, pi_actions).reshape(n, b)
        if self.value is None:
            return policy_value(q_pi), pi_actions, q_pi
        return self._value(t.obs, t.folds, other=True), pi_actions, q_pi

    def bc_step(self, t: ChunkTensors) -> dict[str, float]:
        """Algorithm 1 line 1: unit-weight flow matching (eq. 16) on the batch's offline rows."""
        keep = t.offline
        if not bool(keep.any()):
            self.idle_optim_step(self.actor_optim, self.trained_parameters())
            return {"bc_rows": 0.0}
        loss = flow_matching_loss(self.policy, t.obs[keep], t.actions[keep], mask=t.mask[keep])
        grad_norm = self.optim_step(loss, self.actor_optim, self.trained_parameters())
        return {"bc_loss": loss.item(), "bc_rows": float(keep.sum()), "actor_grad_norm": grad_norm}

    def actor_step(self, t: ChunkTensors) -> dict[str, float]:
        """Eqs. 9-11 and 15 (Algorithm 1, lines 11-14), with the diagnostics that reuse its passes."""
        b, c = t.obs.shape[0], self.config
        with torch.no_grad():
            q_data = self._q_pess(t.obs, t.actions)
            baseline, pi_actions, q_pi = self._baseline(t, b)
            adv = q_data - baseline  # eq. 10 (or against the data's own value)
            n = q_pi.shape[0]
            spread = float(adv.std()) if b > 1 else 0.0
            if c.normalize_advantages:
                self.adv_scale = running_scale(self.adv_scale, spread, c.adv_scale_rate)
            scale = self.adv_scale if c.normalize_advantages else 1.0
            if c.weighting == "binary":
                w = binary_weights(adv)
            else:
                w = awr_weights(adv, c.beta, c.eps_clip, scale)
        loss = flow_matching_loss(self.policy, t.obs, t.actions, w, t.mask)
        grad_norm = self.optim_step(loss, self.actor_optim, self.trained_parameters())
        metrics = {
            "actor_loss": loss.item(),
            "v_pi_mean": float(q_pi.mean()),
            "baseline_mean": float(baseline.mean()),
            "advantage_mean": float(adv.mean()),
            "advantage_std": spread,
            "adv_scale": float(scale),
            "clip_fraction": float(((adv / (c.beta * scale)).abs() >= c.eps_clip).float().mean()),
            "policy_to_data": action_distance(pi_actions[:b], t.actions, t.mask),
            "actor_grad_norm": grad_norm,
        }
        metrics |= weight_stats(w)
        if n > 1:  # the standard error of the V^pi estimate, in units of the advantage scale
            metrics["v_pi_sem_over_scale"] = float(q_pi.std(dim=0).mean()) / n**0.5 / max(scale, 1e-6)
        if self.diagnostics_due():
            metrics |= self._value_diagnostics(t, q_data, q_pi.mean(dim=0))
        return metrics

    @torch.no_grad()
    def _value_diagnostics(
        self, t: ChunkTensors, q_data: torch.Tensor, q_policy: torch.Tensor
    ) -> dict[str, float]:
        """Q of the data, the policy and uniformly random chunks in the batch's states, and the correlation
        of Q on the data with the observed returns."""
        low, high = float(self.policy.low), float(self.policy.high)
        random = random_chunks(t.obs.shape[0], t.actions, low, high)
        out = q_diagnostics(q_data, q_policy, self._q_pess(t.obs, random))
        corr = return_correlation(q_data, t.returns)
        if corr is not None:
            out["q_return_corr"] = corr
        return out

    @torch.no_grad()
    def _idle_diagnostics(self, t: ChunkTensors) -> dict[str, float]:
        """The diagnostics of an update without a weighted actor step (one policy sample per state)."""
        q_data = self._q_pess(t.obs, t.actions)
        obs_rep, pi_actions = self._sample_pi(t.obs, 1)
        out = self._value_diagnostics(t, q_data, self._q_pess(obs_rep, pi_actions))
        out["policy_to_data"] = action_distance(pi_actions, t.actions, t.mask)
        return out

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        t = self.tensors(batch)
        metrics = self.critic_step(t)
        self.steps += 1
        phase = self.phase(self.steps)
        metrics["phase"] = {"bc": 0.0, "critic": 1.0, "awr": 2.0}[phase]
        if phase == "bc":
            metrics |= self.bc_step(t)
        if phase == "awr" and self.steps % self.config.actor_every == 0:
            metrics |= self.actor_step(t)
        elif self.diagnostics_due():
            metrics |= self._idle_diagnostics(t)
        return metrics

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        extra = {} if self.value_optim is None else {"value": self.value_optim}
        return super().optimizers() | extra

    def state_dict(self) -> dict[str, Any]:
        value = {}
        if self.value is not None and self.value_optim is not None:
            value = {"value": self.value.state_dict(), "value_optim": self.value_optim.state_dict()}
        return super().state_dict() | {"adv_scale": self.adv_scale} | value

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.adv_scale = float(state.get("adv_scale", 0.0))
        if self.value is not None and self.value_optim is not None and "value" in state:
            shapes = {k: v.shape for k, v in self.value.state_dict().items()}
            if {k: v.shape for k, v in state["value"].items()} == shapes:  # not across a cross_fit switch
                self.value.load_state_dict(state["value"])
                self.value_optim.load_state_dict(state["value_optim"])
