"""QAM, Q-learning with Adjoint Matching (LWD seed 003 §III-C, §IV-B, Algorithms 1-2) with DIVL critics.

Target (eq. 8): ``pi*(a | s) ∝ pi_beta(a | s) exp(Q(s, a) / lambda)`` for a behaviour-cloned
reference flow ``f_beta``. Adjoint Matching (Domingo-Enrich et al. 2024) reaches it by regression:

* Memoryless noise schedule. For the straight path ``a^w = (1 - w) a^0 + w a^1`` (eq. 7) the SDE with the
  flow's marginals and no memory of its start is ``dx = (2 f(x, w) - x / w) dw + sigma_w dB`` with
  ``sigma_w = sqrt(2 (1 - w) / w)``. (The seed prints ``sqrt(2 (1 - w) w)``; that is an erratum, the
  schedule above is Adjoint Matching's and QAM's.) ``1 / w`` is singular at ``w = 0``; we evaluate it with
  a time shift, ``1 / (w + delta)`` with ``delta`` = one Euler step by default, in the drift *and* in
  ``sigma_w``. Then the first Euler-Maruyama step forgets ``a^0`` exactly (memoryless), ``sigma`` is finite
  and non-zero on the whole grid ``w_k = k / N``, k < N, and the terminal law of the discretised SDE
  stays close to the flow's (checked on a Gaussian in the tests).
* Trajectories ``x_0..x_N`` are Euler-Maruyama samples of the *fine-tuned* flow's memoryless SDE (no
  gradient), as in Adjoint Matching; the terminal action ``a^1 = x_N`` is scored by the critic.
* Lean adjoint (eq. 10 and its ODE): ``g_N = -grad_a Q(s, a^1) / lambda`` and, backwards along the same
  discretisation with only the *reference* drift ``b_beta = 2 f_beta - x / (w + delta)``,
  ``g_k = g_{k+1} + h * g_{k+1}^T d b_beta / dx (x_k, w_k)``: exactly the reverse-mode derivative of the
  discretised forward map, computed with one vector-Jacobian product of ``f_beta`` per step.
* Loss (eq. 9): ``mean_k E || 2 (f_theta - f_beta)(s, x_k, w_k) / sigma_k + sigma_k g_k ||^2``.

Actions outside the bounds: the critic scores the clipped chunk; the clip's gradient (zero outside) reaches
``a^1``. The critic that guides is the EMA ensemble's mean (the QAM reference, ``use_target_grad``), and
the last flow step under it is the reference's noiseless ODE step (reference, after Adjoint Matching).

Reference flow (Algorithm 1, lines 1-2, app. B3): QAM's first ``bc_steps`` updates train the policy by
flow-matching BC (eq. 34) on the batch's *offline* rows (demonstrations; a batch without offline rows
makes no BC step and the step is not counted). Then adjoint matching starts against ``f_beta``:
``reference="frozen"`` freezes a copy of that BC policy (LWD); ``reference="ema"`` (default) keeps
training a BC flow every update and ``f_beta`` is its EMA copy (the QAM reference's ``target_actor_slow``),
so the reference keeps improving for the whole budget instead of stopping at ``bc_steps``. That BC flow
clones the batch's demonstrations (``reference_rows="offline"``, default) or every row
(``"all"``, as the QAM authors' code does: online its batches mix the demonstrations with the fleet's own
episodes; measured on cube-single online it was not better, and with poor online data it is worse).
On data of mixed quality the behaviour QAM tilts is mostly failure; ``reference_filter: return_advantage``
has that BC flow clone only the rows whose observed return beats a cross-fitted value of their state
(``fleetrl.algorithms.data_value``), so f_beta is value-filtered cloning and the tilt starts from it.
``bc_steps = 0`` takes the policy as given (e.g. trained by ``bc``) as the start. Critics and
``V_psi`` learn from the first update: DIVL (``fleetrl.algorithms.divl``) with one-chunk TD targets (eq. 19
with n = 1: a ``ChunkBatch`` holds one chunk per row). Every ``diagnostics_every`` updates the metrics
carry Q of data / policy / random chunks and the policy's distances to the data and to ``f_beta``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from fleetrl.algorithms.base import AlgorithmConfig, PolicySpec
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.chunk_algorithm import ActorCriticAlgorithm, ActorCriticConfig, ChunkTensors
from fleetrl.algorithms.data_value import data_value_net, episode_folds, expectile_loss, fold_value
from fleetrl.algorithms.diagnostics import action_distance, q_diagnostics, random_chunks, return_correlation
from fleetrl.algorithms.divl import DIVL, DIVLConfig
from fleetrl.algorithms.td import n_step_chunk_target, pessimistic_q, polyak_update
from fleetrl.models.critics import ChunkQConfig
from fleetrl.models.flow import FlowChunkPolicy, flow_matching_loss
from fleetrl.models.nets import seeded

Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (obs, x, w[B]) -> v

# --- adjoint-matching maths (pure functions) --------------------------------------------------------


def memoryless_sigma(w: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    """Memoryless noise schedule ``sigma_w = sqrt(2 (1 - w) / (w + shift))`` (``shift = 0``: the exact one)."""
    return (2.0 * (1.0 - w) / (w + shift)).sqrt()


def memoryless_drift(v: torch.Tensor, x: torch.Tensor, w: torch.Tensor, shift: float) -> torch.Tensor:
    """Drift of the memoryless SDE for velocity ``v`` at ``(x, w)``: ``2 v - x / (w + shift)``."""
    return 2.0 * v - x / (w + shift)


def time_grid(steps: int, device: torch.device | str = "cpu", dtype=torch.float32) -> torch.Tensor:
    """The Euler grid ``w_k = k / steps``, k = 0..steps-1 (the left ends of the steps)."""
    return torch.arange(steps, device=device, dtype=dtype) / steps


@torch.no_grad()
def sample_memoryless(
    velocity: Velocity,
    obs: torch.Tensor,
    x0: torch.Tensor,
    steps: int,
    shift: float,
    noise=None,
    last_velocity: Velocity | None = None,
    last_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler-Maruyama on the memoryless SDE: ``x_{k+1} = x_k + h b(x_k, w_k) + sqrt(h) sigma_k xi_k``;
    ``noise`` [steps, B, D] fixes the ``xi_k``. With ``last_velocity`` the last step is the noiseless ODE
    step ``x_N = x_{N-1} + h v_last(x_{N-1}, w_{N-1})`` instead (the QAM reference, agents/qam.py, after
    Adjoint Matching: the critic then scores a chunk without the last step's noise), at ``last_features``
    (the reference's own observation features; default ``obs``). Returns the trajectory
    [steps + 1, B, D]."""
    h, ws = 1.0 / steps, time_grid(steps, x0.device, x0.dtype)
    xs = [x0]
    for k in range(steps):
        w = ws[k].expand(x0.shape[0])
        if last_velocity is not None and k == steps - 1:
            at = obs if last_features is None else last_features
            xs.append(xs[-1] + h * last_velocity(at, xs[-1], w))
            break
        xi = torch.randn_like(x0) if noise is None else noise[k]
        drift = memoryless_drift(velocity(obs, xs[-1], w), xs[-1], ws[k], shift)
        xs.append(xs[-1] + h * drift + (h**0.5) * memoryless_sigma(ws[k], shift) * xi)
    return torch.stack(xs)


