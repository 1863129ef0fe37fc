"""PPO over action chunks, with old log-probs recomputed in torch by the weight version that acted.

A PPO *decision* is one action chunk. In an ``Episode`` it starts at a row with a finite ``log_prob`` and
``policy_version >= 0`` and spans the following rows with the same (``policy_version``, ``obs_step``) and
no ``log_prob`` of their own, at most ``chunk_len`` rows. Its state is ``observations[obs_step]`` (with
asynchronous execution that observation may predate the chunk's first row), its action the executed
rows (a chunk cut short by the episode's end or an operator gets ``mask = 0`` on its unexecuted tail,
padded by repeating its last executed action), its reward ``sum_k gamma^k r_{t+k}`` over its ``h`` rows
and its discount to the next decision ``gamma^h``. GAE runs over decisions with that per-decision
discount and one ``lambda`` per decision.

Chains: a decision followed directly by the next one bootstraps from the next decision's state and GAE
flows through it. Rows that are not decisions (operator interventions, safety holds, the resumed tail
of a chunk an operator interrupted) *break the chain*: their rewards are not credited to the policy,
and the decision before them bootstraps from ``V(observations[t + h])`` like a time limit. At the end
of an episode a ``terminated`` one has no bootstrap; any other bootstraps from ``V(final_observation)``.

The log-probs an inference backend reports are never used for the ratio (DESIGN §3): PPO keeps the last
``history`` published weight versions and recomputes each decision's old log-prob with the version that
produced it; decisions of versions no longer kept are dropped and counted (``dropped_stale``). The gap
between reported and recomputed log-probs is reported (``logprob_gap``), with the clip fraction the
reported values would have caused (``reported_clip_fraction``; the VLAC paper saw ~60% with vLLM).
VLAC eq. 6 (an NLL loss on demonstrations) is the learner's ``demo_replay`` option, for every algorithm.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from fleetrl.algorithms.base import Algorithm, AlgorithmConfig, BatchRequest, PolicySpec
from fleetrl.algorithms.batch import EpisodeBatch
from fleetrl.robots.episode import Episode

# -- loss and advantage maths (tensors in, tensors out) ------------------------------------------------


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    discounts: torch.Tensor,
    dones: torch.Tensor,
    chain_ends: torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a flat sequence of decisions; returns (advantages, returns).

    All inputs are [N]: ``values`` = V(s_i), ``next_values`` = V(s'_i) (the next decision's state, or the
    bootstrap state where a chain ends), ``discounts`` = gamma^h_i, ``dones`` = terminal (no bootstrap),
    ``chain_ends`` = decision i+1 does not continue decision i's chain (episode end, or non-policy rows
    in between). delta_i = r_i + d_i (1 - done_i) V(s'_i) - V(s_i);
    A_i = delta_i + d_i lam (1 - done_i)(1 - end_i) A_{i+1}; returns = A + V(s)."""
    live = 1.0 - dones.float()
    deltas = rewards + discounts * live * next_values - values
    carry = (discounts * lam * live * (1.0 - chain_ends.float())).tolist()
    out, acc = deltas.tolist(), 0.0
    for i in reversed(range(len(out))):
        acc = out[i] = out[i] + carry[i] * acc
    adv = torch.tensor(out, dtype=values.dtype, device=values.device)
    return adv, adv + values


def ppo_clip_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate (VLAC eq. 5) as a loss to minimise, and the fraction of rows whose ratio is clipped.
    ``weights`` (e.g. truncated importance weights) scale each row's surrogate."""
    ratio = torch.exp(new_logp - old_logp)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    if weights is not None:
        surrogate = surrogate * weights
    return -surrogate.mean(), ((ratio - 1).abs() > clip).float().mean()


