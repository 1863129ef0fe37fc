"""Pairwise progress critic (VLAC §3.1.1, for state observations or a camera frame): ``(o_i, o_j, task) -> (delta, done)``.

``delta`` in [-1, 1] says how far ``o_j`` advanced the task relative to ``o_i`` (positive: closer to
completion; the training label is the fraction of the remaining work done, see
``fleetrl.scoring.progress``); ``done`` is a logit that ``o_j`` completes the task. One critic serves
several tasks through a learned task embedding (the VLAC prompt's role), so it can also learn to answer
"no progress" when an episode is paired with a task it does not belong to.

The network is three parts, so an image encoder can replace the state encoder without touching the
heads: an observation encoder ``obs -> z`` (registered in ``ENCODERS`` by name, built from the config),
a pair head ``(z_i, z_j, e_task) -> delta`` and a done head ``(z_j, e_task) -> logit``. The done head
sees only ``o_j`` (the paper's done query is a single-frame question), so done can be asked of one
observation (``done_logit``) and is consistent whatever ``o_i`` is paired with it.

With ``antisymmetric=True`` (default) the pair head is ``tanh(g(i, j) - g(j, i))``: swapping the frames
flips the sign exactly and ``delta(o, o) = 0``, which is what the label construction asks for
(backward label = minus the forward label); the paper gets this only approximately from its
forward/backward sample pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fleetrl.models.encoders import CameraEncoder, EncoderConfig
from fleetrl.models.nets import config_checkpoint, from_config_checkpoint, layer_norm_mlp, seeded

Obs = torch.Tensor | Mapping[str, torch.Tensor]


class ProgressCriticConfig(BaseModel):
    """Architecture of the pairwise progress critic. ``obs_dim``/``tasks`` may be left to training."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    obs_dim: int | None = Field(
        None, gt=0, description="Length of the flat observation vector; None: inferred from training data."
    )
    tasks: tuple[str, ...] = Field(
        (),
        description="Task names the critic knows, in embedding order; empty: the sorted task names of the "
        "training episodes. Extra names (tasks without data) still serve as mismatched-task negatives.",
    )
    obs_key: str = Field("state", description="Observation entry the encoder reads when given a dict.")
    encoder: Literal["mlp", "cnn"] = Field(
        "mlp", description="Observation encoder kind ('mlp': flat state vectors; 'cnn': a camera frame "
        "[H, W, C] uint8 through models/encoders.py's encoder, settings in image_encoder); see ENCODERS.",
    )  # fmt: skip
    image_shape: tuple[int, ...] | None = Field(
        None, description="Shape of the camera frame ('cnn'); None: inferred from training data."
    )
    image_encoder: EncoderConfig = Field(
        default_factory=EncoderConfig, description="The camera encoder ('cnn'); its feature_dim is ignored."
    )
    encoder_hidden: tuple[int, ...] = Field((256, 256), description="Hidden widths of the state encoder MLP.")
    feature_dim: int = Field(128, gt=0, description="Width of the observation features z.")
    task_embed_dim: int = Field(32, gt=0, description="Width of the learned task embedding.")
    head_hidden: tuple[int, ...] = Field((256, 256), description="Hidden widths of the pair and done heads.")
    antisymmetric: bool = Field(
        True, description="delta = tanh(g(i,j) - g(j,i)): exact sign flip under swap, delta(o,o) = 0."
    )
    input_clip: float = Field(
        10.0,
        gt=0,
        description="Normalised observations are clipped to +-input_clip (robust off-distribution).",
    )
    seed: int = Field(0, description="Seed for the initial weights.")


