"""QAM (BC phase, then adjoint matching) end to end on Reacher-v5 from noisy demos and the initial policy.

Offline partition: 60 episodes of the inverse-kinematics reacher controller with N(0, 0.3^2) action noise
(return about -23). Online partition: 60 stochastic episodes of the untrained flow policy. QAM's first
``bc_steps`` updates are BC on the offline rows (the reference flow), the rest adjoint matching against
DIVL critics. Measured (seed 0, deterministic evaluation over 20 episodes): initial policy about -14.6,
BC reference -11.3, QAM after 400 adjoint-matching updates -11.8: the rise over the initial policy
comes from the BC phase; this test checks that QAM keeps it (within 1) and runs end to end.
"""

from __future__ import annotations

import numpy as np
import torch

from fleetrl.algorithms.base import PolicySpec
from fleetrl.algorithms.divl import DIVLConfig
from fleetrl.algorithms.qam import QAM, QAMConfig
from fleetrl.models.critics import CategoricalValueConfig, ChunkQConfig
from fleetrl.models.flow import FlowChunkConfig, FlowChunkPolicy
from fleetrl.robots.demos import collect_scripted_demos, reacher_reach_policy
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.plain_loop import evaluate, rollout_episodes
from fleetrl.workers.data.replay import Replay
from fleetrl.workers.task import ReplayConfig

ENV, H, GAMMA = "Reacher-v5", 4, 0.9


def test_qam_improves_reacher_policy():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    robot = SimRobot(ENV, seed=1000)
    spec = PolicySpec(robot.observation_spec, robot.action_spec, chunk_len=H, gamma=GAMMA)
    policy = FlowChunkPolicy(
        FlowChunkConfig(hidden=(128, 128), flow_steps=8), robot.observation_spec, robot.action_spec, H
    )
    noise = np.random.default_rng(0)

    def noisy_expert(obs):
        return np.clip(reacher_reach_policy(obs) + noise.normal(0, 0.3, 2), -1, 1)

    replay = Replay.from_config(ReplayConfig(gamma=GAMMA), chunk_len=H, seed=0)
    for ep in collect_scripted_demos(ENV, noisy_expert, 60, seed=0, log_every=0, policy_name="noisy"):
        replay.add(ep)
    for ep in rollout_episodes(SimRobot(ENV, seed=500), policy, 60):
        replay.add(ep)

    def score() -> float:
        return evaluate(SimRobot(ENV, seed=77), policy, 20).mean_return

    initial = score()
    value = CategoricalValueConfig(n_atoms=101, v_min=-20.0, v_max=0.0, hidden=(128, 128))
    cfg = QAMConfig(
        batch_size=256, critic=ChunkQConfig(hidden=(128, 128)), divl=DIVLConfig(value=value),
        temperature=1.0, bc_steps=800,
    )  # fmt: skip
    algo = QAM(cfg, policy, spec)
    for _ in range(cfg.bc_steps):
        algo.update(replay.sample_chunks(cfg.batch_size))
    reference = score()
    for _ in range(400):
        metrics = algo.update(replay.sample_chunks(cfg.batch_size))
    final = score()
    print(f"initial {initial:.2f}  bc reference {reference:.2f}  qam {final:.2f}  {metrics}")
    assert metrics["phase"] == 1.0 and np.isfinite(metrics["adjoint_loss"])
    assert final > initial + 2.0
    assert final > reference - 1.0