def tis_weights(
    proximal_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights min(pi_proximal / mu_behaviour, cap) between the recomputed fp32 policy
    and the backend that sampled (rows without a behaviour log-prob get 1); and the fraction capped."""
    ratio = torch.exp(proximal_logp - behaviour_logp)
    ratio = torch.where(torch.isfinite(behaviour_logp), ratio, torch.ones_like(ratio))
    return ratio.clamp(max=cap), (ratio > cap).float().mean()


def ratio_quantiles(log_ratio: torch.Tensor, prefix: str) -> dict[str, float]:
    """P1/P50/P99 of exp(log_ratio) (NaN when empty): the spread of an importance ratio."""
    if log_ratio.numel() == 0:
        return {f"{prefix}_p{q:02d}": float("nan") for q in (1, 50, 99)}
    qs = torch.quantile(log_ratio.double().exp(), torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64))
    return {f"{prefix}_p{q:02d}": float(v) for q, v in zip((1, 50, 99), qs.tolist(), strict=True)}


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """0.5 * mean squared error; with ``clip`` the pessimistic max over the clipped and unclipped errors."""
    err = (values - returns).square()
    if clip is not None and old_values is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.max(err, (clipped - returns).square())
    return 0.5 * err.mean()


def approx_kl(new_logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """KL(old || new) estimated from samples of old: mean((r - 1) - log r), r = new / old (non-negative)."""
    log_ratio = new_logp - old_logp
    return (log_ratio.exp() - 1 - log_ratio).mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); NaN when the target is constant."""
    var = target.var(unbiased=False)
    return float("nan") if var <= 0 else float(1 - (target - predicted).var(unbiased=False) / var)


# -- episodes -> decisions -----------------------------------------------------------------------------


@dataclass
class Decisions:
    """Decision tensors, episodes in order and decisions in time order within each (see module doc)."""

    obs: dict[str, torch.Tensor]  # key -> [N, *shape]: observations[obs_step]
    actions: torch.Tensor  # [N, H, *action_shape], padded by repeating the last executed action
    mask: torch.Tensor  # [N, H] bool: executed
    reward: torch.Tensor  # [N] sum_{k<h} gamma^k r_{t+k}
    discount: torch.Tensor  # [N] gamma^h
    next_obs: dict[str, torch.Tensor]  # key -> [N, *shape]: the bootstrap state
    done: torch.Tensor  # [N] bool: the episode terminated after this decision (no bootstrap)
    chain_end: torch.Tensor  # [N] bool: the next decision does not follow this one directly
    reported_logp: torch.Tensor  # [N] the inference server's log-prob of the chunk
    version: torch.Tensor  # [N] int64 policy version that produced the chunk

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def select(self, idx: torch.Tensor) -> Decisions:
        def pick(x):
            return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]

        return Decisions(**{f: pick(getattr(self, f)) for f in self.__dataclass_fields__})


def _episode_decisions(ep: Episode, chunk_len: int, gamma: float, rows: dict[str, list]) -> None:
    cols, n = ep.columns, len(ep)
    version, obs_step, logp, reward = (
        cols["policy_version"],
        cols["obs_step"],
        cols["log_prob"],
        cols["reward"],
    )
    t, starts = 0, []
    while t < n:  # find each decision's [start, end) rows
        if version[t] < 0 or not np.isfinite(logp[t]):
            t += 1
            continue
        end = t + 1
        while (
            end < n
            and end - t < chunk_len
            and version[end] == version[t]
            and obs_step[end] == obs_step[t]
            and not np.isfinite(logp[end])
        ):
            end += 1
        starts.append((t, end))
        t = end
    for i, (t, end) in enumerate(starts):
        h = end - t
        nxt = starts[i + 1][0] if i + 1 < len(starts) else None
        at_end, chained = end == n, nxt == end
        rows["obs"].append((ep.observations, int(obs_step[t])))
        if chained:
            rows["next_obs"].append((ep.observations, int(obs_step[end])))
        elif at_end:
            rows["next_obs"].append((ep.final_observation, None))
        else:
            rows["next_obs"].append((ep.observations, end))
        pad = np.concatenate([ep.actions[t:end], np.repeat(ep.actions[end - 1 : end], chunk_len - h, 0)])
        rows["actions"].append(pad)
        rows["mask"].append(np.arange(chunk_len) < h)
        rows["reward"].append(float(np.sum(reward[t:end] * gamma ** np.arange(h))))
        rows["discount"].append(gamma**h)
        rows["done"].append(at_end and ep.terminated)
        rows["chain_end"].append(not chained)
        rows["reported_logp"].append(float(logp[t]))
        rows["version"].append(int(version[t]))


