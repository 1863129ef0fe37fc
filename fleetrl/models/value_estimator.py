"""History-conditioned distributional value estimator (Robo-ValueRL §3.1, Appendix C.1), state observations.

The paper's estimator reads the current three-view image and the instruction through PaliGemma (the
prefix ``c_t``), summarises a visual history with SigLIP + a Perceiver into compact tokens ``H_t``, appends
a learnable value query ``q_v`` and runs a small Transformer value head over ``[c_t, H_t, q_v]`` to get a
categorical distribution over K value bins (eq. 1). This module keeps that shape for flat state vectors:

* current encoder: normalised observation -> one token ``c_t`` (an MLP stands in for the VLM prefix);
* history: the ``history_frames`` past observations ``o_{t - k·stride}``, k = K..1 (oldest first), each
  through its own MLP, plus a learned slot embedding; slots before the episode start repeat frame 0 and
  get a learned padding embedding (so the model knows the episode just began), then a one-block
  Perceiver (``n_latents`` learned latents cross-attending to the slots) gives ``H_t``;
* value head: Transformer encoder over ``[c_t, H_t, q_v]``; the output at ``q_v`` -> K logits.
  ``history_frames = 0`` is the paper's NO HISTORY ablation (tokens ``[c_t, q_v]``).

Labels and targets (Appendix C.1): the remaining time of step t of an episode of T steps (step t is the
observation *before* action t, t = 0..T-1, so r_t counts the actions still to execute; the final
observation would be r = 0) is ``r_t = T - t`` for a successful episode and ``T - t + C_fail`` otherwise
(eq. 9); the value label is ``v_t = clip(1 - r_t / T_max, 0, 1)`` (eq. 10). The bins have centres
``c_k = k / (K - 1)``; the soft target is the Gaussian of eq. 11 (``sigma = 1/(K-1)``), and the scalar
estimate is the expectation ``sum_k c_k p_k`` (§3.1).

The paper fixes ``T_max = 5000`` for real-robot episodes of thousands of steps; our simulated episodes
have 50-200 steps, for which that constant squeezes every label into [0.96, 1]. So ``t_max`` and
``c_fail`` default to values derived from the training episodes (see ``label_scale``) and are then
stored in the config, making a checkpoint's labels reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fleetrl.models.nets import config_checkpoint, from_config_checkpoint, layer_norm_mlp, seeded


class ValueEstimatorConfig(BaseModel):
    """Architecture, bins and label scale of the value estimator; open fields are filled from data."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    obs_keys: tuple[str, ...] = Field(
        (), description="Observation entries read, flattened and concatenated in this order; empty: all."
    )
    obs_dim: int | None = Field(
        None, gt=0, description="Length of the concatenated flat observation; None: from training data."
    )
    n_bins: int = Field(256, ge=2, le=4096, description="K value bins, centres k/(K-1) on [0, 1] (C.1: 256).")
    sigma: float | None = Field(
        None, gt=0, description="Std of the Gaussian target; None: 1/(K-1), one bin width (C.1 eq. 11)."
    )
    target: Literal["centres", "edges"] = Field(
        "centres",
        description="'centres': Gaussian density at the bin centres, normalised (C.1 eq. 11); 'edges': "
        "Gaussian mass integrated between each bin's edges (the HL-Gauss of Farebrother et al.).",
    )
    t_max: float | None = Field(
        None,
        gt=0,
        description="T_max of C.1 eq. 10 (paper: 5000); None: the largest r_0 in the training episodes.",
    )
    c_fail: float | None = Field(
        None,
        ge=0,
        description="C_fail of C.1 eq. 9 in steps; None: the longest successful training episode, so "
        "every failed step is labelled below every successful one.",
    )
    history_frames: int = Field(
        5, ge=0, le=64, description="Past frames summarised (§4.1 best: 5); 0: no history (ablation)."
    )
    history_stride: int = Field(2, ge=1, description="Steps between history frames (t - k*stride).")
    encoder_hidden: tuple[int, ...] = Field((128, 128), description="Hidden widths of the frame encoders.")
    d_model: int = Field(64, gt=0, description="Token width of the Perceiver and the value head.")
    n_latents: int = Field(2, ge=1, description="Perceiver latents: the compact history tokens H_t.")
    n_heads: int = Field(4, ge=1, description="Attention heads (must divide d_model).")
    head_layers: int = Field(2, ge=1, description="Transformer layers of the value head.")
    input_clip: float = Field(10.0, gt=0, description="Normalised observations are clipped to +-this.")
    seed: int = Field(0, description="Seed of the initial weights.")


# --- labels and targets (pure) -----------------------------------------------------------------------


def bin_centres(n_bins: int) -> torch.Tensor:
    """``c_k = k / (K - 1)``, k = 0..K-1 (C.1)."""
    return torch.linspace(0.0, 1.0, n_bins)


