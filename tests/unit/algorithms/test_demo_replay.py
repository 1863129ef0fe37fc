"""Demo replay (VLAC eq. 6): the imitation loss of every policy family, the algorithms' imitation step, and
that it pulls a policy toward the demonstrations while PPO or AWR train it, against the same run without."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import pydantic
import pytest
import torch

# helpers of the sibling test modules (pytest puts tests/unit on sys.path)
from test_awr import ACT, OBS, SPEC, H, make_batch, make_policy, small_awr
from test_ppo import LOGP_ROWS, OBS_STEPS, VERSIONS, make_episode, small_ppo
from test_qam import _batch as qam_batch
from test_qam import _make as small_qam

from fleetrl.algorithms.base import Algorithm, build_algorithm
from fleetrl.algorithms.batch import ChunkBatch, EpisodeBatch
from fleetrl.algorithms.bc import BC, BCConfig
from fleetrl.algorithms.demo_replay import DemoReplayConfig, imitation_loss
from fleetrl.models.flow import FlowChunkConfig
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.models.residual import ResidualAdapterConfig
from fleetrl.models.token_policy import TokenLMConfig
from fleetrl.workers.task import LearnerConfig
from tests.unit.models.test_token_policy import TINY

torch.set_num_threads(1)

POLICY_CONFIGS = {
    "gaussian_mlp": GaussianMLPConfig(hidden=(32,), value_hidden=(16,)),
    "flow_chunk": FlowChunkConfig(hidden=(32, 32), flow_steps=2),
    "token_lm": TokenLMConfig(**TINY),
    "residual": ResidualAdapterConfig(base=GaussianMLPConfig(hidden=(16,)), hidden=(32,)),
}
ON = DemoReplayConfig(weight=1.0)


def demo_distance(policy: torch.nn.Module, batch: ChunkBatch) -> float:
    """Mean squared gap between the policy's deterministic chunks on the demo observations and the demo
    chunks, over executed steps."""
    with torch.no_grad():
        chunk, _ = policy.act({k: torch.as_tensor(v) for k, v in batch.obs.items()}, deterministic=True)
    err = (chunk.numpy() - batch.actions) ** 2 * batch.mask[..., None]
    return float(err.sum() / (batch.mask.sum() * batch.actions.shape[-1]))


@pytest.mark.parametrize("family", sorted(POLICY_CONFIGS))
def test_imitation_loss_of_every_family_is_finite_and_optimisable(family):
    policy = build_policy(POLICY_CONFIGS[family], OBS, ACT, H)
    demos = make_batch(16, seed=3)

    def loss() -> torch.Tensor:
        torch.manual_seed(7)  # the same flow noise / base samples before and after training
        return imitation_loss(policy, family, demos)

    optim = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    before = loss().item()
    for _ in range(40):
        optim.zero_grad()
        loss().backward()
        optim.step()
    after = loss().item()
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before - 0.1 * abs(before), (before, after)


def test_unknown_family_without_log_prob_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="no imitation loss for policy family 'mystery'"):
        imitation_loss(make_policy(), "mystery", make_batch())


def test_imitation_step_uses_each_algorithm_s_own_policy_optimizer():
    ppo, awr, qam = small_ppo(), small_awr(), small_qam(bc_steps=0)
    bc = BC(BCConfig(), make_policy(), SPEC)
    residual_policy = build_policy(POLICY_CONFIGS["residual"], OBS, ACT, H)
    res = build_algorithm("residual", {}, residual_policy, SPEC, "residual")
    cases = [  # (algorithm, its policy optimizer, the policy family, demonstrations)
        (ppo, ppo.optimizer, "gaussian_mlp", make_batch()),
        (awr, awr.actor_optim, "flow_chunk", make_batch()),
        (bc, bc.optim, "flow_chunk", make_batch()),
        (qam, qam.actor_optim, "flow_chunk", qam_batch(np.random.default_rng(0))),
        (res, res.optim, "residual", make_batch()),
    ]
    for algo, optim, family, demos in cases:
        assert algo.policy_optimizer() is optim, algo.name
        before = {k: v.clone() for k, v in algo.policy.state_dict().items()}
        metrics = algo.imitation_step(demos, family, ON)
        assert math.isfinite(metrics["demo_loss"]) and metrics["demo_rows"] == len(demos), algo.name
        after = algo.policy.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), algo.name
    base = res.policy.base  # a residual policy's frozen base never moves
    assert all(p.grad is None and not p.requires_grad for p in base.parameters())


class NoOptimizer(Algorithm):
    """A plug-in that keeps no optimizer over the policy (it only watches)."""

    name: ClassVar[str] = "watcher"
    data: ClassVar[Literal["episodes", "chunks"]] = "chunks"
    policy_families: ClassVar[frozenset[str]] = frozenset({"flow_chunk"})

    def update(self, batch):
        return {}


def test_a_plug_in_without_a_policy_optimizer_gets_one_of_its_own():
    algo = NoOptimizer(NoOptimizer.config_cls(), make_policy(), SPEC)
    assert algo.policy_optimizer() is None
    first = algo.imitation_step(make_batch(), "flow_chunk", ON)
    optim = algo.policy_optimizer()
    assert optim is not None and optim.param_groups[0]["lr"] == ON.lr
    algo.imitation_step(make_batch(), "flow_chunk", ON)
    assert algo.policy_optimizer() is optim and math.isfinite(first["demo_loss"])


def demonstrations(seed: int) -> ChunkBatch:
    """Random observations, one demonstrated chunk for all of them (a target every policy can reach in a
    few dozen steps, unlike a random observation -> chunk map)."""
    demos = make_batch(8, seed=seed)
    demos.actions[:] = np.array([0.6, -0.6], np.float32)
    return demos


def train_with_demos(
    algo: Algorithm, family: str, rl_batch, demos: ChunkBatch, cfg: DemoReplayConfig
) -> float:
    """``K`` learner steps as ``LearnerLoop`` runs them (update, then a demo step when one is due); returns
    the policy's distance to the demonstrations."""
    torch.manual_seed(0)
    for step in range(1, K + 1):
        algo.update(rl_batch)
        if cfg.due(step):
            algo.imitation_step(demos, family, cfg)
    return demo_distance(algo.policy, demos)


