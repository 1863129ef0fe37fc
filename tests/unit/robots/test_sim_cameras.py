"""Sim robots with cameras: a MuJoCo gymnasium env with a rendered camera key beside its state, OGBench's
visual cube as a camera-only robot, and the fast rendering settings (smaller shadow map, no
multisampling) that leave the frame nearly unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.robots.sim import FAST_OFFSAMPLES, FAST_SHADOW_SIZE, SimRobot, use_fast_rendering


def test_a_gymnasium_env_gets_a_rendered_camera_key_beside_its_state():
    robot = SimRobot("Reacher-v5", seed=0, camera=32)
    assert set(robot.observation_spec) == {"state", "camera"}
    assert (
        robot.observation_spec["camera"].shape == (32, 32, 3)
        and robot.observation_spec["camera"].dtype == "uint8"
    )
    first = robot.reset()["camera"]
    frames = [robot.act(np.array([1.0, -1.0], np.float32)).observation["camera"] for _ in range(5)]
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in frames)
    assert np.abs(frames[-1].astype(int) - first.astype(int)).sum() > 0  # the arm moved in the picture
    assert robot.env.unwrapped.model.vis.quality.shadowsize == FAST_SHADOW_SIZE
    robot.close()
    with pytest.raises(ValueError, match="at least 8 pixels"):
        SimRobot("Reacher-v5", camera=4)


def test_state_false_sends_the_camera_frame_alone_and_success_still_reads_the_simulator():
    robot = SimRobot("Reacher-v5", seed=0, camera=16, state=False)
    assert set(robot.observation_spec) == {"camera"}
    assert set(robot.reset()) == {"camera"}
    env = robot.env.unwrapped
    step = robot.act(np.zeros(2, np.float32))
    assert set(step.observation) == {"camera"} and not step.success
    # the success rule reads the state the robot no longer sends: put the fingertip on the target
    env.data.qpos[2:] = env.get_body_com("fingertip")[:2]
    env.set_state(env.data.qpos.copy(), env.data.qvel * 0)
    assert robot.act(np.zeros(2, np.float32)).success
    robot.close()
    with pytest.raises(ValueError, match="state=False needs a camera"):
        SimRobot("Reacher-v5", state=False)


def test_visual_cube_runs_as_a_camera_only_robot_and_fast_rendering_keeps_the_frame():
    robot = SimRobot("visual-cube-single-singletask-task1-v0", seed=3, fast_render=False)
    assert set(robot.observation_spec) == {"camera"} and robot.observation_spec["camera"].shape == (64, 64, 3)
    robot.reset()
    frame = robot.act(np.array([0.5, 0.0, -0.5, 0.0, 1.0], np.float32)).observation["camera"]
    env = robot.env.unwrapped
    assert env._model.vis.quality.shadowsize == 4096  # MuJoCo's default, left alone
    use_fast_rendering(robot.env)
    quality = env._model.vis.quality
    assert (quality.shadowsize, quality.offsamples) == (FAST_SHADOW_SIZE, FAST_OFFSAMPLES)
    fast = env.render()  # the same state, shadows from a smaller map and no multisampling
    assert fast.shape == frame.shape and np.abs(fast.astype(int) - frame.astype(int)).mean() < 2.0
    robot.close()


def test_demonstrations_record_camera_frames_with_the_state():
    from fleetrl.robots.demos import collect_scripted_demos, reacher_reach_policy

    plain = collect_scripted_demos("Reacher-v5", reacher_reach_policy, n=2, log_every=0)
    seen = collect_scripted_demos("Reacher-v5", reacher_reach_policy, n=2, camera=32, log_every=0)
    assert set(plain[0].observations) == {"state"} and set(seen[0].observations) == {"state", "camera"}
    for ep, ref in zip(seen, plain, strict=True):
        assert ep.observations["camera"].shape == (len(ep), 32, 32, 3) and ep.final_observation[
            "camera"
        ].shape == (32, 32, 3)
        assert np.array_equal(
            ep.observations["state"], ref.observations["state"]
        )  # the same episodes, plus frames
        assert ep.episode_id != ref.episode_id  # another collection: its own ids