def terminal_adjoint(
    q_fn: Callable[[torch.Tensor], torch.Tensor], a1: torch.Tensor, temperature: float, low, high
) -> torch.Tensor:
    """Eq. 10: ``g_1 = -grad_a Q(s, clip(a^1)) / lambda`` with ``q_fn(actions) -> [B]``. The critic scores
    the clipped chunk and the gradient is the clip's: zero for entries outside the bounds (the QAM
    reference's ``clip_adj``; the critic never saw actions out of bounds, so its slope there is noise)."""
    with torch.enable_grad():
        a = a1.detach().requires_grad_(True)
        q = q_fn(a.clamp(low, high))
        (grad,) = torch.autograd.grad(q.sum(), a)
    return -grad / temperature


def lean_adjoint(
    velocity: Velocity,
    obs: torch.Tensor,
    xs: torch.Tensor,
    g1: torch.Tensor,
    shift: float,
    ode_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward recursion of the lean adjoint along the trajectory ``xs`` [N + 1, B, D] with the drift of
    ``velocity`` (the reference flow): ``g_N = g1``, ``g_k = g_{k+1} + h g_{k+1}^T d b / dx (x_k, w_k)``;
    with ``ode_last`` the last step is the ODE step ``x + h v`` (``sample_memoryless``'s ``last_velocity``)
    and ``g_{N-1} = g_N + h g_N^T d v / dx``: the exact reverse-mode derivative of the forward map either way.
    Returns (adjoints ``g_0..g_N`` [N + 1, B, D], ``velocity(x_k, w_k)`` for k < N [N, B, D])."""
    n = xs.shape[0] - 1
    h, ws = 1.0 / n, time_grid(n, xs.device, xs.dtype)
    adj, vels = [g1.detach()], [None] * n
    for k in reversed(range(n)):
        with torch.enable_grad():
            x = xs[k].detach().requires_grad_(True)
            v = velocity(obs, x, ws[k].expand(x.shape[0]))
            (vjp,) = torch.autograd.grad(v, x, grad_outputs=adj[-1])
        vels[k] = v.detach()
        if ode_last and k == n - 1:
            adj.append(adj[-1] + h * vjp)
        else:
            adj.append(adj[-1] + h * (2.0 * vjp - adj[-1] / (ws[k] + shift)))
    return torch.stack(adj[::-1]), torch.stack(vels)


def adjoint_matching_loss(
    v_theta: torch.Tensor, v_ref: torch.Tensor, adjoint: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Eq. 9: ``mean_{k, batch} || 2 (f_theta - f_beta) / sigma_k + sigma_k g_k ||^2``; ``v_theta``,
    ``v_ref``, ``adjoint`` [N, B, D] (the adjoint at the same grid points), ``sigma`` [N]."""
    s = sigma[:, None, None]
    return (2.0 * (v_theta - v_ref.detach()) / s + s * adjoint.detach()).square().sum(-1).mean()


# --- the plug-in ------------------------------------------------------------------------------------


class QAMConfig(ActorCriticConfig):
    """Defaults and their sources (LWD = seed 003; ref = the QAM authors' agents/qam.py and
    experiments/reproduce.py; both keep EMA rate 0.005, 10 flow steps, batch 256, Adam(W) 3e-4 for MLPs)."""

    critic: ChunkQConfig = Field(
        default_factory=lambda: ChunkQConfig(hidden=(512, 512, 512, 512)),
        description="Chunked Q ensemble: K = 2 (LWD's clipped double Q); 512x4 with LayerNorm (ref).",
    )
    divl: DIVLConfig = Field(default_factory=DIVLConfig, description="Distributional value learning.")
    ema: float = Field(0.005, gt=0.0, le=1.0, description="EMA rate of the target critics (LWD B2, ref).")
    temperature: float = Field(
        1.0, gt=0.0, description="lambda of eqs. 8 and 10, in reward units: 1 for -1 per step rewards "
        "(ref: inv_temp 1 on cube tasks); LWD uses 2 for 0/1 rewards. Q is not normalised (LWD, ref).",
    )  # fmt: skip
    actor_q: Literal["mean", "min"] = Field("mean", description="Ensemble aggregate guiding QAM (ref: mean).")
    guide_critic: Literal["target", "online"] = Field(
        "target", description="Critic whose action gradient is g_1 (ref: target, use_target_grad)."
    )
    ode_last_step: bool = Field(True, description="Noiseless last flow step under the critic (ref).")
    flow_steps: int | None = Field(None, ge=1, le=256, description="Adjoint-matching steps; None: policy's.")
    time_shift: float | None = Field(None, gt=0.0, description="delta in 1 / (w + delta); None: 1 / steps.")
    bc_steps: int = Field(
        1000, ge=0, description="Updates that train the policy by BC on offline rows before adjoint "
        "matching starts (LWD Alg. 1 l. 1); give it BC's whole budget. 0: the policy as given."
    )  # fmt: skip
    reference: Literal["ema", "frozen"] = Field(
        "ema", description="After bc_steps: 'frozen' keeps f_beta = the BC policy (LWD Alg. 1 l. 2); 'ema' "
        "keeps training a BC flow (reference_rows) and f_beta is its EMA copy (ref: target_actor_slow).",
    )  # fmt: skip
    reference_ema: float = Field(0.005, gt=0.0, le=1.0, description="EMA rate of f_beta ('ema'; ref).")
    reference_steps: int = Field(
        1, ge=1, le=64, description="BC steps of the 'ema' reference's BC flow per update (ref: 1), each on "
        "the update's rows and each followed by its EMA step. A BC step costs ~2 % of a QAM update, so "
        "where updates are scarce (a CPU learner online) more of them let f_beta learn from the stream about "
        "as fast as BC alone would.",
    )  # fmt: skip
    reference_rows: Literal["offline", "all"] = Field(
        "offline", description="Rows the 'ema' reference's BC flow clones after bc_steps: 'offline' (the "
        "demonstrations) or 'all' (ref: its whole batch, so online f_beta follows the fleet's own data).",
    )  # fmt: skip
    reference_filter: Literal["none", "return_advantage"] = Field(
        "none", description="Rows the 'ema' reference's BC flow clones, among reference_rows: 'none' all of "
        "them (pi_beta, LWD); 'return_advantage' only those whose observed return beats a cross-fitted "
        "expectile value of their state (data_value.py; rows without an observed return are kept), so on "
        "data of mixed quality f_beta is value-filtered cloning (Robo-ValueRL's value-guided chunk selection) "
        "and QAM tilts that instead of the failures' behaviour.",
    )  # fmt: skip
    filter_expectile: float = Field(
        0.7, gt=0.0, lt=1.0, description="Expectile of reference_filter's value (IQL's 0.7, as AWR's)."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay of the flows (ref: Adam, none).")

    @model_validator(mode="after")
    def _filter_needs_the_ema_reference(self) -> QAMConfig:
        if self.reference_filter != "none" and self.reference != "ema":
            raise ValueError("reference_filter filters the 'ema' reference's cloning: set reference: ema")
        if self.reference_steps != 1 and self.reference != "ema":
            raise ValueError("reference_steps counts the 'ema' reference's BC steps: set reference: ema")
        return self

    def adamw_options(self) -> dict[str, Any]:
        return {"weight_decay": self.weight_decay}


class QAM(ActorCriticAlgorithm):
    name: ClassVar[str] = "qam"
    config_cls: ClassVar[type[AlgorithmConfig]] = QAMConfig
    config: QAMConfig

    def __init__(self, config: QAMConfig, policy: nn.Module, spec: PolicySpec, device: str = "cpu"):
        super().__init__(config, policy, spec, device)
        with seeded(config.seed + 1):
            self.divl = DIVL(config.divl, spec.observation_spec, self.device)
        self.reference: FlowChunkPolicy | None = None  # f_beta, no gradient
        self.bc_flow: FlowChunkPolicy | None = None  # 'ema': the BC flow f_beta follows
        self.bc_optim: torch.optim.Optimizer | None = None
        self.bc_done = 0
        self.last_diagnostics: dict[str, float] = {}
        self.filter_value: nn.Module | None = None  # reference_filter's cross-fitted V(s) of observed returns
        self.filter_optim: torch.optim.Optimizer | None = None
        if config.reference_filter != "none":
            with seeded(config.seed + 2):
                self.filter_value = data_value_net(
                    spec.observation_spec, config.critic.encoder, config.critic.hidden, cross_fit=True
                ).to(self.device)
            self.filter_optim = torch.optim.Adam(self.filter_value.parameters(), lr=config.critic_lr)
        if config.bc_steps == 0:
            self._start_reference()

    def critic_optimizer(self) -> torch.optim.Optimizer:
        """Adam (LWD app. B2)."""
        return torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        extra = {} if self.bc_optim is None else {"reference": self.bc_optim}
        if self.filter_optim is not None:
            extra["filter_value"] = self.filter_optim
        return super().optimizers() | {"value": self.divl.optim} | extra

    def _start_reference(self) -> None:
        """End of the BC phase: f_beta = a frozen copy of the policy; in 'ema' mode also the BC flow that
        keeps training (a copy of the policy, its own AdamW) and that f_beta follows."""
        self.reference = copy.deepcopy(self.policy).requires_grad_(False).eval()
        if self.config.reference == "ema":
            self.bc_flow = copy.deepcopy(self.policy).requires_grad_(True)
            opts = self.config.adamw_options()
            self.bc_optim = torch.optim.AdamW(self.bc_flow.parameters(), lr=self.config.actor_lr, **opts)

    @property
    def n_flow(self) -> int:
        return self.config.flow_steps or self.policy.flow_steps

    @property
    def shift(self) -> float:
        return self.config.time_shift or 1.0 / self.n_flow

    def guide_q(self, obs: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``actions -> [B]``: the ensemble aggregate (``actor_q``) of the guiding critic at ``obs``."""
        critic = self.target_critic if self.config.guide_critic == "target" else self.critic
        agg = pessimistic_q if self.config.actor_q == "min" else (lambda q: q.mean(0))
        return lambda a: agg(critic.forward_flat(obs, a))

    def tensors(self, batch: ChunkBatch) -> ChunkTensors:
        """With ``reference_filter``, each row also carries its episode's cross-fitting fold."""
        t = super().tensors(batch)
        if self.filter_value is not None:
            t.folds = torch.as_tensor(episode_folds(batch.episode_id), device=self.device)
        return t

    def filter_step(self, t: ChunkTensors) -> dict[str, float]:
        """``reference_filter``'s value: each fold's output regresses the observed returns of its own fold's
        rows by ``filter_expectile`` (rows without a return make no step)."""
        assert self.filter_value is not None and self.filter_optim is not None
        seen = ~torch.isnan(t.returns)
        if not bool(seen.any()):
            self.idle_optim_step(self.filter_optim, self.filter_value.parameters())
            return {}
        v = fold_value(self.filter_value(t.obs[seen]), t.folds[seen], other=False)
        loss = expectile_loss(v, t.returns[seen], self.config.filter_expectile)
        self.optim_step(loss, self.filter_optim, self.filter_value.parameters())
        return {"filter_value_loss": float(loss.detach())}

    @torch.no_grad()
    def reference_keep(self, t: ChunkTensors) -> torch.Tensor:
        """[B] bool: the rows ``reference_filter`` lets the reference clone: observed return above the
        value of the fold that never learnt from the row's episode, or no observed return."""
        if self.filter_value is None:
            return torch.ones_like(t.offline)
        other = fold_value(self.filter_value(t.obs), t.folds, other=True)
        return (t.returns > other) | torch.isnan(t.returns)

    def critic_step(self, t: ChunkTensors) -> dict[str, float]:
        """Algorithm 2, lines 1-4: V_psi on the EMA critics' min (eq. 12), the TD target with the
        entropy-adapted quantile of V_psi (eqs. 17-19, 23), both critics on it (eq. 15), EMA."""
        with torch.no_grad():
            q_replay = pessimistic_q(self.target_critic.forward_flat(t.obs, t.actions))
        metrics = self.divl.step(t.obs, q_replay)
        boot, tau, entropy = self.divl.bootstrap(t.next_obs)
        target = n_step_chunk_target(t.chunk_reward, t.discount, t.done, boot)  # one chunk per row: n = 1
        fit = self.fit_critics(t, target, self.config.ema)
        if self.filter_value is not None:
            metrics |= self.filter_step(t)
        return metrics | {
            "q_loss": fit.pop("loss"),
            **fit,
            "tau": float(tau.mean()),
            "value_entropy": float(entropy.mean()),
        }

    def _bc_loss(self, flow: FlowChunkPolicy, t: ChunkTensors, rows: torch.Tensor) -> torch.Tensor | None:
        """Flow-matching BC (eq. 34) on the batch's rows ``rows`` [B] bool; None without any."""
        if not bool(rows.any()):
            return None
        return flow_matching_loss(flow, t.obs[rows], t.actions[rows], mask=t.mask[rows])

    def bc_step(self, t: ChunkTensors) -> dict[str, float]:
        """The BC phase: one BC step of the policy; counts towards ``bc_steps`` (rows without offline
        data make no step and are not counted)."""
        loss = self._bc_loss(self.policy, t, t.offline)
        if loss is None:  # counted only if other workers of a multi-worker learner stepped
            if not self.idle_optim_step(self.actor_optim, self.trained_parameters()):
                return {}
        else:
            self.optim_step(loss, self.actor_optim, self.trained_parameters())
        self.bc_done += 1
        if self.bc_done >= self.config.bc_steps:
            self._start_reference()
        return {} if loss is None else {"bc_loss": float(loss.detach())}

    def reference_step(self, t: ChunkTensors) -> dict[str, float]:
        """'ema' mode: ``reference_steps`` BC steps of the BC flow on ``reference_rows`` (those
        ``reference_filter`` keeps), each followed by f_beta's move towards it (rate ``reference_ema``)."""
        if self.bc_flow is None or self.bc_optim is None:
            return {}
        assert self.reference is not None
        eligible = t.offline if self.config.reference_rows == "offline" else torch.ones_like(t.offline)
        keep = eligible & self.reference_keep(t)
        kept = {"reference_kept": float(keep.sum()) / max(int(eligible.sum()), 1)}
        for _ in range(self.config.reference_steps):
            loss = self._bc_loss(self.bc_flow, t, keep)  # fresh noise and flow times each step
            if loss is not None:
                self.optim_step(loss, self.bc_optim, self.bc_flow.parameters())
            else:
                self.idle_optim_step(self.bc_optim, self.bc_flow.parameters())
            polyak_update(self.reference, self.bc_flow, self.config.reference_ema)
        return kept if loss is None else kept | {"bc_loss": float(loss.detach())}

    def actor_step(self, t: ChunkTensors) -> dict[str, float]:
        """Algorithm 2, lines 5-8: fine-tuned trajectories, grad_a Q at their ends, lean adjoint along
        the reference drift, and one step on the adjoint-matching loss (eqs. 9-10)."""
        assert self.reference is not None
        obs, (b, d), n = t.obs, (t.obs.shape[0], self.policy.action_dim), self.n_flow
        feat = self.policy.features(obs)  # the policy's and the reference's own encoders (cameras)
        with torch.no_grad():
            ref_feat = self.reference.features(obs)
        x0 = torch.randn(b, d, device=obs.device)
        last = self.reference.velocity if self.config.ode_last_step else None
        xs = sample_memoryless(self.policy.velocity, feat.detach(), x0, n, self.shift, last_velocity=last,
                               last_features=ref_feat)  # fmt: skip
        g1 = terminal_adjoint(self.guide_q(obs), xs[-1], self.config.temperature, *self._bounds())
        adj, v_ref = lean_adjoint(self.reference.velocity, ref_feat, xs, g1, self.shift, last is not None)
        ws = time_grid(n, obs.device)
        v_theta = self.policy.velocity(
            feat.repeat(n, 1), xs[:n].reshape(n * b, d), ws.repeat_interleave(b)
        ).reshape(n, b, d)
        loss = adjoint_matching_loss(v_theta, v_ref, adj[:n], memoryless_sigma(ws, self.shift))
        grad_norm = self.optim_step(loss, self.actor_optim, self.trained_parameters())
        return {
            "adjoint_loss": float(loss.detach()),
            "adjoint_norm": float(g1.norm(dim=-1).mean()),
            "actor_grad_norm": grad_norm,
        }

    def _bounds(self) -> tuple[float, float]:
        return float(self.policy.low), float(self.policy.high)

    @torch.no_grad()
    def diagnostics(self, t: ChunkTensors) -> dict[str, float]:
        """What the learner reports of its critic and policy: the guiding critic's Q of the data's, the
        deployed policy's (ODE sample) and uniformly random chunks, Q's correlation with the observed
        returns, and the RMS distances policy-data, policy-reference, reference-data (reference and policy
        from the same noise). Forward passes only."""
        low, high = self._bounds()
        obs, data = t.obs, t.actions
        noise = torch.randn_like(data)
        pi = self.policy.sample_flat(self.policy.features(obs), noise).clamp(low, high)
        q = self.guide_q(obs)
        q_data = q(data)
        out = q_diagnostics(q_data, q(pi), q(random_chunks(data.shape[0], data, low, high)))
        corr = return_correlation(q_data, t.returns)
        if corr is not None:
            out["q_return_corr"] = corr
        out["policy_to_data"] = action_distance(pi, data, t.mask)
        if self.reference is not None:
            ref = self.reference.sample_flat(self.reference.features(obs), noise).clamp(low, high)
            out["policy_to_reference"] = action_distance(pi, ref)
            out["reference_to_data"] = action_distance(ref, data, t.mask)
        return out

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        t = self.tensors(batch)
        metrics = self.critic_step(t)
        in_bc = self.reference is None
        metrics |= self.bc_step(t) if in_bc else self.actor_step(t) | self.reference_step(t)
        if self.diagnostics_due():
            self.last_diagnostics = self.diagnostics(t)
        self.steps += 1
        phase = {"phase": 0.0 if in_bc else 1.0, "bc_steps_done": float(self.bc_done)}
        return metrics | self.last_diagnostics | phase

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "divl": self.divl.state_dict(),
            "reference": None if self.reference is None else self.reference.state_dict(),
            "bc_flow": None if self.bc_flow is None else self.bc_flow.state_dict(),
            "bc_optim": None if self.bc_optim is None else self.bc_optim.state_dict(),
            "bc_done": self.bc_done,
            "diagnostics": dict(self.last_diagnostics),
            "filter_value": None if self.filter_value is None else self.filter_value.state_dict(),
            "filter_optim": None if self.filter_optim is None else self.filter_optim.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.divl.load_state_dict(state["divl"])
        self.bc_done = int(state["bc_done"])
        self.last_diagnostics = dict(state.get("diagnostics", {}))
        if self.filter_value is not None and self.filter_optim is not None and state.get("filter_value"):
            self.filter_value.load_state_dict(state["filter_value"])  # else (filter just switched on): afresh
            self.filter_optim.load_state_dict(state["filter_optim"])
        self.reference = self.bc_flow = self.bc_optim = None
        if state["reference"] is not None:
            self._start_reference()
            assert self.reference is not None
            self.reference.load_state_dict(state["reference"])
        if self.bc_flow is not None and self.bc_optim is not None:
            if state.get("bc_flow") is not None:  # checkpoints before 'ema' carry no BC flow: restart it
                self.bc_flow.load_state_dict(state["bc_flow"])
                self.bc_optim.load_state_dict(state["bc_optim"])
            else:
                self.bc_flow.load_state_dict(state["reference"])
