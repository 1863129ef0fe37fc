"""A plain single-process PPO loop: collect -> update -> publish, no Ray, no ZeroMQ.

The baseline the platform's learning benchmark compares against (same ``PPO`` class, same
hyper-parameters, same env-step budget), and the loop of PPO's learning test. Each iteration collects
whole episodes with the current weights (``rollout_episodes``, round-robin over the robots) until
``steps_per_update`` env steps, runs ``PPO.update`` and publishes the new weights as the next version.
With ``backend`` the robots act through that inference backend (e.g. ``torch-fast``) loaded with each
published version, so the reported log-probs carry its numerics, as on the platform.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fleetrl.algorithms.base import PolicySpec
from fleetrl.algorithms.batch import EpisodeBatch
from fleetrl.algorithms.ppo import PPO, PPOConfig
from fleetrl.models.policies import PolicyConfig, build_policy
from fleetrl.robots.episode import Episode
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.plain_loop import rollout_episodes, summarize
from fleetrl.workers.inference.backends import InferenceBackend, build_backend
from fleetrl.workers.weights import to_numpy_state


@dataclass
class IterationStats:
    iteration: int
    env_steps: int  # total so far, this iteration included
    episodes: int  # collected in this iteration
    mean_return: float  # of this iteration's (stochastic) episodes
    success_rate: float
    wall_s: float  # since training began
    metrics: dict[str, float] = field(default_factory=dict)  # PPO.update's


@dataclass
class PlainPPOResult:
    iterations: list[IterationStats]
    policy: torch.nn.Module
    algorithm: PPO


class BackendActor:
    """``policy.act`` through an inference backend: what ``rollout_episodes`` needs from a policy."""

    def __init__(self, backend: InferenceBackend):
        self.backend = backend

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if deterministic:
            raise ValueError("inference backends sample; evaluate deterministic policies directly")
        actions, log_probs, _ = self.backend.infer({k: np.asarray(v) for k, v in obs.items()})
        return torch.from_numpy(actions), torch.from_numpy(log_probs)


def collect(
    robots: Sequence[SimRobot],
    policy: torch.nn.Module,
    steps: int,
    version: int,
    holds: int = 0,
    lookahead: int = 0,
) -> list[Episode]:
    """Whole episodes, one per robot in turn, until they total at least ``steps`` env steps (``holds``:
    held steps before each chunk but the first, as with late chunks; ``lookahead``: chunks asked for that
    many steps early, as the SDK does; see ``rollout_episodes``)."""
    episodes: list[Episode] = []
    while sum(len(e) for e in episodes) < steps:
        i = len(episodes) % len(robots)
        episodes += rollout_episodes(
            robots[i], policy, 1, version=version, robot_id=f"plain-{i}", holds=holds, lookahead=lookahead
        )
    return episodes


def train_plain_ppo(
    robots: SimRobot | Sequence[SimRobot],
    policy_config: PolicyConfig,
    ppo_config: PPOConfig,
    total_steps: int,
    seed: int = 0,
    chunk_len: int = 4,
    gamma: float = 0.99,
    backend: str | None = None,
    fast_numerics: str = "bf16",
    progress: bool = False,
    holds: int = 0,
    lookahead: int = 0,
) -> PlainPPOResult:
    """Train a fresh policy (``gaussian_mlp`` or ``token_lm``) with PPO for ``total_steps`` env steps.

    ``seed`` seeds torch's global generator (action sampling); the policy's initial weights come from
    ``policy_config.seed`` and minibatch order from ``ppo_config.seed``; the robots carry their own seeds.
    ``holds`` > 0: late chunks, each preceded by that many held steps (PPO's hold handling under test);
    ``lookahead`` > 0: chunks conditioned on the observation that many steps before they start.
    """
    robots = [robots] if isinstance(robots, SimRobot) else list(robots)
    spec = PolicySpec(robots[0].observation_spec, robots[0].action_spec, chunk_len, gamma)
    policy = build_policy(policy_config, spec.observation_spec, spec.action_spec, chunk_len)
    ppo = PPO(ppo_config, policy, spec)
    torch.manual_seed(seed)
    version, env_steps, iterations = 0, 0, []
    ppo.published(version)
    actor: torch.nn.Module | BackendActor = policy
    if backend is not None:
        served = build_backend(backend, policy=policy_config, observation_spec=spec.observation_spec,
                               action_spec=spec.action_spec, chunk_len=chunk_len, seed=seed,
                               fast_numerics=fast_numerics)  # fmt: skip
        actor = BackendActor(served)
    start = time.perf_counter()
    while env_steps < total_steps:
        episodes = collect(robots, actor, ppo.batch_request().size, version, holds, lookahead)
        metrics = ppo.update(EpisodeBatch(episodes, [0] * len(episodes), 0))
        version += 1
        ppo.published(version)
        if backend is not None:
            served.load_weights(to_numpy_state(policy.state_dict()), version)
        stats = summarize(episodes)
        env_steps += stats.steps
        iterations.append(
            IterationStats(
                len(iterations),
                env_steps,
                stats.episodes,
                stats.mean_return,
                stats.success_rate,
                time.perf_counter() - start,
                metrics,
            )
        )
        if progress:
            print(
                f"    update {len(iterations)}: {env_steps} env steps, return {stats.mean_return:.2f}",
                flush=True,
            )
    return PlainPPOResult(iterations, policy, ppo)