def bin_edges(n_bins: int) -> torch.Tensor:
    """K + 1 edges whose midpoints are the centres ``k/(K-1)``: the outer bins reach half a bin past [0, 1]."""
    half = 0.5 / (n_bins - 1)
    return torch.linspace(-half, 1.0 + half, n_bins + 1)


def hl_gauss_targets(
    values: torch.Tensor | np.ndarray | Sequence[float],
    bin_edges: torch.Tensor,
    sigma: float,
    *,
    integrate: bool = True,
) -> torch.Tensor:
    """Soft categorical targets [..., K] for scalar labels [...] (§3.1 eq. 2 targets, C.1 eq. 11).

    ``integrate=True``: the mass of N(v, sigma^2) between consecutive edges, renormalised by the mass
    inside [edges[0], edges[-1]] (HL-Gauss: a histogram of the Gaussian). ``integrate=False``: the
    paper's eq. 11, the Gaussian density at each bin centre, normalised over bins. Rows sum to 1.
    """
    v = torch.as_tensor(values, dtype=torch.float32, device=bin_edges.device).unsqueeze(-1)
    edges = bin_edges.to(torch.float32)
    if integrate:
        cdf = torch.special.ndtr((edges - v) / sigma)
        mass = cdf[..., 1:] - cdf[..., :-1]
        return mass / (cdf[..., -1:] - cdf[..., :1]).clamp_min(1e-12)
    centres = 0.5 * (edges[1:] + edges[:-1])
    return torch.softmax(-((v - centres) ** 2) / (2.0 * sigma**2), dim=-1)


def remaining_time_labels(length: int, success: bool, c_fail: float, t_max: float) -> np.ndarray:
    """Value labels [T] of an episode of ``length`` steps (C.1 eqs. 9-10).

    ``r_t = T - t`` (+ ``c_fail`` unless ``success``) for t = 0..T-1, ``v_t = clip(1 - r_t / t_max, 0, 1)``.
    """
    r = np.arange(length, 0, -1, dtype=np.float64) + (0.0 if success else float(c_fail))
    return np.clip(1.0 - r / float(t_max), 0.0, 1.0).astype(np.float32)


def label_scale(
    lengths: Sequence[int], successes: Sequence[bool], t_max: float | None, c_fail: float | None
) -> tuple[float, float]:
    """Resolve ``(t_max, c_fail)`` where the config leaves them open (see the config's field texts).

    ``c_fail``: the longest successful episode (the longest episode when none succeeded), so a failed
    step's remaining time ``T - t + c_fail > c_fail >= r`` of any successful step. ``t_max``: the largest
    ``r_0`` of the episodes, so the labels span [0, 1] instead of the paper's real-robot constant 5000.
    """
    if not lengths:
        raise ValueError("no episodes to derive the label scale from")
    ok = [n for n, s in zip(lengths, successes, strict=True) if s]
    if c_fail is None:
        c_fail = float(max(ok) if ok else max(lengths))
    if t_max is None:
        t_max = float(max(n + (0.0 if s else c_fail) for n, s in zip(lengths, successes, strict=True)))
    return float(t_max), float(c_fail)


