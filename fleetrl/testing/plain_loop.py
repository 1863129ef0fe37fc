"""A plain single-process rollout loop: a torch policy drives a SimRobot synchronously, chunk by chunk.

This is the no-Ray, no-ZeroMQ baseline the learning benchmark compares the platform against, and the
data source of the algorithms' learning tests. It writes the same ``Episode`` columns the robot SDK
does (``policy_version``, ``obs_step``, the chunk's ``log_prob`` on its first step), so learners see the
same data; the only difference is that every chunk is conditioned on the observation right before it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fleetrl.robots.episode import Episode, empty_columns, end_flags
from fleetrl.robots.sim import SimRobot


@dataclass
class RolloutStats:
    episodes: int
    steps: int
    mean_return: float
    success_rate: float


def rollout_episodes(
    robot: SimRobot,
    policy: nn.Module,
    n_episodes: int,
    task: str = "task",
    version: int = 0,
    deterministic: bool = False,
    robot_id: str = "plain",
) -> list[Episode]:
    """Run ``n_episodes`` with ``policy.act`` on one observation per chunk; chunks run to their end."""
    episodes = []
    for _ in range(n_episodes):
        obs = robot.reset()
        observations, actions, rewards, versions, obs_steps, log_probs = [], [], [], [], [], []
        done = success = terminated = truncated = False
        while not done:
            with torch.no_grad():
                chunk, log_prob = policy.act(
                    {k: torch.from_numpy(v[None]) for k, v in obs.items()}, deterministic
                )
            chunk = chunk[0].numpy()
            t0 = len(actions)
            for k in range(chunk.shape[0]):
                observations.append(obs)
                actions.append(chunk[k])
                versions.append(version)
                obs_steps.append(t0)
                log_probs.append(float(log_prob[0]) if k == 0 else float("nan"))
                result = robot.act(chunk[k])
                obs = result.observation
                rewards.append(result.reward)
                success = success or result.success
                terminated, truncated = result.terminated, result.truncated
                if success or terminated or truncated:
                    done = True
                    break
        n = len(actions)
        cols = empty_columns(n)
        cols["reward"][:] = rewards
        cols["policy_version"][:] = versions
        cols["obs_step"][:] = obs_steps
        cols["log_prob"][:] = log_probs
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
    return RolloutStats(
        episodes=len(episodes),
        steps=sum(len(e) for e in episodes),
        mean_return=float(np.mean(returns)) if returns else float("nan"),
        success_rate=float(np.mean([e.success for e in episodes])) if episodes else float("nan"),
    )


def evaluate(robot: SimRobot, policy: nn.Module, n_episodes: int, deterministic: bool = True) -> RolloutStats:
    """Mean return and success rate of ``policy`` over ``n_episodes`` (deterministic by default)."""
    return summarize(rollout_episodes(robot, policy, n_episodes, deterministic=deterministic))