K, LR = 50, 3e-3


def test_demo_replay_pulls_awr_toward_the_demonstrations():
    demos, rl_batch = demonstrations(11), make_batch(32, seed=12, offline=np.zeros(32, bool))
    off = train_with_demos(small_awr(actor_lr=LR), "flow_chunk", rl_batch, demos, DemoReplayConfig())
    on = train_with_demos(small_awr(actor_lr=LR), "flow_chunk", rl_batch, demos, DemoReplayConfig(weight=1.0))
    print(f"AWR demo distance after {K} updates: weight 0 -> {off:.3f}, weight 1 -> {on:.3f}")
    assert on < 0.5 * off  # seeds 1-4: 0.32-0.36 -> 0.11-0.13


def test_demo_replay_pulls_ppo_toward_the_demonstrations():
    demos = demonstrations(11)
    episodes = EpisodeBatch([make_episode(VERSIONS, OBS_STEPS, LOGP_ROWS)], [0], 0)
    distances = []
    for weight in (0.0, 1.0):
        ppo = small_ppo(lr=LR)
        ppo.published(0)
        ppo.published(1)
        distances.append(
            train_with_demos(ppo, "gaussian_mlp", episodes, demos, DemoReplayConfig(weight=weight))
        )
    print(
        f"PPO demo distance after {K} updates: weight 0 -> {distances[0]:.3f}, weight 1 -> {distances[1]:.3f}"
    )
    assert distances[1] < 0.5 * distances[0]  # seeds 1-4: 0.31-0.33 -> < 0.01


def test_demo_replay_schedule():
    cfg = DemoReplayConfig(weight=0.5, every=3)
    assert [s for s in range(1, 10) if cfg.due(s)] == [3, 6, 9]
    assert [s for s in range(1, 10) if cfg.due(s, offline_steps=4)] == [6, 9]  # online steps only
    assert not any(DemoReplayConfig(every=1).due(s) for s in range(1, 10))  # weight 0: off


def test_learner_config_takes_demo_replay_and_rejects_unknown_keys():
    assert LearnerConfig().demo_replay.weight == 0.0  # off by default
    cfg = LearnerConfig(algorithm="ppo", demo_replay={"weight": 0.1, "batch_size": 32, "every": 5})
    assert cfg.demo_replay == DemoReplayConfig(weight=0.1, batch_size=32, every=5)
    with pytest.raises(pydantic.ValidationError, match="demo_replay.wieght"):
        LearnerConfig(demo_replay={"wieght": 0.1})
    with pytest.raises(pydantic.ValidationError, match="demo_replay.weight"):
        LearnerConfig(demo_replay={"weight": -1.0})
    with pytest.raises(pydantic.ValidationError):
        cfg.demo_replay.weight = 1.0  # frozen
