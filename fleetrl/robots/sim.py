"""Simulated robots: any gymnasium environment behind the same ``RobotClient`` a real robot uses.

A ``SimRobot`` exposes the ``Robot`` interface of ``fleetrl.robots.client``: one flat float32
``state`` observation (and with ``camera`` an RGB ``camera`` frame rendered by MuJoCo, uint8
[side, side, 3]), a bounded action, a success predicate, and ``hold()`` = a zero action (what a real arm
does when it stops and keeps its pose). ``run_sim_fleet`` registers K robots over REST and
drives them all from one thread.

``lockstep`` (default off; real robots cannot do it): the simulated robot's time waits for the network.
Its ``RobotClient`` asks for a chunk only once the current one has run out, with the observation right
before it, and does not step the environment until the chunk is there, so no step is ever held and each
chunk is conditioned on the latest observation, as in the plain loop. Learning benchmarks use it to
measure learning apart from latency (holds and observation lag); the robot-time figures then count
only executed steps.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetrl.robots.client import ClientConfig, FleetRunner, RobotClient, StepResult, deregister, register
from fleetrl.robots.client.credentials import credentials_path, register_or_renew
from fleetrl.robots.protocol import ArraySpec

log = logging.getLogger(__name__)

SuccessFn = Callable[[np.ndarray, dict[str, Any]], bool]


def reacher_within_2cm(obs: np.ndarray, info: dict[str, Any]) -> bool:
    """Reacher-v5: the last three entries of the observation are fingertip − target (x, y, z)."""
    return bool(np.linalg.norm(obs[-3:-1]) < 0.02)


def info_success(obs: np.ndarray, info: dict[str, Any]) -> bool:
    """Environments that report success themselves (OGBench manipulation: ``info['success']``)."""
    return bool(info.get("success", False))


def never(obs: np.ndarray, info: dict[str, Any]) -> bool:
    return False


SUCCESS_PREDICATES: dict[str, SuccessFn] = {
    "reacher_2cm": reacher_within_2cm,
    "info_success": info_success,
    "never": never,
}
_OBS_NORM = re.compile(r"obs_norm\[(-?\d*):(-?\d*)\]<([0-9.eE+-]+)")
SUCCESS_RULES = (
    "a name (" + ", ".join(SUCCESS_PREDICATES) + "), 'info:KEY' (info[KEY] is true), "
    "'obs_norm[A:B]<T' (the norm of observation entries A..B-1 below T), or 'module:function' "
    "(called with the observation and info, returns a bool)"
)


def success_rule(rule: str) -> SuccessFn:
    """The success predicate a rule string names (``SUCCESS_RULES``); ValueError naming the forms."""
    if rule in SUCCESS_PREDICATES:
        return SUCCESS_PREDICATES[rule]
    if rule.startswith("info:") and len(rule) > 5:
        key = rule[5:]
        return lambda obs, info: bool(info.get(key, False))
    if m := _OBS_NORM.fullmatch(rule.replace(" ", "")):
        a, b, threshold = (
            (int(m.group(1)) if m.group(1) else None),
            (int(m.group(2)) if m.group(2) else None),
            float(m.group(3)),
        )
        return lambda obs, info: bool(np.linalg.norm(np.asarray(obs)[a:b]) < threshold)
    if ":" in rule:
        fn = entry_point(rule, "success rule")
        return lambda obs, info: bool(fn(obs, info))
    raise ValueError(f"unknown success rule {rule!r}; a rule is {SUCCESS_RULES}")


def entry_point(ref: str, what: str) -> Callable[..., Any]:
    """``module:attribute`` -> the attribute (a function or class), with the reason when it cannot."""
    module, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"{what} {ref!r}: cannot load it ({type(exc).__name__}: {exc})") from None
    if not callable(obj):
        raise ValueError(f"{what} {ref!r} is not callable")
    return obj


@dataclass(frozen=True)
class SimPreset:
    success: str
    control_hz: float
    max_episode_steps: int | None = None  # None: the environment's own time limit
    camera_view: dict[str, Any] | None = None  # ``default_camera_config`` of a robot with ``camera``


# Reacher's own view is oblique and wide: at 64 px its target is one pixel. Seen from above, framed on
# the arm's reach (0.21 m), the target is ~3 px wide and 2 cm (its success radius) ~4 px.
REACHER_TOP_VIEW = {
    "trackbodyid": -1,
    "lookat": [0.0, 0.0, 0.0],
    "distance": 0.7,
    "elevation": -90.0,
    "azimuth": 90.0,
}


# The shipped robots; any other gymnasium id works with an explicit success predicate.
PRESETS: dict[str, SimPreset] = {
    "Reacher-v5": SimPreset(
        success="reacher_2cm", control_hz=20.0, max_episode_steps=50, camera_view=REACHER_TOP_VIEW
    ),
    **{  # OGBench cube-single, its five tasks (1: horizontal, 2-3: vertical, 4-5: diagonal moves)
        f"cube-single-singletask-task{k}-v0": SimPreset(
            success="info_success", control_hz=10.0, max_episode_steps=200
        )
        for k in range(1, 6)
    },
    **{  # the same tasks seen through OGBench's 64x64 camera only (observation 'camera', no state)
        f"visual-cube-single-singletask-task{k}-v0": SimPreset(
            success="info_success", control_hz=10.0, max_episode_steps=200
        )
        for k in range(1, 6)
    },
}

# Offscreen rendering quality of ``fast_render``: MuJoCo's default shadow map is 4096x4096 and it
# multisamples 4x; with the software renderer here a 64x64 frame of OGBench's cube scene takes ~200 ms,
# with a 512 shadow map and no multisampling ~85 ms and the frame stays within 0.6 grey levels on average.
FAST_SHADOW_SIZE, FAST_OFFSAMPLES = 512, 0


def use_fast_rendering(env: Any) -> None:
    """Lower the offscreen rendering cost of a MuJoCo ``env`` (``FAST_SHADOW_SIZE``, no multisampling): a
    renderer made with the old settings (OGBench renders its first observation in ``reset``) is dropped,
    so the next frame builds one with these."""
    u = env.unwrapped
    model = getattr(u, "_model", None) or getattr(u, "model", None)
    if model is None:
        return
    quality = model.vis.quality
    if quality.shadowsize == FAST_SHADOW_SIZE and quality.offsamples == FAST_OFFSAMPLES:
        return
    quality.shadowsize, quality.offsamples = FAST_SHADOW_SIZE, FAST_OFFSAMPLES
    if getattr(u, "_renderer", None) is not None:  # OGBench's manipulation environments
        u._renderer.close()
        u._renderer = None


def _restart_time_limit(env: Any) -> None:
    """Zero gymnasium's TimeLimit step counter (an episode started from a restored state gets a full one)."""
    from gymnasium.wrappers import TimeLimit

    while env is not None:
        if isinstance(env, TimeLimit):
            env._elapsed_steps = 0
            return
        env = getattr(env, "env", None)


