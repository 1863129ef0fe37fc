"""The damped joint servo (robots/servo.py): the torque it applies for a joint step, its refusal of
environments it cannot drive, and the servo demonstrator reaching Reacher's target through it."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.robots.demos import collect_scripted_demos, reacher_servo_policy
from fleetrl.robots.servo import DampedJointServo
from fleetrl.robots.sim import SimRobot, make_env

SERVO = "fleetrl.robots.servo:DampedJointServo"


def test_the_servo_applies_a_step_torque_damped_by_the_joint_velocities():
    env = DampedJointServo(make_env("Reacher-v5"), kp=3.0, kd=0.2, max_step=0.5)
    assert env.action_space.shape == (2,) and env.action_space.low.min() == -1.0
    env.reset(seed=0)
    data = env.unwrapped.data
    data.qvel[:2] = [2.0, 4.0]
    torque = env.action(np.array([0.4, -1.0], np.float32))
    np.testing.assert_allclose(torque, [3.0 * 0.5 * 0.4 - 0.2 * 2.0, -1.0], rtol=1e-6)  # the second clipped
    data.qvel[:2] = 0.0
    np.testing.assert_allclose(
        env.action(np.array([5.0, 0.0])), [1.0, 0.0]
    )  # actions beyond +-1: a full step
    env.close()


def test_the_servo_refuses_an_environment_without_mujoco_motors():
    with pytest.raises(ValueError, match="needs a MuJoCo environment"):
        DampedJointServo(make_env("CartPole-v1"))


def test_the_servo_demonstrator_reaches_the_target_through_the_sim_robot_wrapper():
    eps = collect_scripted_demos(
        "Reacher-v5", reacher_servo_policy, n=8, seed=7, log_every=0, wrappers=[SERVO]
    )
    assert all(ep.success for ep in eps), [ep.outcome for ep in eps]
    assert eps[0].meta["wrappers"] == [SERVO]
    assert max(np.abs(ep.actions).max() for ep in eps) <= 1.0
    # without the servo the same actions are raw torques and the arm never settles on the target
    raw = collect_scripted_demos("Reacher-v5", reacher_servo_policy, n=8, seed=7, log_every=0)
    assert sum(ep.success for ep in raw) < len(raw)


def test_reacher_cameras_look_down_on_the_arm_unless_the_user_sets_a_view():
    def target_pixels(**kwargs) -> int:
        """Pixels that change when the target moves: how big the target looks."""
        robot = SimRobot("Reacher-v5", seed=0, camera=128, **kwargs)
        robot.reset()
        env = robot.env.unwrapped
        frames = []
        for xy in ([0.12, 0.0], [-0.12, 0.05]):
            qpos = env.data.qpos.copy()
            qpos[2:4] = xy
            env.set_state(qpos, env.data.qvel * 0)
            frames.append(env.render().astype(int))
        robot.close()
        return int((np.abs(frames[0] - frames[1]).sum(axis=2) > 30).sum())

    top, own = target_pixels(), target_pixels(env_kwargs={"default_camera_config": {"trackbodyid": 0}})
    assert top >= 10 and top >= 2 * own, (top, own)  # 15 and 5 pixels here