class StateEncoder(nn.Module):
    """Flat state vector -> features, with a data-fitted input normaliser kept in the state dict."""

    def __init__(self, cfg: ProgressCriticConfig):
        super().__init__()
        assert cfg.obs_dim is not None
        self.obs_key = cfg.obs_key
        self.clip = cfg.input_clip
        self.register_buffer("obs_mean", torch.zeros(cfg.obs_dim))
        self.register_buffer("obs_std", torch.ones(cfg.obs_dim))
        self.net = layer_norm_mlp(cfg.obs_dim, cfg.encoder_hidden, cfg.feature_dim)

    def set_normalizer(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def forward(self, obs: Obs) -> torch.Tensor:
        x = obs[self.obs_key] if isinstance(obs, Mapping) else obs
        x = x.reshape(x.shape[0], -1).to(self.obs_mean.dtype)
        x = ((x - self.obs_mean) / self.obs_std).clamp(-self.clip, self.clip)
        return self.net(x)


class ImageEncoder(nn.Module):
    """A camera frame [B, H, W, C] (uint8 values) -> features, through ``models.encoders.CameraEncoder``
    (pixels are scaled there; the data-fitted normaliser of state inputs does not apply)."""

    def __init__(self, cfg: ProgressCriticConfig):
        super().__init__()
        if cfg.image_shape is None:
            raise ValueError("encoder 'cnn' needs image_shape (training infers it from data)")
        self.obs_key = cfg.obs_key
        encoder = cfg.image_encoder.model_copy(update={"feature_dim": cfg.feature_dim})
        self.net = CameraEncoder(tuple(cfg.image_shape), encoder)

    def set_normalizer(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Nothing to fit: frames are scaled to [-0.5, 0.5] by the encoder."""

    def forward(self, obs: Obs) -> torch.Tensor:
        x = obs[self.obs_key] if isinstance(obs, Mapping) else obs
        return self.net(x.reshape(x.shape[0], -1).float())


# Encoder kinds: each maps ``Obs`` [B, ...] to [B, feature_dim] and offers ``set_normalizer``.
ENCODERS: dict[str, Callable[[ProgressCriticConfig], nn.Module]] = {"mlp": StateEncoder, "cnn": ImageEncoder}


class ProgressCritic(nn.Module):
    def __init__(self, cfg: ProgressCriticConfig):
        super().__init__()
        if cfg.obs_dim is None or not cfg.tasks:
            raise ValueError("ProgressCriticConfig needs obs_dim and tasks (training infers them from data)")
        if len(set(cfg.tasks)) != len(cfg.tasks):
            raise ValueError(f"duplicate task names in {cfg.tasks}")
        self.cfg = cfg
        self.encoder = ENCODERS[cfg.encoder](cfg)
        self.task_embed = nn.Embedding(len(cfg.tasks), cfg.task_embed_dim)
        f, e = cfg.feature_dim, cfg.task_embed_dim
        self.pair_head = layer_norm_mlp(3 * f + e, cfg.head_hidden, 1)
        self.done_head = layer_norm_mlp(f + e, cfg.head_hidden, 1)
        self._task_ids = {name: i for i, name in enumerate(cfg.tasks)}

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.cfg.tasks

    def task_index(self, task: str | int) -> int:
        if isinstance(task, int):
            if not 0 <= task < len(self.cfg.tasks):
                raise KeyError(f"task id {task} out of range for {len(self.cfg.tasks)} tasks")
            return task
        try:
            return self._task_ids[task]
        except KeyError:
            raise KeyError(
                f"the progress critic does not know task {task!r}; it knows {self.cfg.tasks}"
            ) from None

    def set_normalizer(self, mean: Any, std: Any) -> None:
        self.encoder.set_normalizer(mean, std)

    def encode(self, obs: Obs) -> torch.Tensor:
        return self.encoder(obs)

    def _g(self, z_a: torch.Tensor, z_b: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.pair_head(torch.cat([z_a, z_b, z_b - z_a, e], dim=-1)).squeeze(-1)

    def delta_from_features(self, z_i: torch.Tensor, z_j: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        raw = self._g(z_i, z_j, e)
        if self.cfg.antisymmetric:
            raw = raw - self._g(z_j, z_i, e)
        return torch.tanh(raw)

    def done_from_features(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.done_head(torch.cat([z, e], dim=-1)).squeeze(-1)

    def forward(self, obs_i: Obs, obs_j: Obs, task_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Progress delta [B] in [-1, 1] from ``o_i`` to ``o_j`` and the done logit [B] of ``o_j``."""
        e = self.task_embed(task_id.long())
        z_i, z_j = self.encode(obs_i), self.encode(obs_j)
        return self.delta_from_features(z_i, z_j, e), self.done_from_features(z_j, e)

    def done_logit(self, obs: Obs, task_id: torch.Tensor) -> torch.Tensor:
        """Done logit [B] of single observations."""
        return self.done_from_features(self.encode(obs), self.task_embed(task_id.long()))

    def checkpoint(self) -> dict[str, Any]:
        """A self-describing snapshot (config + weights, tensors on CPU) for ``from_checkpoint``."""
        return config_checkpoint(self, self.cfg)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> ProgressCritic:
        return from_config_checkpoint(cls, ProgressCriticConfig, ckpt)


def build_progress_critic(cfg: ProgressCriticConfig) -> ProgressCritic:
    """Build a critic with deterministic initial weights (``cfg.seed``) without touching the global RNG."""
    with seeded(cfg.seed):
        return ProgressCritic(cfg)
