"""The policy configs (pydantic, no torch): what a task's ``policy`` entry may say, for every family and
the camera encoder. Kept apart from the networks so that the processes that only read task configs (the
gateway, the data server, the REST app, the task manager) never import torch; the network modules
re-export their config from here.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetrl.robots.protocol import ArraySpec

EXPORT_CHECKPOINT = (
    "An exported policy folder (fleetrl policy export) to start from; its config, specs and chunk length "
    "must match this task's."
)


class EncoderConfig(BaseModel):
    """How camera keys become features; state keys pass through unchanged."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["cnn", "backbone"] = Field(
        "cnn", description="'cnn' trained from scratch, or a saved backbone."
    )
    channels: tuple[int, ...] = Field((32, 32, 32, 32), description="Channels of each 3x3 convolution (cnn).")
    strides: tuple[int, ...] = Field((2, 1, 1, 1), description="Stride of each convolution (cnn).")
    feature_dim: int = Field(50, ge=1, description="Features per camera after the projection (DrQ: 50).")
    augment: Literal["none", "shift"] = Field(
        "none", description="'shift': DrQ's random shift of each training frame by up to shift_pad pixels."
    )
    shift_pad: int = Field(4, ge=1, le=32, description="Pixels a frame may shift by (augment: shift).")
    backbone: str | None = Field(
        None, description="Directory with backbone.pt (TorchScript) and backbone.json {out_dim, mean, std}."
    )
    train_backbone: bool = Field(False, description="Fine-tune the backbone's weights (default: frozen).")

    @model_validator(mode="after")
    def _consistent(self) -> EncoderConfig:
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ValueError("channels and strides need one entry per convolution (at least one)")
        if self.kind == "backbone" and not self.backbone:
            raise ValueError("kind 'backbone' needs backbone: the directory of a saved backbone")
        return self


class GaussianMLPConfig(BaseModel):
    """A diagonal-Gaussian MLP that emits a whole action chunk at once, with a state-value head."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    family: Literal["gaussian_mlp"] = Field("gaussian_mlp", description="Policy family name.")
    checkpoint: str | None = Field(None, description=EXPORT_CHECKPOINT)
    hidden: tuple[int, ...] = Field((64, 64), description="Hidden layer widths of the mean network.")
    value_hidden: tuple[int, ...] = Field((64, 64), description="Hidden layer widths of the value head.")
    init_log_std: float = Field(-0.5, description="Initial log standard deviation of every action dimension.")
    squash: bool = Field(
        True,
        description="tanh-squash samples into the action bounds, so the executed action is the sampled "
        "one and its log-prob can be recomputed exactly (needs finite bounds).",
    )
    normalize_obs: bool = Field(
        False,
        description="Normalise observations by their running mean and variance (clipped to +-10), as CleanRL "
        "does; the statistics are part of the weights and PPO updates them after each update.",
    )
    pending_actions: bool = Field(
        True,
        description="Also read the actions the robot will still execute before the chunk starts (asked "
        "for early, a chunk starts a round trip after its observation); without them the policy must guess "
        "where the robot will be when its chunk begins. A robot that asks only once its chunk has run out "
        "(lockstep, the plain loop) sends none: the entry is zeros.",
    )
    encoder: EncoderConfig = Field(
        default_factory=EncoderConfig,
        description="How camera observations become features (models/encoders.py).",
    )
    seed: int = Field(0, description="Seed for the initial weights; replicas of a pool share it.")


class FlowChunkConfig(BaseModel):
    """A flow-matching policy over whole action chunks (for AWR, QAM and BC)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    family: Literal["flow_chunk"] = Field("flow_chunk", description="Policy family name.")
    checkpoint: str | None = Field(None, description=EXPORT_CHECKPOINT)
    hidden: tuple[int, ...] = Field((256, 256, 256), description="Hidden widths of the velocity MLP.")
    flow_steps: int = Field(10, ge=1, le=256, description="Euler steps from noise to an action chunk.")
    time_features: int = Field(
        4, ge=1, le=16, description="Sine/cosine frequencies embedding the flow time w."
    )
    encoder: EncoderConfig = Field(
        default_factory=EncoderConfig,
        description="How camera observations become features (models/encoders.py).",
    )
    seed: int = Field(0, description="Seed for the initial weights; replicas of a pool share it.")


SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # <unk> is required by the WordLevel model


STEP_SEP = ";"


_NUMBER = re.compile(r"0|-?[1-9][0-9]*")


