"""PPO over action chunks (``ppo_decisions.py``: what a decision is), with old log-probs recomputed in torch
by the weight version that acted.

The log-probs an inference backend reports are never used for the ratio: PPO keeps the last
``history`` published weight versions and recomputes each decision's old log-prob with the version that
produced it; decisions more than ``max_version_lag`` versions behind the newest (or of versions no longer
kept) are dropped after GAE and counted (``dropped_stale``): a long episode that started on an old version
still trains on its recent decisions. The gap
between reported and recomputed log-probs is reported (``logprob_gap``), with the clip fraction the
reported values would have caused (``reported_clip_fraction``; the VLAC paper saw ~60% with vLLM).
VLAC eq. 6 (an NLL loss on demonstrations) is the learner's ``demo_replay`` option, for every algorithm.
Advantages run over every decision of the batch in time order before stale ones leave, so a dropped
decision never joins the chains of its neighbours. Held steps (the robot's ``hold()``) are no decisions;
their time and rewards count for the decision before them, and ``hold_fraction`` (held / all steps of
the batch) is reported beside ``mean_return``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from fleetrl.algorithms.base import Algorithm, AlgorithmConfig, BatchRequest, PolicySpec, clipped_step
from fleetrl.algorithms.batch import EpisodeBatch
from fleetrl.algorithms.ppo_decisions import Decisions, episode_decisions
from fleetrl.algorithms.ppo_math import (
    RewardScale,
    approx_kl,
    explained_variance,
    gae,
    ppo_clip_loss,
    ratio_quantiles,
    tis_weights,
    value_loss,
)


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
    normalize_rewards: bool = Field(
        False,
        description="Divide rewards by the running standard deviation of the discounted return (CleanRL's "
        "NormalizeReward): keeps value targets near unit scale when returns run to the hundreds.",
    )
    max_version_lag: int = Field(2, ge=0, description="Oldest policy version, behind the current, to accept.")
    history: int = Field(4, ge=1, description="Published weight versions kept to recompute log-probs.")
    stale: Literal["drop", "wait"] = Field(
        "drop",
        description="Decisions over max_version_lag behind are dropped either way; 'wait' also "
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
    proximal: Literal["current", "producing"] = Field(
        "current",
        description="Policy the ratio is clipped around: 'current' (the weights at the start of the update; "
        "a row of an older version is weighted by min(pi_current / pi_producing, staleness_cap): decoupled "
        "PPO, Hilton et al. 2021) or 'producing' (the version that acted: with asynchronous collection most "
        "stale rows start outside the clip and give no gradient). Identical on fresh rows.",
    )
    staleness_cap: float = Field(
        2.0, gt=0, description="Cap of the importance weight pi_current / pi_producing ('current')."
    )

    @model_validator(mode="after")
    def _history_covers_lag(self) -> PPOConfig:
        if self.history < self.max_version_lag + 1:
            raise ValueError(f"history ({self.history}) must be at least max_version_lag + 1")
        return self


def batch_stats(batch: EpisodeBatch) -> dict[str, float]:
    """The batch's mean episode return and ``hold_fraction``: held steps (the robot's ``hold()`` ran, no
    chunk was ready) over all steps, what asynchronous execution cost this batch. A piece of a running
    episode (``segment_of``) counts only as the last piece, with its whole episode's return."""
    returns = [
        float(e.meta.get("episode_return", e.columns["reward"].sum()))
        for e in batch.episodes
        if "segment_of" not in e.meta or "episode_return" in e.meta
    ]
    steps = sum(len(e) for e in batch.episodes)
    held = sum(int(e.columns["held"].sum()) for e in batch.episodes if "held" in e.columns)
    return {
        "mean_return": float(np.mean(returns)) if returns else float("nan"),
        "hold_fraction": held / steps if steps else float("nan"),
    }


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
        self.reward_scale = RewardScale(spec.gamma) if config.normalize_rewards else None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer}

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
        if len(d) == 0:
            return {"decisions": 0.0, "dropped_stale": 0.0} | batch_stats(batch)
        scale_metrics = {}
        if self.reward_scale is not None:  # a decision's reward is linear in its rows' rewards
            self.reward_scale.observe([e.columns["reward"] for e in batch.episodes])
            d.reward = d.reward / self.reward_scale.std
            scale_metrics = {"reward_std": self.reward_scale.std}
        # GAE runs over every decision in time order before stale ones leave: a dropped decision must not
        # join its neighbours' chains (the advantages of the kept ones flow through it, as they happened).
        with torch.no_grad():
            values, next_values = self.policy.value(d.obs), self.policy.value(d.next_obs)
        adv, ret = gae(d.reward, values, next_values, d.discount, d.done, d.chain_end, cfg.gae_lambda)
        floor = max(self.history, default=0) - cfg.max_version_lag  # the newest published is the current
        kept = torch.tensor([v in self.history and v >= floor for v in d.version.tolist()], dtype=torch.bool)
        idx = kept.nonzero().squeeze(-1).to(self.device)
        d, values, adv, ret = d.select(idx), values[idx], adv[idx], ret[idx]
        metrics = {"decisions": float(len(d)), "dropped_stale": float((~kept).sum())} | batch_stats(batch)
        metrics |= scale_metrics
        if len(d) == 0:
            return metrics
        recomputed = self.recompute_log_probs(d)
        old_logp, behaviour, metrics["bypass_coverage"] = self._anchor(d, recomputed)
        weights = None
        if cfg.proximal == "current":  # clip around the weights now; stale rows weighted towards them
            with torch.no_grad():
                current = self.policy.log_prob(d.obs, d.actions, d.mask)
            weights, capped = tis_weights(current, old_logp, cfg.staleness_cap)
            metrics["staleness_capped_fraction"] = float(capped)
            metrics["staleness_weight_mean"] = float(weights.mean())
            old_logp = current
        if cfg.tis_cap is not None:
            backend, capped = tis_weights(recomputed, behaviour, cfg.tis_cap)
            metrics["tis_capped_fraction"] = float(capped)
            metrics["tis_weight_mean"] = float(backend.mean())
            weights = backend if weights is None else weights * backend
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
        # observation statistics move after the update, so the version published next carries them (and
        # the next update's old log-probs are recomputed with the statistics each version acted with)
        observe = getattr(self.policy, "observe", None)
        if observe is not None:
            observe(d.obs)
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
        grad_norm = clipped_step(loss, self.optimizer, self.policy.parameters(), cfg.max_grad_norm)
        metrics = {
            "policy_loss": pg_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": entropy.item(),
            "approx_kl": float(approx_kl(new_logp.detach(), old_logp)),
            "clip_fraction": float(clip_frac),
            "grad_norm": grad_norm,
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
        state = {"optimizer": self.optimizer.state_dict(), "history": dict(self.history)}
        if self.reward_scale is not None:
            state["reward_scale"] = self.reward_scale.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = OrderedDict(sorted(state.get("history", {}).items()))
        if self.reward_scale is not None and state.get("reward_scale") is not None:
            self.reward_scale.load_state_dict(state["reward_scale"])
