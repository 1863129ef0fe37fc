"""A resumed task serves its newest readable learner checkpoint before its learner starts
(``fleetrl/workers/learning/served_checkpoint.py``): published on the platform's real weight board under the
checkpoint's version, a damaged newer file skipped; a task without checkpoints publishes nothing."""

from __future__ import annotations

import numpy as np
import ray
import torch

from fleetrl.workers.learning.served_checkpoint import serve_newest_checkpoint

TASK = "served-checkpoint"


def test_the_newest_readable_checkpoint_is_published_under_its_version(platform, tmp_path):
    policy = {"net.weight": torch.arange(6.0).reshape(2, 3), "net.bias": torch.tensor([0.5, -0.5])}
    good = tmp_path / "checkpoint_0000000070_1" / "learner.pt"
    good.parent.mkdir()
    torch.save({"policy": policy, "step": 70, "version": 7, "algorithms": {}}, good)
    damaged = tmp_path / "checkpoint_0000000080_2" / "learner.pt"
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a checkpoint")

    assert serve_newest_checkpoint(platform.weights, TASK, tmp_path / "nothing-here") is None
    ray.get(platform.weights.register.remote(TASK, [], 4))
    try:
        assert ray.get(serve_newest_checkpoint(platform.weights, TASK, tmp_path)) == 7
        version, refs, _ = ray.get(platform.weights.latest.remote(TASK))
        served = ray.get(refs[0])
        assert version == 7 and set(served) == set(policy)
        for key, tensor in policy.items():
            np.testing.assert_array_equal(served[key], tensor.numpy())
    finally:
        ray.get(platform.weights.unregister.remote(TASK))
