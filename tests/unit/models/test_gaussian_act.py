"""The Gaussian policy's ``act`` (a replica's forward pass) samples and scores exactly as its distribution
does: the same draw for the same seed, and the log-prob the learner recomputes from the executed chunk."""

from __future__ import annotations

import pytest
import torch

from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots.protocol import ArraySpec

OBS = {"state": ArraySpec((5,), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)


@pytest.mark.parametrize("squash", [True, False])
def test_act_draws_the_distributions_sample_and_scores_it_as_the_learner_does(squash):
    cfg = GaussianMLPConfig(hidden=(16,), value_hidden=(8,), normalize_obs=True, squash=squash, seed=1)
    policy = build_policy(cfg, OBS, ACT, 3)
    obs = {"state": torch.randn(64, 5) * 4 + 2}
    policy.observe(obs)
    with torch.no_grad():
        policy.log_std.fill_(0.3)  # wide enough that some samples saturate the squash
        torch.manual_seed(7)
        actions, log_prob = policy.act(obs)
        torch.manual_seed(7)
        u = policy.distribution(obs).sample()
    flat = policy.center + policy.scale * torch.tanh(u) if squash else u
    assert torch.equal(
        actions, flat.reshape(64, 3, 2)
    )  # bit for bit: the replica's draw is the distribution's
    torch.testing.assert_close(log_prob, policy.log_prob(obs, actions).detach(), rtol=0, atol=0)
    mode, _ = policy.act(obs, deterministic=True)
    mean = policy.distribution(obs).mean
    expected_mode = policy.center + policy.scale * torch.tanh(mean) if squash else mean
    torch.testing.assert_close(mode, expected_mode.reshape(64, 3, 2))
