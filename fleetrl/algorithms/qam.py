"""QAM, Q-learning with Adjoint Matching (LWD seed 003 §III-C, §IV-B, Algorithms 1-2) with DIVL critics.

Target (eq. 8): ``pi*(a | s) ∝ pi_beta(a | s) exp(Q(s, a) / lambda)`` for a frozen behaviour-cloned
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

Actions outside the bounds: the critic scores the clipped chunk and its gradient is passed straight
through the clip to ``a^1`` (the critic never saw unclipped actions).

Reference flow (Algorithm 1, lines 1-2, app. B3: BC checkpoint first, frozen reference = that
checkpoint): QAM's first ``bc_steps`` updates train the policy by flow-matching BC (eq. 34) on the
batch's *offline* rows (demonstrations; a batch without offline rows makes no BC step and the step is
not counted), then a frozen copy becomes ``f_beta`` and adjoint matching starts. ``bc_steps = 0`` takes
the policy as given (e.g. trained by the ``bc`` algorithm) as the reference. Critics and ``V_psi`` learn
from the first update. Critic learning is DIVL (``fleetrl.algorithms.divl``) with one-chunk TD targets
(eq. 19 with n = 1: a ``ChunkBatch`` holds one chunk per row).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from fleetrl.algorithms.base import AlgorithmConfig, PolicySpec
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.chunk_algorithm import ActorCriticAlgorithm, ActorCriticConfig, ChunkTensors
from fleetrl.algorithms.divl import DIVL, DIVLConfig
from fleetrl.algorithms.td import ensemble_td_loss, n_step_chunk_target, pessimistic_q, polyak_update
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
    velocity: Velocity, obs: torch.Tensor, x0: torch.Tensor, steps: int, shift: float, noise=None
) -> torch.Tensor:
    """Euler-Maruyama on the memoryless SDE: ``x_{k+1} = x_k + h b(x_k, w_k) + sqrt(h) sigma_k xi_k``;
    ``noise`` [steps, B, D] fixes the ``xi_k``. Returns the trajectory [steps + 1, B, D]."""
    h, ws = 1.0 / steps, time_grid(steps, x0.device, x0.dtype)
    xs = [x0]
    for k in range(steps):
        w = ws[k].expand(x0.shape[0])
        xi = torch.randn_like(x0) if noise is None else noise[k]
        drift = memoryless_drift(velocity(obs, xs[-1], w), xs[-1], ws[k], shift)
        xs.append(xs[-1] + h * drift + (h**0.5) * memoryless_sigma(ws[k], shift) * xi)
    return torch.stack(xs)


def terminal_adjoint(
    q_fn: Callable[[torch.Tensor], torch.Tensor], a1: torch.Tensor, temperature: float, low, high
) -> torch.Tensor:
    """Eq. 10: ``g_1 = -grad_a Q(s, a^1) / lambda`` with ``q_fn(actions) -> [B]``; Q scores the clipped
    chunk and the gradient passes straight through the clip."""
    with torch.enable_grad():
        a = a1.detach().requires_grad_(True)
        q = q_fn(a + (a.clamp(low, high) - a).detach())
        (grad,) = torch.autograd.grad(q.sum(), a)
    return -grad / temperature


def lean_adjoint(
    velocity: Velocity, obs: torch.Tensor, xs: torch.Tensor, g1: torch.Tensor, shift: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward recursion of the lean adjoint along the trajectory ``xs`` [N + 1, B, D] with the drift of
    ``velocity`` (the reference flow): ``g_N = g1``, ``g_k = g_{k+1} + h g_{k+1}^T d b / dx (x_k, w_k)``.
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
    """LWD app. B2: critics Adam 5e-4, policy AdamW 2e-5 (for a VLA; small MLPs use 3e-4), EMA 0.005,
    lambda = 2 for 0/1 rewards (scale lambda with your rewards' scale), two critics (clipped double Q)."""

    divl: DIVLConfig = Field(default_factory=DIVLConfig, description="Distributional value learning.")
    ema: float = Field(0.005, gt=0.0, le=1.0, description="EMA rate of the target critics.")
    temperature: float = Field(2.0, gt=0.0, description="lambda of eqs. 8 and 10.")
    actor_q: Literal["mean", "min"] = Field("mean", description="Critic aggregate whose gradient guides QAM.")
    flow_steps: int | None = Field(None, ge=1, le=256, description="Adjoint-matching steps; None: policy's.")
    time_shift: float | None = Field(None, gt=0.0, description="delta in 1 / (w + delta); None: 1 / steps.")
    bc_steps: int = Field(1000, ge=0, description="BC updates on offline rows before freezing f_beta.")


class QAM(ActorCriticAlgorithm):
    name: ClassVar[str] = "qam"
    config_cls: ClassVar[type[AlgorithmConfig]] = QAMConfig
    config: QAMConfig

    def __init__(self, config: QAMConfig, policy: nn.Module, spec: PolicySpec, device: str = "cpu"):
        super().__init__(config, policy, spec, device)
        with seeded(config.seed + 1):
            self.divl = DIVL(config.divl, spec.observation_spec, self.device)
        self.reference: FlowChunkPolicy | None = None
        self.bc_done = 0
        if config.bc_steps == 0:
            self._freeze_reference()

    def critic_optimizer(self) -> torch.optim.Optimizer:
        """Adam (LWD app. B2)."""
        return torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return super().optimizers() | {"value": self.divl.optim}

    def _freeze_reference(self) -> None:
        self.reference = copy.deepcopy(self.policy).requires_grad_(False).eval()

    @property
    def n_flow(self) -> int:
        return self.config.flow_steps or self.policy.flow_steps

    @property
    def shift(self) -> float:
        return self.config.time_shift or 1.0 / self.n_flow

    def critic_step(self, t: ChunkTensors) -> dict[str, float]:
        """Algorithm 2, lines 1-4: V_psi on the EMA critics' min (eq. 12), the TD target with the
        entropy-adapted quantile of the EMA value (eqs. 17-19, 23), both critics on it (eq. 15), EMA."""
        with torch.no_grad():
            q_replay = pessimistic_q(self.target_critic.forward_flat(t.obs, t.actions))
        metrics = self.divl.step(t.obs, q_replay)
        boot, tau, entropy = self.divl.bootstrap(t.next_obs)
        target = n_step_chunk_target(t.chunk_reward, t.discount, t.done, boot)  # one chunk per row: n = 1
        q = self.critic.forward_flat(t.obs, t.actions)
        loss = ensemble_td_loss(q, target)
        grad_norm = self.optim_step(loss, self.critic_optim, self.critic.parameters())
        polyak_update(self.target_critic, self.critic, self.config.ema)
        return metrics | {
            "q_loss": float(loss.detach()),
            "q_mean": float(q.detach().mean()),
            "target_mean": float(target.mean()),
            "tau": float(tau.mean()),
            "value_entropy": float(entropy.mean()),
            "critic_grad_norm": grad_norm,
        }

    def bc_step(self, t: ChunkTensors) -> dict[str, float]:
        """Flow-matching BC (eq. 34) on the batch's offline rows; counts towards ``bc_steps``."""
        rows = t.offline
        if not bool(rows.any()):
            return {}
        loss = flow_matching_loss(self.policy, t.obs[rows], t.actions[rows], mask=t.mask[rows])
        self.optim_step(loss, self.actor_optim, self.trained_parameters())
        self.bc_done += 1
        if self.bc_done >= self.config.bc_steps:
            self._freeze_reference()
        return {"bc_loss": float(loss.detach())}

    def actor_step(self, t: ChunkTensors) -> dict[str, float]:
        """Algorithm 2, lines 5-8: fine-tuned trajectories, grad_a Q at their ends, lean adjoint along
        the reference drift, and one step on the adjoint-matching loss (eqs. 9-10)."""
        assert self.reference is not None
        obs, (b, d), n = t.obs, (t.obs.shape[0], self.policy.action_dim), self.n_flow
        x0 = torch.randn(b, d, device=obs.device)
        xs = sample_memoryless(self.policy.velocity, obs, x0, n, self.shift)
        agg = pessimistic_q if self.config.actor_q == "min" else (lambda q: q.mean(0))
        q_fn = lambda a: agg(self.critic.forward_flat(obs, a))  # noqa: E731
        g1 = terminal_adjoint(q_fn, xs[-1], self.config.temperature, self.policy.low, self.policy.high)
        adj, v_ref = lean_adjoint(self.reference.velocity, obs, xs, g1, self.shift)
        ws = time_grid(n, obs.device)
        v_theta = self.policy.velocity(
            obs.repeat(n, 1), xs[:n].reshape(n * b, d), ws.repeat_interleave(b)
        ).reshape(n, b, d)
        loss = adjoint_matching_loss(v_theta, v_ref, adj[:n], memoryless_sigma(ws, self.shift))
        grad_norm = self.optim_step(loss, self.actor_optim, self.trained_parameters())
        with torch.no_grad():
            q_pi = q_fn(xs[-1].clamp(self.policy.low, self.policy.high))
        return {
            "adjoint_loss": float(loss.detach()),
            "q_policy": float(q_pi.mean()),
            "adjoint_norm": float(g1.norm(dim=-1).mean()),
            "actor_grad_norm": grad_norm,
        }

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        t = self.tensors(batch)
        metrics = self.critic_step(t)
        in_bc = self.reference is None
        metrics |= self.bc_step(t) if in_bc else self.actor_step(t)
        self.steps += 1
        return metrics | {"phase": 0.0 if in_bc else 1.0, "bc_steps_done": float(self.bc_done)}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "divl": self.divl.state_dict(),
            "reference": None if self.reference is None else self.reference.state_dict(),
            "bc_done": self.bc_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.divl.load_state_dict(state["divl"])
        self.bc_done = int(state["bc_done"])
        self.reference = None
        if state["reference"] is not None:
            self._freeze_reference()
            assert self.reference is not None
            self.reference.load_state_dict(state["reference"])