def make_env(env_id: str, wrappers: Sequence[str] = (), **kwargs: Any):
    """``gym.make(env_id, **kwargs)`` (any id it accepts, ``module:EnvId`` included: gymnasium imports the
    module, which registers the id), then each of ``wrappers`` (``module:Callable``, called with the env)
    in order; ValueError with the reason when the id, a keyword or a wrapper does not work."""
    import gymnasium as gym

    if ":" not in env_id and env_id not in gym.registry:
        try:
            import ogbench  # noqa: F401 - registers the OGBench environments with gymnasium
        except ImportError:
            pass
        if env_id not in gym.registry:
            raise ValueError(f"unknown gymnasium environment {env_id!r} (for an id another package registers, "
                             "write module:EnvId)")  # fmt: skip
    try:
        env = gym.make(env_id, **kwargs)
    except (gym.error.Error, ImportError, TypeError) as exc:
        raise ValueError(
            f"gymnasium cannot make {env_id!r} with {kwargs}: {type(exc).__name__}: {exc}"
        ) from None
    for ref in wrappers:
        env = entry_point(ref, "wrapper")(env)
    return env


def _dtype(space: Any) -> str:
    return "uint8" if space.dtype == np.uint8 else "float32"


def _dict_observation(env_id: str, space: Any) -> dict[str, Any] | None:
    """The entries of a Dict observation space (each must be a Box), or None for another space."""
    if type(space).__name__ != "Dict":
        return None
    bad = {k: type(sp).__name__ for k, sp in space.spaces.items() if type(sp).__name__ != "Box"}
    if bad:
        raise ValueError(f"{env_id}: observation entries {bad} are not Box spaces (a Dict observation is "
                         "supported when every entry is a Box)")  # fmt: skip
    return dict(space.spaces)


