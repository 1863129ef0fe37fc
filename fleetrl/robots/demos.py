"""Demonstrations from scripted controllers: OGBench's oracles and any policy function on a SimRobot.

Every demo is an ``Episode`` like the ones robots upload (``source='offline'``, ``labelled_by='robot'``)
with the same ``state`` observation the ``SimRobot`` exposes, so the store, the replay and the progress
critic treat demos and online episodes alike. Outcomes follow the robot SDK: ``success`` when the robot's
success predicate holds (the episode ends there), ``timeout`` when the time limit cut it, ``failure`` when
the environment terminated it otherwise.

OGBench oracles (``ogbench.manipspace.oracles``) need privileged information (target block, its goal
pose) that OGBench puts into ``info`` only in ``mode='data_collection'``. That mode, however, also
randomises the scene and draws a random goal every episode (it is meant for task-agnostic play data), so
its episodes are not demonstrations of ``...-singletask-task1``. We therefore run the task's own
environment (``mode='task'``: task1's initial layout and goal, the success test and time limit the
SimRobot uses) and add the three privileged entries the oracles read, computed from the simulator the
way ``data_collection`` mode computes them (``privileged/target_block`` = 0,
``privileged/target_block_pos``/``_yaw`` from the goal mocap body). Noise follows OGBench's own
collection script: the plan oracle adds its temporally correlated plan noise (``noise``, smoothing 0.5);
the Markov oracle gets Gaussian action noise with per-episode scale ``xi ~ U(0, noise)`` and per-dimension
scales ``[xi, xi, xi, 3 xi, 10 xi]``. OGBench's oracles draw from NumPy's global RNG; we seed it per
episode from ``(seed, index)`` and restore the caller's global state afterwards.

Cube-single episodes are limited to 200 steps (OGBench's registration and the SimRobot preset); the plan
oracle needs about 65 steps and the Markov oracle about 45, so the default limit is ample.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fleetrl.robots.episode import Episode, empty_columns, end_flags
from fleetrl.robots.protocol import ArraySpec
from fleetrl.robots.sim import SimRobot

log = logging.getLogger(__name__)

PolicyFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]
ProgressFn = Callable[[int, int, Episode], None]  # (episodes done, episodes asked for, last episode)

_NAMESPACE = uuid.UUID("5b0f6a55-7c3e-4f7b-9d49-2b8c7f1d9e01")


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _episode_id(kind: str, params: dict[str, Any], index: int) -> str:
    """Deterministic: the same collection call yields the same ids, so a store ingests a re-run once."""
    return f"demo-{uuid.uuid5(_NAMESPACE, repr((kind, sorted(params.items()), index))).hex[:20]}"


def _build_episode(
    robot: SimRobot,
    episode_id: str,
    task: str,
    robot_id: str,
    observations: list[dict[str, np.ndarray]],
    actions: list[np.ndarray],
    rewards: list[float],
    outcome: str,
    terminated: bool,
    truncated: bool,
    meta: dict[str, Any],
) -> Episode:
    n = len(actions)
    terminated, truncated = end_flags(outcome == "success", terminated, truncated)
    cols = empty_columns(n)
    cols["reward"][:] = rewards
    t = np.arange(n, dtype=np.float64) / robot.control_hz  # simulated robot time
    cols["obs_time"][:] = t
    cols["action_start"][:] = t
    ep = Episode(
        episode_id=episode_id,
        task=task,
        robot_id=robot_id,
        outcome=outcome,
        observations={k: np.stack([o[k] for o in observations[:n]]) for k in observations[0]},
        actions=np.stack(actions).astype(np.float32).reshape(n, *robot.action_spec.shape),
        columns=cols,
        final_observation=dict(observations[n]),
        labelled_by="robot",
        source="offline",
        terminated=terminated,
        truncated=truncated,
        meta=meta,
    )
    ep.validate()
    return ep


def _outcome(success: bool, truncated: bool) -> str:
    return "success" if success else ("timeout" if truncated else "failure")


class _Progress:
    def __init__(self, what: str, n: int, log_every: int, on_episode: ProgressFn | None):
        self.what, self.n, self.log_every, self.on_episode = what, n, log_every, on_episode
        self.t0, self.steps, self.successes = time.perf_counter(), 0, 0

    def __call__(self, k: int, ep: Episode) -> None:
        self.steps += len(ep)
        self.successes += ep.success
        if self.on_episode is not None:
            self.on_episode(k, self.n, ep)
        if self.log_every and (k % self.log_every == 0 or k == self.n):
            rate = self.steps / max(time.perf_counter() - self.t0, 1e-9)
            log.info(
                "%s: %d/%d episodes, %d successes, %.0f steps/episode, %.0f steps/s",
                self.what, k, self.n, self.successes, self.steps / k, rate,
            )  # fmt: skip


class _Rollout(NamedTuple):
    """One scripted episode as it ran: the observations (one more than the actions), what it executed."""

    observations: list[dict[str, np.ndarray]]
    actions: list[np.ndarray]
    rewards: list[float]
    success: bool
    terminated: bool
    truncated: bool
    meta: dict[str, Any]  # this episode's facts beyond the collection's parameters


def _collect(
    robot: SimRobot,
    kind: str,
    params: dict[str, Any],
    n: int,
    task: str,
    robot_id: str,
    progress: _Progress,
    rollout: Callable[[int], _Rollout],
) -> list[Episode]:
    """Episodes ``rollout(0) .. rollout(n - 1)`` as validated offline ``Episode``s; closes the robot."""
    episodes = []
    try:
        for k in range(n):
            run = rollout(k)
            meta = {**params, **run.meta, "index": k, "collector": f"collect_{kind}_demos"}
            ep = _build_episode(
                robot, _episode_id(kind, params, k), task, robot_id, run.observations, run.actions,
                run.rewards, _outcome(run.success, run.truncated), run.terminated, run.truncated, meta,
            )  # fmt: skip
            episodes.append(ep)
            progress(k + 1, ep)
    finally:
        robot.close()
    return episodes


def oracle_info(env: Any, info: dict[str, Any]) -> dict[str, Any]:
    """Add the privileged target entries that OGBench reports only in data-collection mode."""
    from ogbench.manipspace import lie

    u = env.unwrapped
    if "privileged/target_block" in info:
        return info
    mocap = u._cube_target_mocap_ids[0]
    out = dict(info)
    out["privileged/target_block"] = 0
    out["privileged/target_block_pos"] = u._data.mocap_pos[mocap].copy()
    out["privileged/target_block_yaw"] = np.array(
        [lie.SO3(wxyz=u._data.mocap_quat[mocap]).compute_yaw_radians()]
    )
    return out


def make_oracle(env: Any, oracle: str, noise: float) -> Any:
    if oracle == "plan":
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

        return CubePlanOracle(env=env, noise=noise, noise_smoothing=0.5)
    if oracle == "markov":
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

        return CubeMarkovOracle(env=env, min_norm=0.4)
    raise ValueError(f"unknown oracle {oracle!r}; use 'plan' or 'markov'")


def collect_oracle_demos(
    env_id: str = "cube-single-singletask-task1-v0",
    n: int = 10,
    oracle: str = "plan",
    noise: float = 0.1,
    seed: int = 0,
    max_steps: int | None = None,
    task: str | None = None,
    robot_id: str = "oracle",
    on_episode: ProgressFn | None = None,
    log_every: int = 10,
    camera: int | None = None,
) -> list[Episode]:
    """Run OGBench's scripted cube oracle (``'plan'`` or ``'markov'``) for ``n`` episodes (``camera``: record
    a rendered frame of that side with every observation, as ``SimRobot`` sends it).

    Only OGBench *cube-single* environments are supported (state observations; with several cubes
    a task needs one oracle run per cube, and scene/puzzle need their own oracle routing). ``task`` names the platform task the demos belong to (default: ``env_id``); ``max_steps``
    overrides the environment's time limit (200 for cube-single). Episode k resets with seed
    ``seed + 100_003 k`` as the SimRobot does, and the oracle's own randomness is seeded from (seed, k),
    so a call is reproducible. Failed episodes are returned too (outcome ``timeout``/``failure``).
    """
    if not env_id.startswith("cube-single"):
        raise ValueError(f"collect_oracle_demos supports OGBench cube-single environments, not {env_id!r}")
    if oracle not in ("plan", "markov"):
        raise ValueError(f"unknown oracle {oracle!r}; use 'plan' or 'markov'")
    robot = SimRobot(env_id, seed=seed, max_episode_steps=max_steps, camera=camera)
    env = robot.env
    agent = make_oracle(env, oracle, noise)
    params = {"env_id": env_id, "oracle": oracle, "noise": noise, "seed": seed, "max_steps": max_steps}
    if camera is not None:
        params["camera"] = camera  # another collection than the same one without frames (episode ids)
    progress = _Progress(f"{oracle} oracle on {env_id}", n, log_every, on_episode)

    def rollout(k: int) -> _Rollout:
        ep_seed = seed + 100_003 * k
        with _global_numpy_seed(seed * 1_000_003 + k):
            ob, info = env.reset(seed=ep_seed)
            agent.reset(ob, oracle_info(env, info))
            xi = np.random.uniform(0, noise) if oracle == "markov" else 0.0
            obs, acts, rews = [robot.observe(ob)], [], []
            success = terminated = truncated = False
            while True:
                action = np.asarray(agent.select_action(ob, oracle_info(env, info)), dtype=np.float64)
                if oracle == "markov" and xi > 0:
                    action = action + np.random.normal(0, [xi, xi, xi, 3 * xi, 10 * xi], action.shape)
                action = np.clip(action, -1.0, 1.0).astype(np.float32)
                ob, reward, terminated, truncated, info = env.step(action)
                obs.append(robot.observe(ob))
                acts.append(action)
                rews.append(float(reward))
                success = robot.success_fn(np.asarray(ob, np.float32), info)
                if success or terminated or truncated:
                    break
        return _Rollout(
            obs, acts, rews, success, bool(terminated), bool(truncated), {"episode_seed": ep_seed}
        )

    return _collect(robot, "oracle", params, n, task or env_id, robot_id, progress, rollout)


def collect_scripted_demos(
    env_id: str,
    policy_fn: PolicyFn,
    n: int,
    seed: int = 0,
    max_steps: int | None = None,
    task: str | None = None,
    robot_id: str = "scripted",
    on_episode: ProgressFn | None = None,
    log_every: int = 10,
    policy_name: str | None = None,
    camera: int | None = None,
    wrappers: Sequence[str] = (),
) -> list[Episode]:
    """Drive a ``SimRobot`` with ``policy_fn(observation dict) -> action`` for ``n`` episodes (``camera``:
    the robot also records a rendered frame of that side with every observation; ``wrappers``: the
    robot's env wrappers, ``module:Callable``, as ``SimRobot`` takes them).

    The loop is the robot SDK's: reset, act until the success predicate, termination or time limit.
    A policy with a ``reset()`` method has it called before each episode. Random or weak policies make
    failed episodes the same way (useful as negatives for the progress critic).
    """
    robot = SimRobot(env_id, seed=seed, max_episode_steps=max_steps, camera=camera, wrappers=wrappers)
    name = policy_name or getattr(policy_fn, "__name__", type(policy_fn).__name__)
    params = {"env_id": env_id, "policy": name, "seed": seed, "max_steps": max_steps}
    if camera is not None:
        params["camera"] = camera
    if wrappers:
        params["wrappers"] = list(wrappers)
    progress = _Progress(f"{name} on {env_id}", n, log_every, on_episode)
    low, high = robot.action_spec.low, robot.action_spec.high

    def rollout(k: int) -> _Rollout:  # noqa: ARG001 - every episode runs the same way
        if hasattr(policy_fn, "reset"):
            policy_fn.reset()
        ob = robot.reset()
        obs, acts, rews = [ob], [], []
        while True:
            action = np.asarray(policy_fn(ob), dtype=np.float32).reshape(robot.action_spec.shape)
            if low is not None and high is not None:
                action = np.clip(action, low, high)
            res = robot.act(action)
            ob = res.observation
            obs.append(ob)
            acts.append(action)
            rews.append(res.reward)
            if res.success or res.terminated or res.truncated:
                break
        return _Rollout(obs, acts, rews, res.success, res.terminated, res.truncated, {})

    return _collect(robot, "scripted", params, n, task or env_id, robot_id, progress, rollout)


# --- scripted policies ----------------------------------------------------------------------------

_REACHER_LINKS = (0.1, 0.11)  # Reacher-v5 link lengths (m)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _reacher_joint_error(s: np.ndarray) -> np.ndarray:
    """Joint angles to the target by inverse kinematics minus the current ones; of the two elbow
    solutions the one nearer the current angles. ``s``: Reacher-v5's state, cos q (2), sin q (2),
    target xy (2), joint velocities (2), fingertip - target (3)."""
    q = np.arctan2(s[2:4], s[0:2])
    x, y = s[4], s[5]
    l1, l2 = _REACHER_LINKS
    cos_q2 = np.clip((x * x + y * y - l1 * l1 - l2 * l2) / (2 * l1 * l2), -1.0, 1.0)
    best = None
    for sign in (1.0, -1.0):
        q2 = sign * np.arccos(cos_q2)
        q1 = np.arctan2(y, x) - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2))
        err = _wrap(np.array([q1, q2]) - q)
        if best is None or np.abs(err).sum() < np.abs(best).sum():
            best = err
    return best


def reacher_reach_policy(obs: Mapping[str, np.ndarray], kp: float = 3.0, kd: float = 0.2) -> np.ndarray:
    """Reacher-v5 (torques): inverse kinematics to the target, then a PD controller on the joint angles.
    Reaches within 2 cm in about 12-22 steps (0.6-1.1 s at 20 Hz) from every start we tried."""
    s = np.asarray(obs["state"], dtype=np.float64)
    return np.clip(kp * _reacher_joint_error(s) - kd * s[6:8], -1.0, 1.0).astype(np.float32)


SERVO_WRAPPER = "fleetrl.robots.servo:DampedJointServo"  # the wrapper reacher_servo_policy's robot needs


def reacher_servo_policy(obs: Mapping[str, np.ndarray], max_step: float = 0.5) -> np.ndarray:
    """Reacher-v5 behind ``servo.DampedJointServo`` (same ``max_step``): the inverse-kinematics step to the
    target, which depends on positions only (a camera frame shows it); with the servo's defaults it
    moves as ``reacher_reach_policy`` does."""
    s = np.asarray(obs["state"], dtype=np.float64)
    return np.clip(_reacher_joint_error(s) / max_step, -1.0, 1.0).astype(np.float32)


class RandomPolicy:
    """Uniform random actions within the action bounds (default [-1, 1]); reproducible from ``seed``."""

    def __init__(self, action_spec: ArraySpec, seed: int = 0):
        self.spec = action_spec
        self.rng = np.random.default_rng(seed)
        self.__name__ = f"random(seed={seed})"

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        low = -1.0 if self.spec.low is None else self.spec.low
        high = 1.0 if self.spec.high is None else self.spec.high
        return self.rng.uniform(low, high, self.spec.shape).astype(np.float32)
