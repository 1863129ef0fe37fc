"""Observation encoders (models/encoders.py): the identity without cameras, a CNN per camera key beside the
state entries, DrQ's random shift only while training, a saved TorchScript backbone through the hook, and
every policy family, critic and actor-critic algorithm taking camera observations end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fleetrl.algorithms.base import PolicySpec, build_algorithm
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.models.critics import CategoricalValue, CategoricalValueConfig, ChunkQConfig, ChunkQEnsemble
from fleetrl.models.encoders import EncoderConfig, ObservationEncoder, random_shift
from fleetrl.models.flow import FlowChunkConfig, flow_matching_loss
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.nets import flatten_obs
from fleetrl.models.policies import build_policy
from fleetrl.models.residual import ResidualAdapterConfig
from fleetrl.robots.protocol import ArraySpec

torch.set_num_threads(1)
SMALL = EncoderConfig(channels=(8, 8), strides=(2, 1), feature_dim=16)
SPEC = {"state": ArraySpec((4,)), "cam": ArraySpec((16, 16, 3), "uint8")}
ACTION = ArraySpec((2,), "float32", -1.0, 1.0)


def camera_obs(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "state": torch.randn(b, 4, generator=g),
        "cam": torch.randint(0, 256, (b, 16, 16, 3), generator=g, dtype=torch.uint8),
    }


def test_without_cameras_the_encoder_is_the_identity_with_no_weights():
    enc = ObservationEncoder({"state": ArraySpec((7,)), "grip": ArraySpec((1,))}, SMALL)
    x = torch.randn(5, 8)
    assert enc.out_dim == 8 and not list(enc.parameters()) and torch.equal(enc(x), x)


def test_camera_keys_become_features_beside_the_state_and_train():
    enc = ObservationEncoder(SPEC, SMALL)
    assert enc.out_dim == 4 + 16 and set(enc.cameras) == {"cam"}
    obs = camera_obs(6)
    out = enc(flatten_obs(obs, list(SPEC)))
    assert out.shape == (6, 20)
    assert torch.equal(out[:, :4], obs["state"])  # state entries pass through, in spec order
    assert out[:, 4:].abs().max() <= 1.0  # DrQ's tanh-bounded features
    out.sum().backward()
    assert enc.cameras["cam"].trunk[0].weight.grad.abs().sum() > 0


def test_random_shift_moves_frames_while_training_only():
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    torch.manual_seed(0)
    shifted = random_shift(img, 2)
    assert shifted.shape == img.shape
    padded = nn.functional.pad(img, (2, 2, 2, 2), mode="replicate")
    for b in range(2):  # every output is a crop of the padded frame
        assert any(
            torch.equal(shifted[b], padded[b, :, dy : dy + 8, dx : dx + 8])
            for dy in range(5)
            for dx in range(5)
        )
    enc = ObservationEncoder(SPEC, SMALL.model_copy(update={"augment": "shift"}))
    flat = flatten_obs(camera_obs(4), list(SPEC))
    enc.eval()
    assert torch.equal(enc(flat), enc(flat))  # no augmentation in eval mode (replicas, evaluation)
    enc.train()
    torch.manual_seed(1)
    assert not torch.equal(enc(flat), enc.eval()(flat))


def test_a_saved_backbone_loads_through_the_hook_frozen_by_default(tmp_path):
    trunk = torch.jit.script(
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    )
    trunk.save(str(tmp_path / "backbone.pt"))
    (tmp_path / "backbone.json").write_text(json.dumps({"out_dim": 4, "mean": [0.5] * 3, "std": [0.25] * 3}))
    cfg = EncoderConfig(kind="backbone", backbone=str(tmp_path), feature_dim=8)
    enc = ObservationEncoder(SPEC, cfg)
    out = enc(flatten_obs(camera_obs(3), list(SPEC)))
    assert out.shape == (3, 4 + 8)
    out.sum().backward()
    cam = enc.cameras["cam"]
    assert all(not p.requires_grad for p in cam.trunk.parameters())
    assert cam.project[0].weight.grad is not None
    with pytest.raises(FileNotFoundError, match="backbone.json"):
        ObservationEncoder(SPEC, EncoderConfig(kind="backbone", backbone=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="needs backbone"):
        EncoderConfig(kind="backbone")


@pytest.mark.parametrize(
    "cfg",
    [
        GaussianMLPConfig(hidden=(16,), value_hidden=(16,), encoder=SMALL),
        FlowChunkConfig(hidden=(16,), flow_steps=2, encoder=SMALL),
        ResidualAdapterConfig(
            base=FlowChunkConfig(hidden=(16,), flow_steps=2, encoder=SMALL), hidden=(16,), encoder=SMALL
        ),
    ],
    ids=lambda c: c.family,
)
def test_every_policy_family_acts_on_camera_observations(cfg):
    policy = build_policy(cfg, SPEC, ACTION, 3)
    chunk, _ = policy.act(camera_obs(5))
    assert chunk.shape == (5, 3, 2) and torch.isfinite(chunk).all()
    assert any(name.startswith("encoder.cameras.cam") for name, _ in policy.named_parameters())


def test_critics_and_flow_loss_train_their_encoders():
    flat = flatten_obs(camera_obs(8), list(SPEC))
    q = ChunkQEnsemble(ChunkQConfig(hidden=(16,), encoder=SMALL), SPEC, ACTION, 3)
    values = q.forward_flat(flat, torch.zeros(8, 6))
    assert values.shape == (2, 8)
    v = CategoricalValue(CategoricalValueConfig(n_atoms=11, hidden=(16,), encoder=SMALL), SPEC)
    assert v.logits_flat(flat).shape == (8, 11)
    flow = build_policy(FlowChunkConfig(hidden=(16,), flow_steps=2, encoder=SMALL), SPEC, ACTION, 3)
    loss = flow_matching_loss(flow, flat, torch.zeros(8, 6))
    loss.backward()
    assert flow.encoder.cameras["cam"].trunk[0].weight.grad.abs().sum() > 0


def camera_batch(b: int, seed: int = 0) -> ChunkBatch:
    rng = np.random.default_rng(seed)
    obs = {k: v.numpy() for k, v in camera_obs(b, seed).items()}
    nxt = {k: v.numpy() for k, v in camera_obs(b, seed + 1).items()}
    return ChunkBatch(
        obs=obs, actions=rng.uniform(-1, 1, (b, 3, 2)).astype(np.float32),
        rewards=rng.normal(size=(b, 3)).astype(np.float32), chunk_reward=rng.normal(size=b).astype(np.float32),
        next_obs=nxt, done=rng.random(b) < 0.2, mask=np.ones((b, 3), bool), discount=np.full(b, 0.97, np.float32),
        intervention=np.zeros(b, bool), offline=np.ones(b, bool), robot_id=np.array(["r"] * b),
        episode_id=np.array(["e"] * b), step=np.zeros(b, np.int32), snapshot=1, gamma=0.99,
        returns=-rng.random(b).astype(np.float32),
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, config",
    [
        ("bc", {"batch_size": 8}),
        ("awr", {"batch_size": 8, "bc_steps": 1, "baseline": "data", "critic": {"hidden": [16], "encoder": SMALL.model_dump()}}),
        ("qam", {"batch_size": 8, "bc_steps": 1, "diagnostics_every": 1, "conservative_alpha": 1.0,
                 "critic": {"hidden": [16], "encoder": SMALL.model_dump()},
                 "divl": {"value": {"n_atoms": 11, "hidden": [16], "encoder": SMALL.model_dump()}}}),
    ],
)  # fmt: skip
def test_chunk_algorithms_update_on_camera_batches(name, config):
    torch.manual_seed(0)
    spec = PolicySpec(SPEC, ACTION, 3, 0.99)
    policy = build_policy(FlowChunkConfig(hidden=(16,), flow_steps=2, encoder=SMALL), SPEC, ACTION, 3)
    algo = build_algorithm(name, config, policy, spec, "flow_chunk")
    before = policy.encoder.cameras["cam"].trunk[0].weight.detach().clone()
    for step in range(3):  # QAM and AWR: past their one BC step, into their own updates
        metrics = algo.update(camera_batch(8, step))
        assert all(np.isfinite(v) for v in metrics.values() if isinstance(v, float)), metrics
    assert not torch.equal(
        before, policy.encoder.cameras["cam"].trunk[0].weight
    )  # the policy's encoder learned
