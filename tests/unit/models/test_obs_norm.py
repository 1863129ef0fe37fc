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


def test_the_normaliser_follows_every_change_of_its_statistics_under_either_mode():
    """``forward`` keeps its float32 mean and scale between calls: an ``update`` or a weight load (also one
    made under inference mode, as a replica loads) must show in the next call, and a call under inference
    mode must not leave tensors that a training step cannot backpropagate through."""
    norm = RunningObsNorm(3)
    x = torch.tensor([[1.0, -4.0, 9.0], [3.0, 0.0, 1.0]])

    def expected() -> torch.Tensor:
        return ((x - norm.mean.float()) / torch.sqrt(norm.var.float() + norm.eps)).clamp(-10, 10)

    with torch.inference_mode():
        torch.testing.assert_close(norm(x), expected())
    norm.update(x * 3)
    with torch.inference_mode():
        torch.testing.assert_close(norm(x), expected())
        norm.load_state_dict({k: v + 1 for k, v in norm.state_dict().items()})
    torch.testing.assert_close(norm(x), expected())
    grad_x = x.clone().requires_grad_()
    norm(grad_x).sum().backward()
    assert grad_x.grad is not None and grad_x.grad.abs().sum() > 0