def history_indices(length: int, frames: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Per step t of an episode: rows ``t - k*stride`` (k = frames..1, oldest first) [T, frames] and
    whether each lies inside the episode [T, frames]; rows before the start are clamped to frame 0."""
    raw = np.arange(length)[:, None] - stride * np.arange(frames, 0, -1)[None, :]
    return np.maximum(raw, 0), raw >= 0


def flatten_episode_obs(obs: Mapping[str, Any], keys: Sequence[str]) -> np.ndarray:
    """Observation dict of [T, ...] arrays -> float32 [T, D], entries concatenated in ``keys`` order."""
    parts = [np.asarray(obs[k]).reshape(len(obs[k]), -1).astype(np.float32, copy=False) for k in keys]
    out = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
    return out if out.flags.writeable else out.copy()  # torch refuses to wrap read-only memory


def distribution_quantiles(probs: np.ndarray, centres: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles [len(qs), ...] of categorical distributions [..., K] over ``centres``: the first centre
    where the CDF reaches q (for plots such as LWD Fig. 6)."""
    cdf = np.cumsum(probs, axis=-1)
    idx = [np.minimum((cdf < q).sum(-1), len(centres) - 1) for q in qs]
    return np.stack([np.asarray(centres)[i] for i in idx])


# --- model ---------------------------------------------------------------------------------------------


class PerceiverSummary(nn.Module):
    """Learned latents cross-attend to the history tokens: K frames -> ``n_latents`` compact tokens."""

    def __init__(self, d: int, n_latents: int, n_heads: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_latents, d) * 0.02)
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, K, d] -> [B, n_latents, d]."""
        q = self.latents.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        kv = self.norm_kv(tokens)
        x = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return x + self.ff(self.norm_ff(x))


class HistoryValueEstimator(nn.Module):
    """``(o_t, o_{t-K·s..t-s}) -> logits over K value bins`` (§3.1 eq. 1); see the module docstring."""

    def __init__(self, cfg: ValueEstimatorConfig):
        super().__init__()
        if cfg.obs_dim is None or not cfg.obs_keys:
            raise ValueError("ValueEstimatorConfig needs obs_dim and obs_keys (training infers them)")
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"n_heads ({cfg.n_heads}) must divide d_model ({cfg.d_model})")
        self.cfg = cfg
        d = cfg.d_model
        self.register_buffer("obs_mean", torch.zeros(cfg.obs_dim))
        self.register_buffer("obs_std", torch.ones(cfg.obs_dim))
        self.register_buffer("centres", bin_centres(cfg.n_bins))
        self.current_encoder = layer_norm_mlp(cfg.obs_dim, cfg.encoder_hidden, d)
        if cfg.history_frames:
            self.history_encoder = layer_norm_mlp(cfg.obs_dim, cfg.encoder_hidden, d)
            self.slot_embed = nn.Parameter(torch.randn(cfg.history_frames, d) * 0.02)
            self.pad_embed = nn.Parameter(torch.randn(d) * 0.02)
            self.perceiver = PerceiverSummary(d, cfg.n_latents, cfg.n_heads)
        self.value_query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.head = nn.TransformerEncoder(layer, cfg.head_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.n_bins))

    @property
    def sigma(self) -> float:
        return self.cfg.sigma if self.cfg.sigma is not None else 1.0 / (self.cfg.n_bins - 1)

    def set_normalizer(self, mean: Any, std: Any) -> None:
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.to(torch.float32) - self.obs_mean) / self.obs_std).clamp(
            -self.cfg.input_clip, self.cfg.input_clip
        )

    def forward(
        self, obs: torch.Tensor, history: torch.Tensor | None = None, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """obs [B, D], history [B, K, D] (oldest first), valid [B, K] bool -> logits [B, n_bins]."""
        tokens = [self.current_encoder(self._norm(obs)).unsqueeze(1)]
        if self.cfg.history_frames:
            if history is None or valid is None:
                raise ValueError("this estimator conditions on history: pass history and valid")
            h = self.history_encoder(self._norm(history)) + self.slot_embed
            h = h + (~valid.bool()).unsqueeze(-1).to(h.dtype) * self.pad_embed
            tokens.append(self.perceiver(h))
        tokens.append(self.value_query.expand(obs.shape[0], -1, -1))
        x = self.head(torch.cat(tokens, dim=1))
        return self.out(x[:, -1])

    def expected_value(self, logits: torch.Tensor) -> torch.Tensor:
        """``v_hat = sum_k c_k p_k`` (§3.1)."""
        return (logits.softmax(-1) * self.centres).sum(-1)

    def target(self, values: torch.Tensor) -> torch.Tensor:
        """Soft targets of scalar labels, as the config's ``target`` says (C.1 eq. 11 by default)."""
        edges = bin_edges(self.cfg.n_bins).to(self.centres.device)
        return hl_gauss_targets(values, edges, self.sigma, integrate=self.cfg.target == "edges")

    def flatten(self, episode_obs: Mapping[str, Any]) -> np.ndarray:
        return flatten_episode_obs(episode_obs, self.cfg.obs_keys)

    @torch.no_grad()
    def predict_probs(self, episode_obs: Mapping[str, Any], batch_size: int = 4096) -> np.ndarray:
        """Bin probabilities [T, n_bins] of every step of one episode (observations [T, ...])."""
        frames = torch.as_tensor(self.flatten(episode_obs), device=self.centres.device)
        idx, valid = history_indices(len(frames), self.cfg.history_frames, self.cfg.history_stride)
        idx_t, valid_t = (
            torch.as_tensor(idx, device=frames.device),
            torch.as_tensor(valid, device=frames.device),
        )
        out = []
        for s in range(0, len(frames), batch_size):
            sl = slice(s, s + batch_size)
            logits = self(frames[sl], frames[idx_t[sl]], valid_t[sl])
            out.append(logits.softmax(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.cfg.n_bins), np.float32)

    def predict(self, episode_obs: Mapping[str, Any]) -> np.ndarray:
        """Scalar value estimates [T] along one episode: the expectation over the bins (§3.1)."""
        probs = self.predict_probs(episode_obs)
        return (probs @ self.centres.cpu().numpy()).astype(np.float32)

    def checkpoint(self) -> dict[str, Any]:
        """Config (with the resolved label scale) + weights on CPU, for ``from_checkpoint``."""
        return {"kind": "history_value_estimator", **config_checkpoint(self, self.cfg)}

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> HistoryValueEstimator:
        return from_config_checkpoint(cls, ValueEstimatorConfig, ckpt).eval()


def build_value_estimator(cfg: ValueEstimatorConfig) -> HistoryValueEstimator:
    """Build with deterministic initial weights (``cfg.seed``) without touching the global RNG."""
    with seeded(cfg.seed):
        return HistoryValueEstimator(cfg)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_k q_k log p_k`` (§3.1 eq. 2)."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
