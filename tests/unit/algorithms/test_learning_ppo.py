"""PPO learns Reacher-v5 in the plain single-process loop (a few tens of seconds on one thread)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fleetrl.algorithms.ppo import PPOConfig
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.plain_loop import evaluate
from fleetrl.testing.plain_ppo import train_plain_ppo

os.environ.setdefault("MUJOCO_GL", "egl")

# Tuned on seeds 0-2: a large step size and few epochs learn fastest. Most of the early gain is the policy
# narrowing its exploration noise (Reacher charges |a|^2 per step), so the test checks the training return;
# the deterministic policy's return (printed) improves more slowly and is not asserted.
PPO_CONFIG = PPOConfig(lr=1e-3, epochs=5, batch_size=128, gae_lambda=0.9, steps_per_update=2048)
TOTAL_STEPS = 80_000


def run(seed: int, holds: int = 0) -> dict[str, float]:
    torch.set_num_threads(1)
    policy_cfg = GaussianMLPConfig(seed=seed)
    robot = SimRobot("Reacher-v5", seed=seed)
    before = build_policy(policy_cfg, robot.observation_spec, robot.action_spec, 4)
    eval_before = evaluate(SimRobot("Reacher-v5", seed=10_000 + seed), before, 20).mean_return
    result = train_plain_ppo(
        robot, policy_cfg, PPO_CONFIG.model_copy(update={"seed": seed}), TOTAL_STEPS, seed, holds=holds
    )
    eval_after = evaluate(SimRobot("Reacher-v5", seed=10_000 + seed), result.policy, 20).mean_return
    returns = [it.mean_return for it in result.iterations]
    return {
        "first": float(np.mean(returns[:3])),
        "last": float(np.mean(returns[-3:])),
        "eval_before": eval_before,
        "eval_after": eval_after,
        "wall_s": result.iterations[-1].wall_s,
        "logprob_gap": max(it.metrics["logprob_gap"] for it in result.iterations),
        "hold_fraction": result.iterations[-1].metrics["hold_fraction"],
    }


def test_ppo_learns_reacher():
    out = run(seed=0)
    print(out)
    # the training return rises far beyond its iteration-to-iteration noise (seeds 0-2 at 50k steps: +5.4
    # to +6.6; at 100k: +9.3 to +14.2); a PPO with a wrong ratio or advantages does not rise
    assert out["last"] > out["first"] + 5.0, out
    assert out["logprob_gap"] < 1e-4, out


def test_ppo_learns_reacher_when_every_chunk_comes_late():
    """Two held steps before every chunk (a third of all steps, the chunk acting on an observation two
    steps old), as on the platform when the round trip exceeds the chunk. Held steps are dynamics: their
    rewards count for the chunk before them and the GAE chain runs through them. When they broke the chain
    and their rewards were dropped, an equivalent run rose by only +1.6 (seed 0; now +6.3)."""
    out = run(seed=0, holds=2)
    print(out)
    assert out["hold_fraction"] == pytest.approx(0.32, abs=0.02)
    assert out["last"] > out["first"] + 4.0, out