class SimRobot:
    """A gymnasium environment with the ``Robot`` interface."""

    def __init__(
        self,
        env_id: str,
        seed: int = 0,
        success: str | None = None,
        control_hz: float | None = None,
        max_episode_steps: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        lockstep: bool = False,
        camera: int | None = None,
        fast_render: bool = True,
        state: bool = True,
        wrappers: Sequence[str] = (),
    ):
        """``camera``: the side in pixels of a square RGB frame the environment renders at every step
        (offscreen: ``MUJOCO_GL=egl`` or ``osmesa``), sent beside the state as observation ``camera``;
        ``state=False`` sends the frame alone (a policy that must act from pixels; the success rule
        still reads the simulator's state). An environment whose observation is itself an RGB frame
        (OGBench's ``visual-*`` tasks) sends it as ``camera`` with no state. ``fast_render``: render with
        ``use_fast_rendering``'s settings. ``success``: a rule (``SUCCESS_RULES``; default: the preset's, or
        never); ``env_kwargs`` go to ``gym.make``; ``wrappers`` (``module:Callable``) wrap the env in order.
        Observations: a flat Box, an RGB frame, or a Dict of Boxes (one observation key each); actions: a
        Box. Any other space is refused naming it."""
        preset = PRESETS.get(env_id, SimPreset(success="never", control_hz=10.0))
        self.env_id = env_id
        self.success_fn = success_rule(success or preset.success)
        self.control_hz = float(control_hz or preset.control_hz)
        self.lockstep = bool(lockstep)  # read by RobotClient: wait for chunks instead of holding
        steps = max_episode_steps or preset.max_episode_steps
        kwargs = {"max_episode_steps": steps} if steps else {}
        if camera is not None:
            if camera < 8:
                raise ValueError(f"camera side must be at least 8 pixels, got {camera}")
            kwargs |= {"render_mode": "rgb_array", "width": camera, "height": camera}
            if preset.camera_view is not None and "default_camera_config" not in (env_kwargs or {}):
                kwargs["default_camera_config"] = preset.camera_view
        self.env = make_env(env_id, wrappers, **kwargs, **(env_kwargs or {}))
        self.camera, self.fast_render, self.send_state = camera, fast_render, bool(state)
        space = self.env.observation_space
        shape = getattr(space, "shape", None)
        self.pixels = shape is not None and len(shape) == 3 and shape[2] == 3 and space.dtype == np.uint8
        self.dict_keys = _dict_observation(env_id, space)
        if self.dict_keys is not None:  # one observation key per entry (uint8 stays, anything else float32)
            self.observation_spec = {
                k: ArraySpec(tuple(sp.shape), _dtype(sp)) for k, sp in self.dict_keys.items()
            }
        elif self.pixels:  # the environment's observation is its camera frame
            if camera is not None:
                raise ValueError(f"{env_id}: its observation is a camera frame already; leave camera out")
            self.observation_spec = {"camera": ArraySpec(tuple(shape), "uint8")}
        elif shape is None or len(shape) != 1:
            raise ValueError(
                f"{env_id}: observation space {space} is not supported (a flat Box, an RGB frame, or a Dict of Boxes)"
            )
        elif not state and camera is None:
            raise ValueError(f"{env_id}: state=False needs a camera (the robot would send nothing)")
        else:
            self.observation_spec = {"state": ArraySpec(tuple(shape), "float32")} if state else {}
        if camera is not None:
            self.observation_spec["camera"] = ArraySpec((camera, camera, 3), "uint8")
        a = self.env.action_space
        if type(a).__name__ != "Box":
            raise ValueError(
                f"{env_id}: action space {a} is not supported (fleetrl policies act in a continuous Box; "
                "wrap the environment with one that maps a Box to its actions)"
            )
        self.action_spec = ArraySpec(tuple(a.shape), "float32", float(np.min(a.low)), float(np.max(a.high)))
        self._seed = seed
        self._episodes = 0
        self._reset_seed = seed
        self.last_info: dict[str, Any] = {}
        self._zero = np.zeros(a.shape, dtype=np.float32)

    def reset(self) -> dict[str, np.ndarray]:
        self._reset_seed = self._seed + 100_003 * self._episodes
        obs, self.last_info = self.env.reset(seed=self._reset_seed)
        self._episodes += 1
        return self.observe(obs)

    def observe(self, state: Any) -> dict[str, np.ndarray]:
        """What the robot sends for the environment's observation ``state``: the state, and the frame it
        renders now when it has a camera (a pixel environment's observation is its frame)."""
        if self.fast_render and (self.pixels or self.camera is not None or self.dict_keys is not None):
            use_fast_rendering(self.env)
        if self.pixels:
            return {"camera": np.ascontiguousarray(state, dtype=np.uint8)}
        if self.dict_keys is not None:
            out = {k: np.asarray(state[k], dtype=self.observation_spec[k].dtype) for k in self.dict_keys}
        else:
            out = {"state": np.asarray(state, dtype=np.float32)} if self.send_state else {}
        if self.camera is not None:
            out["camera"] = np.ascontiguousarray(self.env.render(), dtype=np.uint8)
        return out

    @property
    def episodes_started(self) -> int:
        return self._episodes

    def episode_meta(self) -> dict[str, Any]:
        """Stored with each episode: the reset seed lets any SimRobot replay its way to one of its states."""
        return {"reset_seed": self._reset_seed, "env": self.env_id}

    def reset_to(self, request: Any) -> dict[str, np.ndarray]:
        """Return-and-explore: ``initial`` is a fresh reset; ``recorded`` restores the simulator state at
        ``request.step`` of a stored episode by resetting with its seed and replaying its executed actions
        (MuJoCo is deterministic), then gives the new episode a full time budget."""
        if request.state == "initial":
            return self.reset()
        if request.state != "recorded" or request.seed is None or request.actions is None:
            raise ValueError(f"unknown state {request.state!r} (this robot knows 'initial' and 'recorded')")
        actions = np.asarray(request.actions, dtype=np.float32).reshape(-1, *self.action_spec.shape)
        self._reset_seed = int(request.seed)
        self._episodes += 1
        obs, self.last_info = self.env.reset(seed=self._reset_seed)
        for action in actions:
            obs, _, terminated, truncated, self.last_info = self.env.step(action)
            if terminated:
                raise ValueError(f"the replay ended the episode before step {len(actions)}")
        _restart_time_limit(self.env)
        return self.observe(obs)

    def act(self, action: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        obs = obs if self.pixels or self.dict_keys is not None else np.asarray(obs, dtype=np.float32)
        self.last_info = info  # privileged simulator facts, for simulated operators (never sent)
        return StepResult(
            self.observe(obs),
            float(reward),
            bool(terminated),
            bool(truncated),
            self.success_fn(obs, info),
        )

    def hold(self) -> StepResult:
        return self.act(self._zero)

    def close(self) -> None:
        self.env.close()


def run_sim_fleet(
    env_id: str,
    n: int,
    api_url: str,
    admin_token: str | None,
    task: str,
    name_prefix: str = "sim",
    seed: int = 0,
    control_hz: float | None = None,
    duration: float | None = None,
    stop: threading.Event | None = None,
    config: ClientConfig | None = None,
    on_start: Callable[[list[RobotClient]], None] | None = None,
    lockstep: bool = False,
    camera: int | None = None,
    state: bool = True,
    success: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    wrappers: Sequence[str] = (),
    register_wait_s: float = 120.0,
    credentials_dir: str | Path | None = None,
    gateway: int | None = None,
) -> list[RobotClient]:
    """Register ``n`` simulated robots over REST and run them until ``duration`` or ``stop``
    (``lockstep``: they wait for their chunks instead of holding, see the module doc; ``camera``: the side
    of the RGB frame each one renders, ``state=False``: the frame alone; ``success``, ``env_kwargs``,
    ``wrappers``: see ``SimRobot``; ``register_wait_s``: how long registration waits for the platform;
    ``credentials_dir``: keep each robot's credentials there (``<name>.json``) and renew them at the next
    start, keeping its robot id; such robots are not deregistered when they stop); ``gateway``: pin them to
    that gateway of a platform with several)."""
    clients = []
    for i in range(n):
        robot = SimRobot(
            env_id, seed=seed + i, success=success, control_hz=control_hz, env_kwargs=env_kwargs,
            lockstep=lockstep, camera=camera, state=state, wrappers=wrappers,
        )  # fmt: skip
        name = f"{name_prefix}-{i}"
        if credentials_dir is None:
            info = register(api_url, admin_token, name, task, robot, wait_s=register_wait_s, gateway=gateway)
        else:
            path = credentials_path(credentials_dir, name)
            info = register_or_renew(
                api_url, admin_token, name, task, robot, path, wait_s=register_wait_s, gateway=gateway
            )
        clients.append(RobotClient.from_registration(robot, info, config=config))
    log.info("%d %s robots registered for task %s", n, env_id, task)
    if on_start is not None:
        on_start(clients)
    runner = FleetRunner(clients)
    try:
        runner.run(duration=duration, stop=stop)
    finally:
        runner.close()
        for c in clients:
            c.robot.close()
        if credentials_dir is None:  # robots with saved credentials keep their identity for the next start
            deregister(api_url, admin_token, [c.robot_id for c in clients])
    return clients
