"""A resumed task serves its newest readable learner checkpoint before its learner starts
(``fleetrl/workers/learning/served_checkpoint.py``): published on the platform's real weight board under the
checkpoint's version, a damaged newer file skipped; a task without checkpoints publishes nothing, and a
checkpoint whose policy no longer fits the task's policy config is not served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray
import torch

from fleetrl.models.policies import build_policy
from fleetrl.workers.learning.served_checkpoint import serve_newest_checkpoint
from fleetrl.workers.task import TaskConfig

TASK = "served-checkpoint"


def served_task(hidden: list[int]) -> TaskConfig:
    return TaskConfig(
        name=TASK,
        observation={"state": {"shape": [3]}},
        action={"shape": [2], "low": -1, "high": 1},
        chunk_len=2,
        policy={"family": "gaussian_mlp", "hidden": hidden, "value_hidden": [4]},
    )


def save_checkpoint(root: Path, step: int, version: int, policy: dict) -> None:
    path = root / f"checkpoint_{step:010d}_1" / "learner.pt"
    path.parent.mkdir(parents=True)
    torch.save({"policy": policy, "step": step, "version": version, "algorithms": {}}, path)


def test_the_newest_readable_checkpoint_is_published_under_its_version(platform, tmp_path):
    task = served_task([8])
    policy = build_policy(task.policy, task.observation_spec, task.action_spec, task.chunk_len).state_dict()
    save_checkpoint(tmp_path, 70, 7, policy)
    damaged = tmp_path / "checkpoint_0000000080_2" / "learner.pt"
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a checkpoint")

    assert serve_newest_checkpoint(platform.weights, task, tmp_path / "nothing-here") is None
    ray.get(platform.weights.register.remote(TASK, [], 4))
    try:
        assert ray.get(serve_newest_checkpoint(platform.weights, task, tmp_path)) == 7
        version, refs, _ = ray.get(platform.weights.latest.remote(TASK))
        served = ray.get(refs[0])
        assert version == 7 and set(served) == set(policy)
        for key, tensor in policy.items():
            np.testing.assert_array_equal(served[key], tensor.numpy())
    finally:
        ray.get(platform.weights.unregister.remote(TASK))


def test_a_checkpoint_of_another_policy_shape_is_not_served(platform, tmp_path):
    """The task's policy config changed since the checkpoint was saved (hidden 8 -> 16): replicas could not
    load it, so nothing is published and the replicas keep their initial weights."""
    saved = served_task([8])
    save_checkpoint(
        tmp_path, 50, 5, build_policy(saved.policy, saved.observation_spec, saved.action_spec, 2).state_dict()
    )
    ray.get(platform.weights.register.remote(TASK, [], 4))
    try:
        assert ray.get(serve_newest_checkpoint(platform.weights, served_task([16]), tmp_path)) is None
        assert ray.get(platform.weights.latest.remote(TASK)) is None
    finally:
        ray.get(platform.weights.unregister.remote(TASK))
