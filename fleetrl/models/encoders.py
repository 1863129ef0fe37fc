"""Observation encoders: camera frames to features, state entries as they are, for every network that reads
observations (the policy families, the chunked Q ensemble, DIVL's value, AWR's baseline).

Why one module between the flat observation and each network: the algorithms pass observations around as
one flat float vector per row (``flatten_obs``, spec order), and so they keep doing. The encoder splits that
vector back into its keys by the task's spec, runs each camera key ([H, W, C] uint8, see
``fleetrl.robots.protocol.images``) through a convolutional encoder and concatenates the features with the
state entries. A task without camera keys gets the identity: no parameters, the same networks and weights
as before.

* ``cnn`` (default): the encoder of DrQ (Kostrikov et al. 2020) and of pixel-based agents on OGBench: four
  3x3 convolutions of 32 channels (the first with stride 2), a linear projection to ``feature_dim``,
  LayerNorm and tanh; pixels scaled to [-0.5, 0.5]. With ``augment: shift`` each frame is padded by
  ``shift_pad`` pixels (edge replication) and randomly cropped back while training (DrQ's random shift);
  in eval mode (inference replicas, evaluation) frames are used as they are.
* ``backbone``: a directory with a TorchScript module ``backbone.pt`` (e.g. a torchvision or timm model
  scripted and saved by the user; nothing is downloaded) and ``backbone.json`` naming its ``out_dim`` and
  the ``mean``/``std`` its input expects; frames are scaled to [0, 1], normalised, and the output
  projected to ``feature_dim`` as above. ``train_backbone: false`` (default) keeps its weights frozen.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fleetrl.models.configs import EncoderConfig  # noqa: F401 - re-exported
from fleetrl.robots.protocol import ArraySpec
from fleetrl.robots.protocol.images import is_camera as is_camera_shape


def is_camera(spec: ArraySpec) -> bool:
    """A uint8 [H, W] or [H, W, C] (C 1 or 3) entry: what the encoder treats as a camera frame."""
    return is_camera_shape(spec.shape, spec.dtype)


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ's augmentation: each image of ``x`` [B, C, H, W] padded by ``pad`` (edge pixels repeated) and
    cropped back to H x W at a random offset (integer shifts, one per image)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


class CameraEncoder(nn.Module):
    """One camera's frames [B, H, W, C] (uint8 values as floats) -> features [B, feature_dim]."""

    def __init__(self, shape: tuple[int, ...], cfg: EncoderConfig):
        super().__init__()
        self.h, self.w = shape[0], shape[1]
        self.c = shape[2] if len(shape) == 3 else 1
        self.cfg = cfg
        if cfg.kind == "backbone":
            self.trunk, out = load_backbone(cfg)
        else:
            layers: list[nn.Module] = []
            c_in = self.c
            for c_out, stride in zip(cfg.channels, cfg.strides, strict=True):
                layers += [nn.Conv2d(c_in, c_out, 3, stride=stride), nn.ReLU()]
                c_in = c_out
            self.trunk = nn.Sequential(*layers, nn.Flatten())
            with torch.no_grad():
                out = int(self.trunk(torch.zeros(1, self.c, self.h, self.w)).shape[1])
        self.project = nn.Sequential(
            nn.Linear(out, cfg.feature_dim), nn.LayerNorm(cfg.feature_dim), nn.Tanh()
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.reshape(-1, self.h, self.w, self.c).permute(0, 3, 1, 2) / 255.0
        if self.training and self.cfg.augment == "shift":
            x = random_shift(x, self.cfg.shift_pad)
        if self.cfg.kind == "backbone":
            x = (x - self.mean) / self.std
            with torch.set_grad_enabled(self.cfg.train_backbone and torch.is_grad_enabled()):
                features = self.trunk(x)
        else:
            features = self.trunk(x - 0.5)
        return self.project(features.flatten(1))


def load_backbone(cfg: EncoderConfig) -> tuple[nn.Module, int]:
    """The saved backbone of ``cfg.backbone`` and its output width; FileNotFoundError / ValueError with the
    path when the directory does not hold one."""
    root = Path(cfg.backbone or "").expanduser()
    meta_path, model_path = root / "backbone.json", root / "backbone.pt"
    for p in (meta_path, model_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"encoder backbone: {p} not found (a TorchScript backbone.pt and backbone.json)"
            )
    meta = json.loads(meta_path.read_text())
    if not isinstance(meta.get("out_dim"), int):
        raise ValueError(f"encoder backbone: {meta_path} must give out_dim (an integer)")
    trunk = torch.jit.load(str(model_path), map_location="cpu")
    for p in trunk.parameters():  # a ScriptModule has no requires_grad_()
        p.requires_grad = cfg.train_backbone
    return trunk, int(meta["out_dim"])


class ObservationEncoder(nn.Module):
    """Flat observations [B, sum of the spec's sizes] (spec order) -> [B, out_dim]: every camera key through
    its own ``CameraEncoder``, the other keys as they are, in spec order. The identity (no parameters)
    when the spec has no camera key."""

    def __init__(self, obs_spec: dict[str, ArraySpec], cfg: EncoderConfig | None = None):
        super().__init__()
        cfg = cfg or EncoderConfig()
        self.in_dim = sum(s.size for s in obs_spec.values())
        self.parts: list[tuple[str, int, int]] = []  # (key, offset, size) in spec order
        cameras: dict[str, nn.Module] = {}
        offset = 0
        for key, spec in obs_spec.items():
            self.parts.append((key, offset, spec.size))
            offset += spec.size
            if is_camera(spec):
                cameras[key] = CameraEncoder(spec.shape, cfg)
        self.cameras = nn.ModuleDict(cameras)
        if cfg.kind == "backbone":
            meta = json.loads((Path(cfg.backbone or "").expanduser() / "backbone.json").read_text())
            for cam in self.cameras.values():
                cam.register_buffer("mean", torch.tensor(meta.get("mean", [0.0] * cam.c)).view(1, -1, 1, 1))
                cam.register_buffer("std", torch.tensor(meta.get("std", [1.0] * cam.c)).view(1, -1, 1, 1))
        self.out_dim = sum(cfg.feature_dim if key in cameras else size for key, _, size in self.parts)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        if not len(self.cameras):
            return flat
        out = []
        for key, offset, size in self.parts:
            part = flat[:, offset : offset + size]
            out.append(self.cameras[key](part) if key in self.cameras else part)
        return torch.cat(out, dim=-1)