def _check_words(words: list[str]) -> None:
    """Template words must be single whitespace-free tokens, distinct, and not numbers or specials."""
    for w in words:
        if not w or any(c.isspace() for c in w) or w in SPECIALS or w == STEP_SEP or _NUMBER.fullmatch(w):
            raise ValueError(f"template word {w!r} must be non-empty, whitespace-free, not a number/special")
    if len(set(words)) != len(words):
        raise ValueError(f"template words must be distinct, got {words}")


class TokenLMConfig(BaseModel):
    """A small Llama-style LM that emits action chunks as constrained template text, with a value head."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    family: Literal["token_lm"] = Field("token_lm", description="Policy family name.")
    hidden_size: int = Field(64, ge=2, description="Width of the LM.")
    layers: int = Field(2, ge=1, description="Transformer layers.")
    heads: int = Field(4, ge=1, description="Attention heads; must split hidden_size into even head dims.")
    intermediate_size: int = Field(128, ge=1, description="Width of the MLP inside each layer.")
    number_range: int = Field(
        50,
        ge=1,
        le=100_000,
        description="Number tokens are the integers -R..R; n maps to center + scale*n/R.",
    )
    dim_names: tuple[str, ...] | None = Field(
        None, description="Template name of each action dimension (written 'name:'); default a0, a1, ..."
    )
    unit: str = Field("", description="Optional unit word forced after each number, e.g. 'mm'.")
    obs_tokens: int = Field(1, ge=1, le=64, description="Embedding vectors each observation key becomes.")
    temperature: float = Field(1.0, gt=0, description="Temperature of the constrained number distribution.")
    checkpoint: str | None = Field(None, description="Directory written by save_pretrained to load from.")
    seed: int = Field(0, description="Seed for the initial weights; replicas of a pool share it.")

    @model_validator(mode="after")
    def _validate(self) -> TokenLMConfig:
        if self.hidden_size % self.heads or (self.hidden_size // self.heads) % 2:
            raise ValueError(
                f"heads={self.heads} must split hidden_size={self.hidden_size} into even head dims"
            )
        _check_words([f"{n}:" for n in self.dim_names or ()] + ([self.unit] if self.unit else []))
        return self


BasePolicyConfig = Annotated[
    GaussianMLPConfig | FlowChunkConfig | TokenLMConfig, Field(discriminator="family")
]  # the families a residual adapter can sit on: every one but itself


class ResidualAdapterConfig(BaseModel):
    """A frozen base policy of another family plus a trainable bounded, gated residual (Robo-ValueRL §3.3)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    family: Literal["residual"] = Field("residual", description="Policy family name.")
    checkpoint: str | None = Field(None, description=EXPORT_CHECKPOINT)
    base: BasePolicyConfig = Field(
        description="The frozen base policy (family gaussian_mlp, flow_chunk, ...)."
    )
    base_checkpoint: str | None = Field(
        None,
        description="File with the base policy's weights: a torch.save'd state dict, or a learner "
        "checkpoint (learner.pt) whose 'policy' entry is used. None: the base's seeded initial weights.",
    )
    hidden: tuple[int, ...] = Field((256, 256), description="Hidden widths of the residual/gate MLP h_phi.")
    max_residual: float = Field(
        0.25,
        gt=0.0,
        description="r_max as a fraction of the action half-range (high - low) / 2; absolute units when "
        "the action has no finite bounds. |x_adapt - x_base| never exceeds it.",
    )
    gate_init: float = Field(
        0.0, description="Initial gate logit (sigmoid(0) = 0.5: the paper's zero-initialised adapter)."
    )
    encoder: EncoderConfig = Field(
        default_factory=EncoderConfig, description="How camera observations become the adapter's features."
    )
    seed: int = Field(0, description="Seed for the adapter's initial weights; replicas of a pool share it.")


PolicyConfig = Annotated[
    GaussianMLPConfig | FlowChunkConfig | TokenLMConfig | ResidualAdapterConfig, Field(discriminator="family")
]


def action_spec_problem(cfg: BaseModel, action_spec: ArraySpec) -> str | None:
    """Why a policy of config ``cfg`` cannot act in ``action_spec`` (None if it can).

    Checked when a task is configured, so a task whose policy cannot be built is refused with this reason
    instead of failing later inside its inference replicas."""
    if cfg.family == "residual":
        return action_spec_problem(cfg.base, action_spec)
    needs_bounds = {
        "gaussian_mlp": "a squashed Gaussian maps into them (or set policy.squash: false)",
        "token_lm": "its number tokens map onto them",
    }
    if cfg.family == "gaussian_mlp" and not cfg.squash:
        return None
    if cfg.family in needs_bounds:
        low, high = action_spec.low, action_spec.high
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return (
                f"policy family {cfg.family!r} needs finite action bounds (action.low and action.high): "
                f"{needs_bounds[cfg.family]}; got low={low}, high={high}"
            )
    return None
