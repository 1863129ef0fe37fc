"""The running observation normaliser of the Gaussian policy: its statistics, where they apply, and that they
travel with the weights."""

from __future__ import annotations

import numpy as np
import torch

from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.nets import RunningObsNorm
from fleetrl.models.policies import build_policy
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.weights import to_numpy_state, to_torch_state

OBS = {"state": ArraySpec((3,), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)


def test_batched_updates_give_the_statistics_of_all_rows_seen():
    rng = np.random.default_rng(0)
    rows = rng.normal([5.0, -2.0, 40.0], [1.0, 0.1, 20.0], size=(1000, 3))
    norm = RunningObsNorm(3)
    for part in np.array_split(rows, 7):  # uneven batches
        norm.update(torch.as_tensor(part, dtype=torch.float32))
    np.testing.assert_allclose(norm.mean.numpy(), rows.mean(0), rtol=1e-4)
    np.testing.assert_allclose(norm.var.numpy(), rows.var(0), rtol=1e-3)
    out = norm(torch.as_tensor(rows, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(out.std(0), 1.0, atol=1e-3)
    assert norm(torch.tensor([[5.0, 3.0, 40.0]]))[0, 1].item() == 10.0  # 50 sigma out: clipped at 10


def test_the_policy_reads_normalised_observations_and_its_statistics_travel_with_its_weights():
    cfg = GaussianMLPConfig(hidden=(8,), value_hidden=(8,), normalize_obs=True, seed=3)
    policy = build_policy(cfg, OBS, ACT, 2)
    big = {"state": torch.tensor([[30.0, -30.0, 60.0], [50.0, -10.0, 20.0]])}
    before = policy.distribution(big).mean.detach().clone()
    policy.observe(big)
    after = policy.distribution(big).mean.detach()
    assert not torch.allclose(before, after)  # the same raw input now reads as a normalised one
    replica = build_policy(cfg, OBS, ACT, 2)  # what a replica builds, then loads the published state
    replica.load_state_dict(to_torch_state(to_numpy_state(policy.state_dict())))
    torch.testing.assert_close(replica.distribution(big).mean, after)
    torch.testing.assert_close(replica.value(big), policy.value(big))
    plain = build_policy(cfg.model_copy(update={"normalize_obs": False}), OBS, ACT, 2)
    plain.observe(big)  # without the option: nothing to update, raw inputs
    assert "obs_norm.mean" not in plain.state_dict()
