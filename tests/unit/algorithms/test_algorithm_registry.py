"""The algorithm registry (built-ins and the fleetrl.algorithms entry-point group), config validation,
and the task-level checks that keep an algorithm off a policy family it cannot train."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from fleetrl.algorithms.base import (
    Algorithm,
    algorithm_class,
    build_algorithm,
    incompatibility,
    parse_config,
    registry,
)
from fleetrl.models.flow import FlowChunkConfig
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.platform.config import ConfigError
from fleetrl.platform.config import parse_config as parse_platform
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.inference.backends.torch_backend import TorchBackend

OBS = {"state": ArraySpec((3,), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)


def test_builtins_are_registered_with_their_families():
    assert {"ppo", "awr", "qam", "bc"} <= set(registry())
    for name in ("ppo", "awr", "qam", "bc"):
        assert issubclass(algorithm_class(name), Algorithm)
    assert incompatibility("ppo", "gaussian_mlp") is None
    assert incompatibility("qam", "flow_chunk") is None
    assert "gaussian_mlp" in incompatibility("qam", "gaussian_mlp")
    assert "flow_chunk" in incompatibility("ppo", "flow_chunk")
    with pytest.raises(KeyError, match="registered: awr, bc"):
        algorithm_class("nope")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="lr"):
        parse_config("bc", {"lr": -1})
    with pytest.raises(ValueError, match="bogus"):
        parse_config("ppo", {"bogus": 1})
    assert parse_config("ppo", None).clip == 0.2


def test_build_refuses_an_incompatible_policy():
    policy = build_policy(GaussianMLPConfig(), OBS, ACT, 2)
    from fleetrl.algorithms.base import PolicySpec

    with pytest.raises(ValueError, match="flow_chunk"):
        build_algorithm("awr", {}, policy, PolicySpec(OBS, ACT, 2), "gaussian_mlp")


def test_third_party_algorithm_from_an_entry_point(tmp_path, monkeypatch):
    """A package that declares ``[project.entry-points."fleetrl.algorithms"]`` is found by name."""
    (tmp_path / "my_algo.py").write_text(
        textwrap.dedent(
            """
            from fleetrl.algorithms.base import Algorithm

            class Noop(Algorithm):
                name = "noop"
                data = "chunks"
                policy_families = frozenset({"flow_chunk"})

                def update(self, batch):
                    return {"rows": float(len(batch))}
            """
        )
    )
    dist = tmp_path / "my_algo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-algo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fleetrl.algorithms]\nnoop = my_algo:Noop\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registry()["noop"] == "my_algo:Noop"
    cls = algorithm_class("noop")
    assert cls.__name__ == "Noop" and incompatibility("noop", "gaussian_mlp") is not None
    sys.modules.pop("my_algo", None)


def _task(policy: dict, learner: dict) -> dict:
    return {
        "tasks": [
            {
                "name": "t",
                "observation": {"state": {"shape": [3]}},
                "action": {"shape": [2], "low": -1, "high": 1},
                "policy": policy,
                "learner": learner,
            }
        ]
    }


def test_task_config_checks_the_learner():
    ok = parse_platform(_task({"family": "flow_chunk"}, {"algorithm": "qam", "offline_steps": 10}), "cfg")
    assert ok.tasks[0].learner.algorithm == "qam"
    with pytest.raises(ConfigError, match="policy is 'gaussian_mlp'"):
        parse_platform(_task({"family": "gaussian_mlp"}, {"algorithm": "qam"}), "cfg")
    with pytest.raises(ConfigError, match="unknown algorithm 'sac'"):
        parse_platform(_task({"family": "gaussian_mlp"}, {"algorithm": "sac"}), "cfg")
    with pytest.raises(ConfigError, match="clip"):
        parse_platform(_task({"family": "gaussian_mlp"}, {"algorithm": "ppo", "config": {"clip": -1}}), "cfg")


def test_torch_backend_keeps_recent_versions_for_pinned_episodes():
    torch.manual_seed(0)
    backend = TorchBackend(FlowChunkConfig(hidden=(8,), flow_steps=2), OBS, ACT, 2, keep_versions=2)
    base = {k: v.clone() for k, v in backend.policies[0].state_dict().items()}
    for version in (1, 2):
        backend.load_weights({k: (v + version).numpy() for k, v in base.items()}, version)
    assert list(backend.policies) == [1, 2] and backend.version == 2
    backend.load_weights({k: v.numpy() for k, v in base.items()}, 1)  # an older version is ignored
    assert backend.version == 2
    obs = {"state": np.zeros((3, 3), np.float32)}
    _, _, versions = backend.infer(obs, np.array([1, -1, 0]))
    assert versions.tolist() == [1, 2, 2]  # version 0 was evicted: the row gets the newest
    actions, log_probs, versions = backend.infer(obs)
    assert actions.shape == (3, 2, 2) and versions.tolist() == [2, 2, 2] and np.isnan(log_probs).all()
