"""Pairwise progress critic: label construction, training, and rewards (VLAC §3.1.1), torch + numpy only.

Frames. An episode of T steps has T + 1 observations: ``observations[key][0..T-1]`` (before each
action) and ``final_observation[key]`` as frame T. Labels index these frames 0..T.

Progress label (successful episodes). For frames a < b the forward label is
``c(a, b) = (b - a) / (T - a)``: the fraction of the work *remaining at a* that was done by b (VLAC's
``Δt / (T - i)`` with i the earlier frame). It lies in (0, 1], equals 1 exactly when b is the final frame,
and is consistent with the paper's VOC recursion ``v_b = v_a + c(a, b)(1 - v_a)`` for progress linear in
time (v_t = t / T), so cumulating predicted one-step deltas recovers t / T. The backward label is its
negative, ``c(b, a) = -c(a, b)`` (normalised by the *earlier* frame's remaining time). We choose this
antisymmetric form over the paper's literal ``Δt / (T - i)`` with i the first frame of the pair, because
for a backward pair that literal form divides by the later frame's remaining time and leaves [-1, 1]
(e.g. -(T - 2) / 1), which a tanh head cannot fit; the antisymmetric label keeps the range, makes
``delta(o, o) = 0`` and matches the critic's ``antisymmetric`` option.

The paper's four data-construction strategies, as implemented by ``PairSampler``:

1. difference filtering: pairs closer than ``min_gap`` steps are never made (frames that close carry
   noise more than progress); and, as the paper does with pixel differences, a pair whose observations
   differ by less than ``same_state_sigma`` (mean over dimensions of |o_j - o_i| / the dimension's
   range in the data) gets label 0: same state, same progress. ``same_state_sigma=0`` disables that part.
   Episodes shorter than max(fine_gap, 2·min_gap) steps are skipped (no valid pairs for every frame).
2. forward/backward joint sampling: every group holds (i, i+k), (i+k, i), (i, i+Δt), (i+Δt, i) with
   k = ``fine_gap`` (the paper's one-step-at-0.2 s pair) and Δt uniform in [min_gap, T - i].
3. done joint sampling: every group also holds one pair whose second frame is completed and one whose
   second frame is not, from the same episode. Done targets follow the paper: a frame j of a successful
   episode is done if j > ``done_hi``·T, not done if j < ``done_lo``·T, and unlabelled in between.
4. mismatched task: each sample, with probability ``mismatch_prob``, gets another task's id from the
   critic's task list, label 0 and done 0. With a single known task there is nothing to mismatch.

Failed episodes (``outcome != 'success'``) have no known progress scale: the (b - a)/(T - a) label
assumes the last frame completes the task. We use them (``use_failed``) as "no net progress" data: every
pair gets delta 0 (weighted by ``failed_weight``) and every frame done 0. That is right for episodes
that never got anywhere (a stuck or random policy) and conservative for near misses: it teaches that
motion without completion earns no reward, which is what a reward for RL should say.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetrl.models.progress_critic import ProgressCritic, ProgressCriticConfig, build_progress_critic
from fleetrl.robots.episode import Episode
from fleetrl.scoring.training_log import TrainingLog

# Sample kinds, one per member of a sampling group.
FINE_FWD, FINE_BWD, FWD, BWD, DONE_POS, DONE_NEG = range(6)
KIND_NAMES = ("fine_fwd", "fine_bwd", "fwd", "bwd", "done_pos", "done_neg")


class PairLabelConfig(BaseModel):
    """How training pairs and their labels are built from episodes (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min_gap: int = Field(1, ge=1, description="Difference filter: pairs with |j - i| < min_gap are dropped.")
    fine_gap: int = Field(
        1, ge=1, description="Step distance of the short pair in each group (paper: ~0.2 s); >= min_gap."
    )
    same_state_sigma: float = Field(
        0.0, ge=0.0, description="Pairs whose mean |o_j - o_i| / range is below this get label 0; 0: off."
    )
    done_lo: float = Field(0.8, gt=0.0, lt=1.0, description="Frames j < done_lo*T are labelled not done.")
    done_hi: float = Field(0.95, gt=0.0, lt=1.0, description="Frames j > done_hi*T are labelled done.")
    mismatch_prob: float = Field(
        0.05, ge=0.0, le=1.0, description="Probability a sample gets another task's id (label 0, done 0)."
    )
    use_failed: bool = Field(True, description="Use failed episodes as zero-progress, never-done data.")
    failed_weight: float = Field(1.0, ge=0.0, description="Weight of failed-episode pairs in the delta loss.")

    @model_validator(mode="after")
    def _check(self) -> PairLabelConfig:
        if self.fine_gap < self.min_gap:
            raise ValueError(f"fine_gap ({self.fine_gap}) must be >= min_gap ({self.min_gap})")
        if self.done_lo > self.done_hi:
            raise ValueError(f"done_lo ({self.done_lo}) must be <= done_hi ({self.done_hi})")
        return self


@dataclass
class PairBatch:
    """Training samples; ``i``/``j`` index ``PairSampler.frames`` (global frame rows)."""

    i: np.ndarray  # int64 [N]
    j: np.ndarray  # int64 [N]
    task: np.ndarray  # int64 [N] task id the sample is scored for
    delta: np.ndarray  # float32 [N] progress label in [-1, 1]
    done: np.ndarray  # float32 [N] done label of frame j
    done_mask: np.ndarray  # float32 [N] 1 where the done label counts
    weight: np.ndarray  # float32 [N] weight in the delta loss
    kind: np.ndarray  # int8 [N] one of FINE_FWD .. DONE_NEG
    mismatch: np.ndarray  # bool [N]
    episode: np.ndarray  # int64 [N] index into PairSampler.episodes
    step_i: np.ndarray  # int64 [N] frame index of i within its episode
    step_j: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return int(self.i.shape[0])


def episode_frames(ep: Episode, key: str = "state") -> np.ndarray:
    """The T + 1 observations of an episode (before each action, then the final one), float32."""
    obs = np.asarray(ep.observations[key], dtype=np.float32)
    final = np.asarray(ep.final_observation[key], dtype=np.float32)[None]
    return np.concatenate([obs.reshape(len(obs), -1), final.reshape(1, -1)], axis=0)


class PairSampler:
    """Samples labelled pair groups from a fixed set of episodes (numpy, indices into one frame array)."""

    def __init__(
        self, episodes: Sequence[Episode], tasks: Sequence[str], cfg: PairLabelConfig, obs_key: str = "state"
    ):
        self.cfg = cfg
        self.tasks = tuple(tasks)
        task_ids = {t: k for k, t in enumerate(self.tasks)}
        unknown = sorted({ep.task for ep in episodes} - set(task_ids))
        if unknown:
            raise ValueError(f"episodes of tasks {unknown} not in the critic's task list {self.tasks}")
        # every frame needs a partner at least min_gap away, and the short pair must fit
        min_len = max(cfg.fine_gap, 2 * cfg.min_gap)
        keep = [ep for ep in episodes if len(ep) >= min_len and (ep.success or cfg.use_failed)]
        if not keep:
            raise ValueError(f"no usable episodes (need >= {min_len} steps; failed ones need use_failed)")
        self.episodes = keep
        chunks = [episode_frames(ep, obs_key) for ep in keep]
        self.frames = np.concatenate(chunks, axis=0)
        self.length = np.array([len(ep) for ep in keep], dtype=np.int64)  # T (steps); frames 0..T
        self.start = np.concatenate([[0], np.cumsum(self.length + 1)[:-1]]).astype(np.int64)
        self.success = np.array([ep.success for ep in keep], dtype=bool)
        self.task = np.array([task_ids[ep.task] for ep in keep], dtype=np.int64)
        self.range = np.maximum(self.frames.max(0) - self.frames.min(0), 1e-6).astype(np.float32)

    def _partner(self, j: np.ndarray, T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A frame at least ``min_gap`` away from j (either side), uniformly."""
        g = self.cfg.min_gap
        n_before = np.maximum(j - g + 1, 0)
        n_after = np.maximum(T - j - g + 1, 0)
        u = (rng.random(j.shape) * (n_before + n_after)).astype(np.int64)
        return np.where(u < n_before, u, j + g + (u - n_before))

    def sample(self, n_groups: int, rng: np.random.Generator) -> PairBatch:
        cfg = self.cfg
        e = rng.integers(0, len(self.episodes), n_groups)
        T = self.length[e]
        ok = self.success[e]
        i = rng.integers(0, T - cfg.fine_gap + 1)
        k = i + cfg.fine_gap
        j = i + rng.integers(cfg.min_gap, T - i + 1)
        done_from = np.floor(cfg.done_hi * T).astype(np.int64) + 1  # first frame with j > done_hi*T
        not_done_to = np.ceil(cfg.done_lo * T).astype(np.int64)  # frames j < done_lo*T
        jp = np.where(ok, rng.integers(done_from, T + 1), rng.integers(0, T + 1))
        jn = np.where(ok, rng.integers(0, not_done_to), rng.integers(0, T + 1))
        a = np.concatenate([i, k, i, j, self._partner(jp, T, rng), self._partner(jn, T, rng)])
        b = np.concatenate([k, i, j, i, jp, jn])
        kind = np.repeat(np.arange(6, dtype=np.int8), n_groups)
        ep = np.tile(e, 6)
        T6, ok6 = self.length[ep], self.success[ep]

        lo = np.minimum(a, b)
        mag = np.abs(b - a) / (T6 - lo)
        delta = np.where(b > a, mag, -mag)
        if cfg.same_state_sigma > 0:
            ga, gb = self.start[ep] + a, self.start[ep] + b
            diff = (np.abs(self.frames[gb] - self.frames[ga]) / self.range).mean(1)
            delta = np.where(diff < cfg.same_state_sigma, 0.0, delta)
        delta = np.where(ok6, delta, 0.0)
        weight = np.where(ok6, 1.0, cfg.failed_weight)
        is_done = b > cfg.done_hi * T6
        done = np.where(ok6, is_done, False)
        done_mask = np.where(ok6, is_done | (b < cfg.done_lo * T6), True)

        task = self.task[ep].copy()
        n_tasks = len(self.tasks)
        mismatch = (rng.random(len(a)) < cfg.mismatch_prob) if n_tasks > 1 else np.zeros(len(a), bool)
        if mismatch.any():
            task[mismatch] = (task[mismatch] + rng.integers(1, n_tasks, int(mismatch.sum()))) % n_tasks
            delta = np.where(mismatch, 0.0, delta)
            done = np.where(mismatch, False, done)
            done_mask = np.where(mismatch, True, done_mask)
            weight = np.where(mismatch, 1.0, weight)
        return PairBatch(
            i=self.start[ep] + a,
            j=self.start[ep] + b,
            task=task,
            delta=delta.astype(np.float32),
            done=done.astype(np.float32),
            done_mask=done_mask.astype(np.float32),
            weight=weight.astype(np.float32),
            kind=kind,
            mismatch=mismatch,
            episode=ep,
            step_i=a,
            step_j=b,
        )


class ProgressTrainConfig(BaseModel):
    """Training of the progress critic from episodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    critic: ProgressCriticConfig = Field(ProgressCriticConfig(), description="Critic architecture.")
    labels: PairLabelConfig = Field(PairLabelConfig(), description="Pair sampling and labels.")
    groups_per_batch: int = Field(64, gt=0, description="Sampling groups per step (6 samples per group).")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    done_weight: float = Field(0.5, ge=0, description="Weight of the done BCE next to the delta MSE.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    log_every: int = Field(50, gt=0, description="Steps between history entries / callback calls.")
    device: str = Field("cpu", description="Torch device to train on.")


def progress_losses(
    delta_pred: torch.Tensor,
    done_logit: torch.Tensor,
    delta: torch.Tensor,
    done: torch.Tensor,
    done_mask: torch.Tensor,
    weight: torch.Tensor,
    done_weight: float,
) -> dict[str, torch.Tensor]:
    """Weighted MSE on delta + masked BCE on done; tensors in, tensors out."""
    delta_mse = (weight * (delta_pred - delta).square()).sum() / weight.sum().clamp_min(1e-8)
    bce = F.binary_cross_entropy_with_logits(done_logit, done, reduction="none")
    n_done = done_mask.sum().clamp_min(1.0)
    done_bce = (bce * done_mask).sum() / n_done
    done_acc = (((done_logit > 0).float() == done).float() * done_mask).sum() / n_done
    return {
        "loss": delta_mse + done_weight * done_bce,
        "delta_mse": delta_mse,
        "done_bce": done_bce,
        "done_acc": done_acc,
    }


LogCallback = Callable[[int, dict[str, float]], None]


def critic_config_for(episodes: Sequence[Episode], cfg: ProgressCriticConfig) -> ProgressCriticConfig:
    """Fill ``obs_dim``, ``tasks`` and (``cnn``) ``image_shape`` from the episodes where the config leaves
    them open."""
    first = episodes[0].observations[cfg.obs_key]
    obs_dim = cfg.obs_dim or int(np.prod(first.shape[1:]))
    tasks = cfg.tasks or tuple(sorted({ep.task for ep in episodes}))
    image_shape = cfg.image_shape or (tuple(first.shape[1:]) if cfg.encoder == "cnn" else None)
    return cfg.model_copy(update={"obs_dim": obs_dim, "tasks": tasks, "image_shape": image_shape})


def train_progress_critic(
    episodes: Sequence[Episode],
    cfg: ProgressTrainConfig,
    steps: int,
    seed: int = 0,
    callback: LogCallback | None = None,
    model: ProgressCritic | None = None,
) -> tuple[ProgressCritic, list[dict[str, float]]]:
    """Train (or continue training ``model``) for ``steps`` steps; returns the model and its log history.

    A new model takes its architecture from ``cfg.critic`` (``obs_dim``/``tasks`` filled from the
    episodes), its initial weights from ``seed`` (not ``cfg.critic.seed``) and its input normaliser from
    the training frames; ``seed`` also seeds the pair sampling. A given ``model`` keeps its normaliser.

    ``callback(step, metrics)`` is called every ``cfg.log_every`` steps and after the last one: the
    progress display hook (a CLI prints it; a worker forwards it to the log server).
    """
    if not episodes:
        raise ValueError("no episodes to train the progress critic on")
    fit_normalizer = model is None  # a given model keeps its normaliser (continued training)
    if model is None:
        model = build_progress_critic(
            critic_config_for(episodes, cfg.critic).model_copy(update={"seed": seed})
        )
    sampler = PairSampler(episodes, model.tasks, cfg.labels, model.cfg.obs_key)
    device = torch.device(cfg.device)
    model.to(device)
    frames = torch.as_tensor(sampler.frames, device=device)
    if fit_normalizer:
        model.set_normalizer(frames.mean(0), frames.std(0))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(seed)
    training = TrainingLog(steps, cfg.log_every, callback, "progress critic")
    for step in range(1, steps + 1):
        b = sampler.sample(cfg.groups_per_batch, rng)
        t = {
            k: torch.as_tensor(getattr(b, k), device=device) for k in ("delta", "done", "done_mask", "weight")
        }
        idx_i, idx_j = torch.as_tensor(b.i, device=device), torch.as_tensor(b.j, device=device)
        delta_pred, done_logit = model(frames[idx_i], frames[idx_j], torch.as_tensor(b.task, device=device))
        losses = progress_losses(delta_pred, done_logit, **t, done_weight=cfg.done_weight)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        training.add(step, samples=len(b), **{k: v.detach() for k, v in losses.items()}, grad_norm=grad_norm)
    model.eval()
    return model, training.history


# --- inference: rewards and done detection --------------------------------------------------------


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_deltas(
    model: ProgressCritic, obs_i: np.ndarray, obs_j: np.ndarray, task: str | int, batch_size: int = 8192
) -> np.ndarray:
    """Progress delta from each ``obs_i[n]`` to ``obs_j[n]`` for one task (float32 [N])."""
    dev, tid = _device(model), model.task_index(task)
    out = []
    for s in range(0, len(obs_i), batch_size):
        oi = torch.as_tensor(np.ascontiguousarray(obs_i[s : s + batch_size], np.float32), device=dev)
        oj = torch.as_tensor(np.ascontiguousarray(obs_j[s : s + batch_size], np.float32), device=dev)
        e = model.task_embed(torch.full((len(oi),), tid, device=dev))
        out.append(model.delta_from_features(model.encode(oi), model.encode(oj), e).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.no_grad()
def predict_done(
    model: ProgressCritic, obs: np.ndarray, task: str | int, batch_size: int = 8192
) -> np.ndarray:
    """Done probability of each observation for one task (float32 [N])."""
    dev, tid = _device(model), model.task_index(task)
    out = []
    for s in range(0, len(obs), batch_size):
        o = torch.as_tensor(np.ascontiguousarray(obs[s : s + batch_size], np.float32), device=dev)
        out.append(torch.sigmoid(model.done_logit(o, torch.full((len(o),), tid, device=dev))).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def progress_rewards(model: ProgressCritic, frames: np.ndarray, task: str | int) -> np.ndarray:
    """Per-step reward r_t = delta(o_t, o_{t+1}) for frames [T + 1, D] -> [T] (VLAC's TD-style reward)."""
    return predict_deltas(model, frames[:-1], frames[1:], task)


def detect_done(done_prob: np.ndarray, threshold: float = 0.5, patience: int = 1) -> int | None:
    """First frame index at which ``done_prob`` has been >= threshold for ``patience`` frames, else None."""
    above = np.asarray(done_prob) >= threshold
    run = 0
    for t, a in enumerate(above):
        run = run + 1 if a else 0
        if run >= patience:
            return t
    return None


class ProgressRewarder:
    """Scores episodes with a trained critic: the object a critic server wraps."""

    def __init__(self, model: ProgressCritic, done_threshold: float = 0.5, done_patience: int = 1):
        self.model = model.eval()
        self.done_threshold = done_threshold
        self.done_patience = done_patience

    def score(self, frames: np.ndarray, task: str | int) -> dict[str, Any]:
        """``frames`` [T + 1, D] -> rewards [T], done probabilities [T + 1], first done frame or None."""
        done_prob = predict_done(self.model, frames, task)
        return {
            "reward": progress_rewards(self.model, frames, task),
            "done_prob": done_prob,
            "done_step": detect_done(done_prob, self.done_threshold, self.done_patience),
        }

    def score_episode(self, ep: Episode) -> dict[str, Any]:
        return self.score(episode_frames(ep, self.model.cfg.obs_key), ep.task)
