"""The torch backend's traced forward pass (``traced_act.py``): the same numbers as the eager ``act``, bit for
bit, for every batch size and every weight version it serves, and refused where a trace would not be the
function (a branch a trace freezes, a family that does not declare a straight-line ``act``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from fleetrl.models.configs import FlowChunkConfig, GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots.pending import PENDING_KEY
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.inference.backends.torch_backend import TorchBackend
from fleetrl.workers.inference.backends.traced_act import trace_act

OBS = {"state": ArraySpec((5,), "float32"), "joint": ArraySpec((2, 2), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)
CHUNK = 3


def observations(n: int, pending: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: (4 * rng.standard_normal((n, *s.shape)) + 1).astype(np.float32) for k, s in OBS.items()}
    if pending:
        out[PENDING_KEY] = rng.standard_normal((n, CHUNK, ACT.size + 1)).astype(np.float32)
    return out


def eager_and_traced(policy: nn.Module, obs: dict[str, np.ndarray], seed: int):
    traced = trace_act(policy, OBS, ACT, CHUNK)
    assert traced is not None
    tensors = {k: torch.from_numpy(v) for k, v in obs.items()}
    with torch.inference_mode():
        torch.manual_seed(seed)
        eager = policy.act(tensors)
        torch.manual_seed(seed)
        fast = traced(tensors)
    return eager, fast


@pytest.mark.parametrize(
    "cfg",
    [
        GaussianMLPConfig(hidden=(16, 16), normalize_obs=True, pending_actions=True, seed=1),
        GaussianMLPConfig(hidden=(8,), squash=False, pending_actions=False, seed=2),
        FlowChunkConfig(hidden=(16,), flow_steps=4, seed=3),
    ],
    ids=["gaussian-normalised-pending", "gaussian-unsquashed", "flow"],
)
def test_the_trace_samples_and_scores_as_the_eager_act_at_every_batch_size(cfg):
    policy = build_policy(cfg, OBS, ACT, CHUNK).eval()
    if getattr(cfg, "normalize_obs", False):  # statistics away from the initial ones
        policy.observe({k: torch.from_numpy(v) for k, v in observations(64, False, seed=9).items()})
    pending = bool(getattr(policy, "pending_dim", 0))
    for n in (1, 2, 5, 32):
        (a, lp), (fa, flp) = eager_and_traced(policy, observations(n, pending, seed=n), seed=n)
        assert torch.equal(a, fa) and a.shape == (n, CHUNK, ACT.size)
        assert torch.allclose(lp, flp, rtol=0, atol=0, equal_nan=True)  # flow: NaN, no log-prob


def test_the_backend_serves_every_version_traced_with_that_versions_weights_and_statistics():
    cfg = GaussianMLPConfig(hidden=(16,), normalize_obs=True, pending_actions=True, seed=4)
    traced, eager = (TorchBackend(cfg, OBS, ACT, CHUNK) for _ in range(2))
    state = traced.served_state()
    v1 = {k: v + 0.5 if k.endswith("mean") else v * 1.5 for k, v in state.items()}  # weights and norm
    for b in (traced, eager):
        b.load_weights(v1, 1)
    assert traced.traced[1] is not None
    eager.traced.clear()  # the reference: every version eager
    batch = observations(3, pending=True, seed=11)
    for seed in range(3):  # backends sample from the process's generator: the same state for both
        torch.manual_seed(seed)
        got = traced.infer(batch)
        torch.manual_seed(seed)
        want = eager.infer(batch)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    assert got[2].tolist() == [1, 1, 1]
    pinned = traced.infer(batch, pins=np.array([0, 1, 0]))  # a held version: its own trace
    assert pinned[2].tolist() == [0, 1, 0]
    assert traced.prepare(v1, 1) is None  # kept already: nothing built


class ShapeBranchingPolicy(nn.Module):
    """Declares a straight-line act but branches on the batch size: a trace would freeze one branch."""

    straight_line_act = True

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def act(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = obs["state"] * self.scale
        x = x * 2 if x.shape[0] > 1 else x * 3
        return x, x.sum(-1)


def test_a_trace_that_would_give_other_numbers_is_refused_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert trace_act(ShapeBranchingPolicy(), OBS, ACT, CHUNK) is None
    assert "differs from the eager one" in caplog.text


def test_a_family_that_does_not_declare_a_straight_line_act_runs_eagerly():
    class Plain(ShapeBranchingPolicy):
        straight_line_act = False

    assert trace_act(Plain(), OBS, ACT, CHUNK) is None
    backend = TorchBackend(GaussianMLPConfig(hidden=(8,)), OBS, ACT, CHUNK, precision="bf16")
    assert backend.traced == {0: None}  # only fp32 is traced: autocast numerics stay eager
