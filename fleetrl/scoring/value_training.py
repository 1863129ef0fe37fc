"""Training of the history-conditioned value estimator from stored episodes (Robo-ValueRL §3.1, App. C.1).

Every step of every training episode is one sample: its observation, its ``history_frames`` past
observations and its remaining-time value label (C.1 eqs. 9-10; failed and timed-out episodes get the
failure penalty ``C_fail``). Samples are drawn uniformly (the paper trains by epochs over the mixed
data); the loss is the cross-entropy to the Gaussian soft target (§3.1 eq. 2, C.1 eq. 11); the learning
rate follows the paper's cosine decay to a fixed fraction of its start (1e-4 -> 5e-6, i.e. 0.05).

``aborted`` episodes are left out by default: the gateway ends them at a lease expiry, so they are
neither a completed task nor a demonstrated failure, and eq. 9 has no label for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fleetrl.models.value_estimator import (
    HistoryValueEstimator,
    ValueEstimatorConfig,
    build_value_estimator,
    flatten_episode_obs,
    history_indices,
    label_scale,
    remaining_time_labels,
    soft_cross_entropy,
)
from fleetrl.robots.episode import Episode
from fleetrl.scoring.training_log import TrainingLog

ProgressCallback = Callable[[int, dict[str, float]], None]


class ValueTrainConfig(BaseModel):
    """Optimisation of the value estimator; the architecture and labels are in ``estimator``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    estimator: ValueEstimatorConfig = Field(ValueEstimatorConfig(), description="Model, bins and labels.")
    batch_size: int = Field(256, gt=0, description="Samples (steps) per gradient step.")
    lr: float = Field(1e-3, gt=0, description="Initial AdamW learning rate (paper: 1e-4 on a frozen VLM).")
    lr_final_ratio: float = Field(
        0.05, ge=0, le=1, description="Cosine decay ends at lr * this (C.1: 1e-4 -> 5e-6)."
    )
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    exclude_outcomes: tuple[str, ...] = Field(
        ("aborted",), description="Outcomes left out of training (aborted: no label under eq. 9)."
    )
    log_every: int = Field(50, gt=0, description="Steps between history entries / progress calls.")
    device: str = Field("cpu", description="Torch device to train on.")


def usable_episodes(episodes: Sequence[Episode], exclude: Sequence[str] = ("aborted",)) -> list[Episode]:
    """The episodes that get a label: non-empty, outcome not excluded."""
    return [ep for ep in episodes if len(ep) > 0 and ep.outcome not in exclude]


def estimator_config_for(episodes: Sequence[Episode], cfg: ValueEstimatorConfig) -> ValueEstimatorConfig:
    """Fill ``obs_keys``, ``obs_dim``, ``t_max`` and ``c_fail`` from the episodes where ``cfg`` leaves them."""
    if not episodes:
        raise ValueError("no episodes to fit the value estimator's config to")
    first = episodes[0].observations
    keys = cfg.obs_keys or tuple(first)
    missing = [k for k in keys if k not in first]
    if missing:
        raise ValueError(f"episodes lack observation entries {missing}; they have {sorted(first)}")
    obs_dim = cfg.obs_dim or sum(int(np.prod(first[k].shape[1:])) for k in keys)
    t_max, c_fail = label_scale(
        [len(ep) for ep in episodes], [ep.success for ep in episodes], cfg.t_max, cfg.c_fail
    )
    return cfg.model_copy(update={"obs_keys": keys, "obs_dim": obs_dim, "t_max": t_max, "c_fail": c_fail})


def build_samples(
    episodes: Sequence[Episode], cfg: ValueEstimatorConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All steps as rows: frames [N, D], history rows [N, K] (global), history valid [N, K], labels [N]."""
    assert cfg.t_max is not None and cfg.c_fail is not None
    frames, hist, valid, labels = [], [], [], []
    start = 0
    for ep in episodes:
        n = len(ep)
        frames.append(flatten_episode_obs(ep.observations, cfg.obs_keys))
        idx, ok = history_indices(n, cfg.history_frames, cfg.history_stride)
        hist.append(idx + start)
        valid.append(ok)
        labels.append(remaining_time_labels(n, ep.success, cfg.c_fail, cfg.t_max))
        start += n
    return (
        np.concatenate(frames),
        np.concatenate(hist).astype(np.int64),
        np.concatenate(valid),
        np.concatenate(labels),
    )


def cosine_lr(step: int, steps: int, lr: float, final_ratio: float) -> float:
    """Cosine decay from ``lr`` at step 1 to ``lr * final_ratio`` at the last step."""
    frac = (step - 1) / max(steps - 1, 1)
    return lr * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def train_value_estimator(
    episodes: Sequence[Episode],
    config: ValueTrainConfig | ValueEstimatorConfig,
    steps: int,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    model: HistoryValueEstimator | None = None,
) -> tuple[HistoryValueEstimator, list[dict[str, float]]]:
    """Train (or continue training ``model``) for ``steps`` steps; returns the model and its log history.

    A bare ``ValueEstimatorConfig`` trains with the default optimisation settings. A new model's open
    config fields come from the episodes (``estimator_config_for``), its weights from ``seed``, its input
    normaliser from the training frames; ``seed`` also seeds the sampling. A given ``model`` keeps its
    config (label scale included) and normaliser. ``progress(step, metrics)`` is called every
    ``log_every`` steps and after the last one (a CLI prints it).
    """
    cfg = config if isinstance(config, ValueTrainConfig) else ValueTrainConfig(estimator=config)
    episodes = usable_episodes(episodes, cfg.exclude_outcomes)
    if not episodes:
        raise ValueError(f"no episodes to train the value estimator on (excluded: {cfg.exclude_outcomes})")
    fit_normalizer = model is None
    if model is None:
        est = estimator_config_for(episodes, cfg.estimator).model_copy(update={"seed": seed})
        model = build_value_estimator(est)
    device = torch.device(cfg.device)
    model.to(device)
    frames_np, hist_np, valid_np, labels_np = build_samples(episodes, model.cfg)
    frames = torch.as_tensor(frames_np, device=device)
    hist, valid = torch.as_tensor(hist_np, device=device), torch.as_tensor(valid_np, device=device)
    labels = torch.as_tensor(labels_np, device=device)
    if fit_normalizer:
        model.set_normalizer(frames.mean(0), frames.std(0))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    training = TrainingLog(steps, cfg.log_every, progress, "value estimator")
    for step in range(1, steps + 1):
        lr = cosine_lr(step, steps, cfg.lr, cfg.lr_final_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        rows = torch.randint(0, len(frames), (cfg.batch_size,), generator=gen).to(device)
        logits = model(frames[rows], frames[hist[rows]], valid[rows])
        loss = soft_cross_entropy(logits, model.target(labels[rows]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            mae = (model.expected_value(logits) - labels[rows]).abs().mean()
        training.add(step, latest={"lr": lr}, loss=loss.detach(), value_mae=mae, grad_norm=grad_norm)
    model.eval()
    return model, training.history
