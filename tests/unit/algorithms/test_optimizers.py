"""Every built-in algorithm declares its optimizers (``optimizers()``), the ``"policy"`` one covering exactly
the parameters it trains, and keeps the state-dict keys its checkpoints were saved with."""

from __future__ import annotations

import pytest
import torch

from fleetrl.algorithms.base import POLICY_OPTIMIZER, Algorithm, PolicySpec, build_algorithm
from fleetrl.models.flow import FlowChunkConfig
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.models.residual import ResidualAdapterConfig
from fleetrl.robots.protocol import ArraySpec

torch.set_num_threads(1)
OBS = {"state": ArraySpec((3,), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)
SPEC = PolicySpec(OBS, ACT, 2)
FLOW = FlowChunkConfig(hidden=(8,), flow_steps=2)
SMALL_CRITIC = {"critic": {"hidden": [8]}}
CASES = {  # algorithm -> (its config, policy config, optimizer names, state-dict keys of its checkpoints)
    "ppo": ({}, GaussianMLPConfig(hidden=(8,)), {"policy"}, {"optimizer", "history"}),
    "awr": (
        SMALL_CRITIC,
        FLOW,
        {"policy", "critic"},
        {"critic", "target_critic", "critic_optim", "actor_optim", "steps", "adv_scale"},
    ),
    "qam": (
        SMALL_CRITIC | {"bc_steps": 0},
        FLOW,
        {
            "policy",
            "critic",
            "value",
            "reference",
        },  # "reference": the BC flow f_beta follows (reference="ema")
        {"critic", "target_critic", "critic_optim", "divl", "reference", "actor_optim", "steps", "bc_done"}
        | {
            "bc_flow",
            "bc_optim",
            "diagnostics",
            "filter_value",
            "filter_optim",
        },  # None without reference_filter
    ),
    "bc": ({}, FLOW, {"policy"}, {"optim"}),
    "residual": (
        {},
        ResidualAdapterConfig(base=GaussianMLPConfig(hidden=(8,)), hidden=(8,)),
        {"policy"},
        {"optim"},
    ),
}


def build(name: str) -> Algorithm:
    config, policy_cfg, _, _ = CASES[name]
    return build_algorithm(name, config, build_policy(policy_cfg, OBS, ACT, 2), SPEC, policy_cfg.family)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_policy_optimizer_covers_exactly_what_the_algorithm_trains(name):
    algo = build(name)
    optimizers = algo.optimizers()
    assert set(optimizers) == CASES[name][2]
    policy_optim = optimizers[POLICY_OPTIMIZER]
    assert algo.policy_optimizer() is policy_optim
    owned = {id(p) for group in policy_optim.param_groups for p in group["params"]}
    assert owned == {id(p) for p in algo.policy.parameters() if p.requires_grad}
    others = [o for key, o in optimizers.items() if key != POLICY_OPTIMIZER]
    assert all(not owned & {id(p) for g in o.param_groups for p in g["params"]} for o in others)


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_keys_are_those_checkpoints_hold_and_round_trip(name):
    algo = build(name)
    state = algo.state_dict()
    assert set(state) == CASES[name][3]
    build(name).load_state_dict(state)