def episode_decisions(
    episodes: EpisodeBatch | list[Episode], chunk_len: int, gamma: float, device: torch.device | str = "cpu"
) -> Decisions:
    """Turn whole episodes into PPO decisions (one per executed policy chunk; see module doc)."""
    episodes = episodes.episodes if isinstance(episodes, EpisodeBatch) else episodes
    rows: dict[str, list] = {k: [] for k in Decisions.__dataclass_fields__}
    for ep in episodes:
        _episode_decisions(ep, chunk_len, gamma, rows)
    first = episodes[0] if episodes else None
    obs_shapes = {k: v.shape[1:] for k, v in first.observations.items()} if first else {}
    act_shape = first.actions.shape[1:] if first else ()

    def stack(items: list, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        arr = np.stack(items) if items else np.zeros((0, *shape))
        return torch.as_tensor(arr, dtype=dtype, device=device)

    def gather(refs: list) -> dict[str, torch.Tensor]:
        return {
            k: stack([src[k] if i is None else src[k][i] for src, i in refs], shape, torch.float32)
            for k, shape in obs_shapes.items()
        }

    def column(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(rows[name]), dtype=dtype, device=device)

    return Decisions(
        obs=gather(rows["obs"]),
        actions=stack(rows["actions"], (chunk_len, *act_shape), torch.float32),
        mask=stack(rows["mask"], (chunk_len,), torch.bool),
        reward=column("reward", torch.float32),
        discount=column("discount", torch.float32),
        next_obs=gather(rows["next_obs"]),
        done=column("done", torch.bool),
        chain_end=column("chain_end", torch.bool),
        reported_logp=column("reported_logp", torch.float32),
        version=column("version", torch.int64),
    )


# -- the plug-in ---------------------------------------------------------------------------------------


class PPOConfig(AlgorithmConfig):
    batch_size: int = Field(64, ge=1, description="Decisions (chunks) per minibatch.")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (mean net, log-std and value head).")
    clip: float = Field(0.2, gt=0, description="Ratio clip epsilon.")
    value_clip: float | None = Field(None, gt=0, description="Clip value updates to this range (None: off).")
    epochs: int = Field(10, ge=1, description="Passes over each batch.")
    steps_per_update: int = Field(2048, ge=1, description="Fresh env steps per update.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda, applied once per decision.")
    value_coef: float = Field(0.5, ge=0, description="Weight of the value loss.")
    entropy_coef: float = Field(0.0, description="Weight of the entropy bonus.")
    max_grad_norm: float = Field(0.5, gt=0, description="Global gradient norm clip.")
    normalize_advantages: bool = Field(True, description="Standardise advantages over the batch.")
    max_version_lag: int = Field(2, ge=0, description="Oldest policy version, behind the current, to accept.")
    history: int = Field(4, ge=1, description="Published weight versions kept to recompute log-probs.")
    stale: Literal["drop", "wait"] = Field(
        "drop",
        description="Episodes with steps over max_version_lag behind are dropped either way; 'wait' also "
        "holds each update until every inference replica serves the newest version (never runs ahead).",
    )
    anchor: Literal["recompute", "bypass"] = Field(
        "recompute",
        description="Old log-probs for the ratio: recomputed in fp32 torch with the producing version "
        "(default), or the backend's reported ones ('bypass': for comparison only; chunks without a "
        "complete reported log-prob fall back to the recomputed one).",
    )
    tis_cap: float | None = Field(
        None,
        gt=0,
        description="Truncated importance sampling between the backend (behaviour) and the recomputed "
        "(proximal) policy: each row's surrogate is weighted by min(pi/mu, tis_cap) (None: off).",
    )

    @model_validator(mode="after")
    def _history_covers_lag(self) -> PPOConfig:
        if self.history < self.max_version_lag + 1:
            raise ValueError(f"history ({self.history}) must be at least max_version_lag + 1")
        return self


class PPO(Algorithm):
    name = "ppo"
    data = "episodes"
    policy_families = frozenset({"gaussian_mlp", "token_lm"})
    config_cls = PPOConfig
    config: PPOConfig

    def __init__(self, config: PPOConfig, policy: nn.Module, spec: PolicySpec, device: str = "cpu"):
        super().__init__(config, policy, spec, device)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr, eps=1e-5)
        self.history: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self._scratch: nn.Module | None = None

    def batch_request(self) -> BatchRequest:
        return BatchRequest(
            "episodes", self.config.steps_per_update, self.config.max_version_lag, self.config.stale == "wait"
        )

    def ready_to_update(self, batch: EpisodeBatch) -> bool:
        return batch.steps >= self.config.steps_per_update

    def published(self, version: int) -> None:
        self.history[version] = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        self.history.move_to_end(version)
        while len(self.history) > self.config.history:
            self.history.popitem(last=False)

    @torch.no_grad()
    def recompute_log_probs(self, d: Decisions) -> torch.Tensor:
        """Old log-probs of ``d`` under the kept weights of the version that produced each decision."""
        if self._scratch is None:
            self._scratch = copy.deepcopy(self.policy)
        out = torch.full_like(d.reported_logp, float("nan"))
        for version in d.version.unique().tolist():
            rows = (d.version == version).nonzero().squeeze(-1)
            self._scratch.load_state_dict(self.history[version])
            sel = d.select(rows)
            out[rows] = self._scratch.log_prob(sel.obs, sel.actions, sel.mask)
        return out

    def update(self, batch: EpisodeBatch) -> dict[str, float]:
        cfg = self.config
        d = episode_decisions(batch, self.spec.chunk_len, self.spec.gamma, self.device)
        kept = torch.tensor([v in self.history for v in d.version.tolist()], dtype=torch.bool)
        d = d.select(kept.nonzero().squeeze(-1).to(self.device))
        returns = [float(e.columns["reward"].sum()) for e in batch.episodes]
        metrics = {"decisions": float(len(d)), "dropped_stale": float((~kept).sum())}
        metrics["mean_return"] = float(np.mean(returns)) if returns else float("nan")
        if len(d) == 0:
            return metrics
        recomputed = self.recompute_log_probs(d)
        old_logp, behaviour, metrics["bypass_coverage"] = self._anchor(d, recomputed)
        weights = None
        if cfg.tis_cap is not None:
            weights, capped = tis_weights(recomputed, behaviour, cfg.tis_cap)
            metrics["tis_capped_fraction"] = float(capped)
            metrics["tis_weight_mean"] = float(weights.mean())
        with torch.no_grad():
            values, next_values = self.policy.value(d.obs), self.policy.value(d.next_obs)
        adv, ret = gae(d.reward, values, next_values, d.discount, d.done, d.chain_end, cfg.gae_lambda)
        metrics |= self._gap_metrics(d, recomputed)
        metrics["explained_variance"] = explained_variance(values, ret)
        if cfg.normalize_advantages and len(d) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        sums: dict[str, float] = {}
        steps, first_epoch_log_ratios = 0, []
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(d), generator=self.generator).to(self.device)
            for idx in order.split(cfg.batch_size):
                out, log_ratio = self._minibatch(
                    d.select(idx),
                    old_logp[idx],
                    adv[idx],
                    ret[idx],
                    values[idx],
                    None if weights is None else weights[idx],
                )
                if epoch == 0:
                    first_epoch_log_ratios.append(log_ratio)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
        # The first epoch's ratios show the anchor's quality: with recomputed log-probs the first minibatch
        # starts at exactly 1; with a mismatched backend's (bypass) they are spread from the start.
        first = torch.cat(first_epoch_log_ratios)
        metrics |= ratio_quantiles(first, "ratio")
        metrics["clip_fraction_first_epoch"] = float(((first.exp() - 1).abs() > cfg.clip).float().mean())
        return metrics | {k: v / steps for k, v in sums.items()}

    def _anchor(self, d: Decisions, recomputed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(old log-probs for the ratio, behaviour log-probs (NaN where unknown), share of rows anchored on
        reported values). Reported log-probs are whole-chunk ones, so only complete chunks have one."""
        behaviour = torch.where(
            d.mask.all(-1) & torch.isfinite(d.reported_logp),
            d.reported_logp,
            torch.full_like(recomputed, torch.nan),
        )
        if self.config.anchor == "recompute":
            return recomputed, behaviour, 0.0
        known = torch.isfinite(behaviour)
        return torch.where(known, behaviour, recomputed), behaviour, float(known.float().mean())

    def _evaluate(self, obs, actions, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob, entropy) per row; one forward pass where the policy offers ``evaluate``."""
        if hasattr(self.policy, "evaluate"):
            return self.policy.evaluate(obs, actions, mask)
        return self.policy.log_prob(obs, actions, mask), self.policy.entropy(obs)

    def _minibatch(
        self, d: Decisions, old_logp, adv, ret, old_values, weights
    ) -> tuple[dict[str, float], torch.Tensor]:
        cfg = self.config
        new_logp, entropy = self._evaluate(d.obs, d.actions, d.mask)
        pg_loss, clip_frac = ppo_clip_loss(new_logp, old_logp, adv, cfg.clip, weights)
        v_loss = value_loss(self.policy.value(d.obs), ret, old_values, cfg.value_clip)
        entropy = entropy.mean()
        loss = pg_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
        out: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        metrics = out | {
            "policy_loss": pg_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": entropy.item(),
            "approx_kl": float(approx_kl(new_logp.detach(), old_logp)),
            "clip_fraction": float(clip_frac),
            "grad_norm": float(grad_norm),
        }
        return metrics, (new_logp - old_logp).detach()

    def _gap_metrics(self, d: Decisions, recomputed: torch.Tensor) -> dict[str, float]:
        full = d.mask.all(-1) & torch.isfinite(d.reported_logp)
        if not full.any():
            return {
                "logprob_gap": float("nan"),
                "logprob_gap_max": float("nan"),
                "reported_clip_fraction": float("nan"),
            }
        diff = d.reported_logp[full] - recomputed[full]
        return ratio_quantiles(recomputed[full] - d.reported_logp[full], "mismatch_ratio") | {
            "logprob_gap": float(diff.abs().mean()),
            "logprob_gap_max": float(diff.abs().max()),
            "reported_clip_fraction": float(((diff.exp() - 1).abs() > self.config.clip).float().mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "history": dict(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = OrderedDict(sorted(state.get("history", {}).items()))
