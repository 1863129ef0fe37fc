"""A policy exported from what a live replica serves, loaded back with torch alone (``load_policy``, the
README's snippet), acts exactly as the replica does for the same observations in the policy's mode: for a
Gaussian (``reach``, PPO) and a flow-chunk policy (``reach-flow``, whose learner publishes all session)."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from fleetrl.models.export import export_policy, load_policy
from fleetrl.models.policies import build_policy


@pytest.mark.parametrize("task_name", ["reach", "reach-flow"])
def test_an_export_acts_as_the_replica_it_came_from(platform, tmp_path, task_name):
    task = next(t for t in platform.cfg.tasks if t.name == task_name)
    replica = next(iter(ray.get(platform.weights.pools.remote())[task_name]))
    obs = {"state": np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32)}
    for _ in range(5):  # reach-flow's learner may publish between the two calls: then read again
        version = ray.get(replica.served_version.remote())
        state = ray.get(replica.served_state.remote())
        served = ray.get(replica.infer.remote(obs, None, np.ones(16, dtype=bool)))
        if set(served["versions"]) == {version} == {ray.get(replica.served_version.remote())}:
            break
    else:
        pytest.fail("the replica's version kept changing")
    policy = build_policy(task.policy, task.observation_spec, task.action_spec, task.chunk_len)
    policy.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state.items()})
    out = export_policy(policy, task.policy, task.observation_spec, task.action_spec, task.chunk_len,
                        tmp_path / "export", {"task": task_name, "version": version})  # fmt: skip

    standalone = load_policy(out)  # torch alone, from the folder
    with torch.no_grad():
        actions, _ = standalone.act({"state": torch.as_tensor(obs["state"])}, deterministic=True)
    assert actions.shape == served["actions"].shape
    np.testing.assert_allclose(actions.numpy(), served["actions"], rtol=1e-5, atol=1e-5)
    assert np.abs(served["actions"]).max() > 1e-3  # not trivially equal (an untrained net still acts)
