"""Any gymnasium environment as a sim robot: ``module:EnvId`` ids, ``gym.make`` keyword arguments, wrappers
and success rules from strings (as config and CLI give them), Dict observations of Boxes as observation
keys, and a clear refusal of spaces a fleetrl policy cannot act in."""

from __future__ import annotations

import sys
import types

import gymnasium as gym
import numpy as np
import pytest

from fleetrl.platform.config import SimFleetConfig
from fleetrl.robots.sim import SimRobot, success_rule


class _DictEnv(gym.Env):
    """Two Box entries (a state vector and a small RGB frame); success when the agent says so in info."""

    observation_space = gym.spaces.Dict(
        {
            "joints": gym.spaces.Box(-1, 1, (3,), np.float64),
            "wrist": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
        }
    )
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def _obs(self):
        return {"joints": np.zeros(3), "wrist": np.full((8, 8, 3), 7, np.uint8)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        return self._obs(), 1.0, False, False, {"is_success": bool(action[0] > 0.5)}


class _DiscreteEnv(_DictEnv):
    action_space = gym.spaces.Discrete(3)


class _NestedEnv(_DictEnv):
    observation_space = gym.spaces.Dict({"joints": gym.spaces.Discrete(4)})


@pytest.fixture(scope="module")
def plugin():
    """A module that registers environments with gymnasium when imported, as third-party packages do."""
    module = types.ModuleType("fleetrl_test_envs")
    module.DictEnv, module.DiscreteEnv, module.NestedEnv = _DictEnv, _DiscreteEnv, _NestedEnv
    module.near_zero = lambda obs, info: bool(np.abs(obs["joints"]).max() < 0.1)
    for name in ("Dict", "Discrete", "Nested"):
        gym.register(f"FleetrlTest{name}-v0", entry_point=f"fleetrl_test_envs:{name}Env")
    sys.modules["fleetrl_test_envs"] = module
    yield module
    del sys.modules["fleetrl_test_envs"]


def test_module_prefixed_ids_dict_observations_and_info_success(plugin):
    robot = SimRobot("fleetrl_test_envs:FleetrlTestDict-v0", success="info:is_success")
    assert {k: (s.shape, s.dtype) for k, s in robot.observation_spec.items()} == {
        "joints": ((3,), "float32"),
        "wrist": ((8, 8, 3), "uint8"),
    }
    obs = robot.reset()
    assert obs["joints"].dtype == np.float32 and obs["wrist"].dtype == np.uint8
    assert not robot.act(np.array([0.0, 0.0], np.float32)).success
    assert robot.act(np.array([0.9, 0.0], np.float32)).success
    entry = SimRobot("FleetrlTestDict-v0", success="fleetrl_test_envs:near_zero")
    entry.reset()
    assert entry.act(np.zeros(2, np.float32)).success


def test_env_kwargs_wrappers_and_an_observation_threshold_rule():
    robot = SimRobot(
        "Reacher-v5",
        env_kwargs={"reward_control_weight": 0.0},
        wrappers=["gymnasium.wrappers:ClipAction"],
        success="obs_norm[-3:-1]<0.02",
    )
    assert robot.env.unwrapped._reward_control_weight == 0.0
    assert any(type(w).__name__ == "ClipAction" for w in _wrappers(robot.env))
    robot.reset()
    env = robot.env.unwrapped
    assert not robot.act(np.zeros(2, np.float32)).success
    env.data.qpos[2:] = env.get_body_com("fingertip")[:2]  # the target under the fingertip
    env.set_state(env.data.qpos.copy(), env.data.qvel * 0)
    assert robot.act(np.zeros(2, np.float32)).success


def _wrappers(env):
    while hasattr(env, "env"):
        yield env
        env = env.env


def test_what_cannot_work_is_refused_with_the_reason(plugin):
    with pytest.raises(ValueError, match=r"action space Discrete\(3\) is not supported"):
        SimRobot("FleetrlTestDiscrete-v0")
    with pytest.raises(ValueError, match=r"observation entries \{'joints': 'Discrete'\} are not Box"):
        SimRobot("FleetrlTestNested-v0")
    with pytest.raises(ValueError, match="unknown gymnasium environment 'Nope-v0'.*module:EnvId"):
        SimRobot("Nope-v0")
    with pytest.raises(ValueError, match="cannot make 'Reacher-v5' with .*no_such_kwarg"):
        SimRobot("Reacher-v5", env_kwargs={"no_such_kwarg": 1})
    with pytest.raises(ValueError, match="wrapper 'gymnasium.wrappers:Nope': cannot load it"):
        SimRobot("Reacher-v5", wrappers=["gymnasium.wrappers:Nope"])
    with pytest.raises(ValueError, match="unknown success rule 'sometimes'; a rule is .*info:KEY"):
        success_rule("sometimes")


def test_sim_fleets_in_the_config_reach_the_robot_command_with_the_same_options():
    from fleetrl.cli.main import build_parser
    from fleetrl.cli.run import sim_robot_args

    sim = SimFleetConfig(
        env="Reacher-v5", task="reach", count=2, success="info:is_success",
        env_kwargs={"reward_dist_weight": 2.0}, wrappers=["gymnasium.wrappers:ClipAction"],
    )  # fmt: skip
    args = build_parser().parse_args(sim_robot_args(sim, 0, "http://127.0.0.1:8000", "TOKEN_ENV"))
    assert (args.sim, args.n, args.task, args.token_env) == ("Reacher-v5", 2, "reach", "TOKEN_ENV")
    assert args.success == "info:is_success" and args.env_kwargs == {"reward_dist_weight": 2.0}
    assert args.wrapper == ["gymnasium.wrappers:ClipAction"]
