"""A plain single-process rollout loop: a torch policy drives a SimRobot synchronously, chunk by chunk.

This is the no-Ray, no-ZeroMQ baseline the learning benchmark compares the platform against, and the
data source of the algorithms' learning tests. It writes the same ``Episode`` columns the robot SDK
does (``policy_version``, ``obs_step``, the chunk's ``log_prob`` on its first step), so learners see the
same data; the only difference is that every chunk is conditioned on the observation right before it
(unless ``holds`` mimics late chunks: held steps before each chunk, which then acts on an older one, or
``lookahead`` mimics the robot SDK's prefetch: the next chunk is asked for ``lookahead`` steps before the
current one ends, so it acts that many steps after its observation, as on the platform with no hold).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fleetrl.robots.episode import Episode, empty_columns, end_flags
from fleetrl.robots.pending import PENDING_KEY, encode_pending
from fleetrl.robots.sim import SimRobot


@dataclass
class RolloutStats:
    episodes: int
    steps: int
    mean_return: float
    success_rate: float
    hold_fraction: float = 0.0  # held steps / all steps (the plain loop never holds; platform episodes may)


def _run_episode(
    robot: SimRobot, policy: nn.Module, version: int, deterministic: bool, holds: int, lookahead: int = 0
) -> dict:
    """One episode's per-step lists (``rows``: obs, action, version, obs_step, log_prob, held, reward) and
    its end flags; ``holds`` held zero-action steps before every chunk but the first (a late chunk);
    ``lookahead``: each chunk after the first is computed ``lookahead`` steps before the previous one ends."""
    obs = robot.reset()
    rows: list[tuple] = []
    flags = {"success": False, "terminated": False, "truncated": False}

    def step(action, row_version, obs_step, log_prob, held) -> bool:
        nonlocal obs
        result = robot.hold() if held else robot.act(robot.action_spec.clip(action))  # recorded as sampled
        rows.append((obs, action, row_version, obs_step, log_prob, held, result.reward))
        obs = result.observation
        flags["success"] = flags["success"] or result.success
        flags["terminated"], flags["truncated"] = result.terminated, result.truncated
        return flags["success"] or result.terminated or result.truncated

    def ask(pending: np.ndarray | None = None, chunk_len: int = 0) -> tuple[np.ndarray, float, int]:
        """A chunk for the current observation and the actions still ``pending`` before it starts (as the
        SDK sends them): (chunk, its log-prob, the observation's step)."""
        batch = {k: torch.from_numpy(v[None]) for k, v in obs.items()}
        if pending is not None:
            encoded = encode_pending(pending, chunk_len, pending[0].size)
            batch[PENDING_KEY] = torch.from_numpy(encoded[None])
        with torch.no_grad():
            actions, log_prob = policy.act(batch, deterministic)
        return actions[0].numpy(), float(log_prob[0]), len(rows)

    done, early = False, None
    while not done:
        (chunk, log_prob, t0), early = early or ask(), None
        for _ in range(holds if t0 else 0):  # the chunk is late: the robot holds, its observation ages
            if done := step(np.zeros_like(chunk[0]), -1, -1, float("nan"), True):
                break
        for k in range(0 if done else chunk.shape[0]):
            if lookahead and chunk.shape[0] - k == min(lookahead, chunk.shape[0]):
                early = ask(
                    chunk[k:], len(chunk)
                )  # the robot uploads its observation before the chunk runs out
            if done := step(chunk[k], version, t0, log_prob if k == 0 else float("nan"), False):
                break
    return {"rows": rows, "final": obs, **flags}


def rollout_episodes(
    robot: SimRobot,
    policy: nn.Module,
    n_episodes: int,
    task: str = "task",
    version: int = 0,
    deterministic: bool = False,
    robot_id: str = "plain",
    holds: int = 0,
    lookahead: int = 0,
) -> list[Episode]:
    """Run ``n_episodes`` with ``policy.act`` on one observation per chunk; chunks run to their end.
    ``holds`` > 0 mimics a robot whose chunks come late: before each chunk but the first it holds that
    many steps (``held``, zero action), and the chunk is conditioned on the observation before them.
    ``lookahead`` > 0 mimics the SDK's prefetch: each chunk but the first is conditioned on the observation
    ``lookahead`` steps before the previous chunk ends (the platform's action lag without holds)."""
    episodes = []
    for _ in range(n_episodes):
        run = _run_episode(robot, policy, version, deterministic, holds, lookahead)
        observations, actions, versions, obs_steps, log_probs, held, rewards = zip(*run["rows"], strict=True)
        obs, success, terminated, truncated = (
            run["final"],
            run["success"],
            run["terminated"],
            run["truncated"],
        )
        n = len(actions)
        cols = empty_columns(n)
        cols["reward"][:] = rewards
        cols["policy_version"][:] = versions
        cols["obs_step"][:] = obs_steps
        cols["log_prob"][:] = log_probs
        cols["held"][:] = held
        cols["obs_time"][:] = cols["action_start"][:] = np.arange(n) / robot.control_hz
        term, trunc = end_flags(success, terminated, truncated)
        outcome = "success" if success else ("timeout" if trunc else "failure")
        ep = Episode(
            episode_id=f"plain-{uuid.uuid4().hex[:16]}",
            task=task,
            robot_id=robot_id,
            outcome=outcome,
            observations={k: np.stack([o[k] for o in observations]) for k in obs},
            actions=np.stack(actions).astype(np.float32),
            columns=cols,
            final_observation=obs,
            terminated=term,
            truncated=trunc,
        )
        ep.validate()
        episodes.append(ep)
    return episodes


def summarize(episodes: list[Episode]) -> RolloutStats:
    returns = [float(e.columns["reward"].sum()) for e in episodes]
    steps = sum(len(e) for e in episodes)
    return RolloutStats(
        episodes=len(episodes),
        steps=steps,
        mean_return=float(np.mean(returns)) if returns else float("nan"),
        success_rate=float(np.mean([e.success for e in episodes])) if episodes else float("nan"),
        hold_fraction=sum(int(e.columns["held"].sum()) for e in episodes) / max(1, steps),
    )


def evaluate(robot: SimRobot, policy: nn.Module, n_episodes: int, deterministic: bool = True) -> RolloutStats:
    """Mean return and success rate of ``policy`` over ``n_episodes`` (deterministic by default)."""
    return summarize(rollout_episodes(robot, policy, n_episodes, deterministic=deterministic))
