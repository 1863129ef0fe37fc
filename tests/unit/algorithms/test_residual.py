"""The residual adapter policy family and the ``residual`` algorithm (Robo-ValueRL §3.3, eqs. 6-8).

The learning test uses a synthetic chunk task where the expert chunk is a known smooth function of the
observation, so the action error is measured exactly: the expert is ``a*(s) = 0.6 tanh(s W)`` (chunk of
H = 4 two-dimensional actions), the base policy is behaviour-cloned on demonstrations shifted by +0.3,
and the online data mixes high-quality segments (the expert's chunks, positive progress rewards, as a
progress critic would score them) with low-quality ones (uniformly random chunks, negative rewards).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from fleetrl.algorithms.base import PolicySpec, build_algorithm, incompatibility
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.residual import (
    ResidualAdaptation,
    ResidualConfig,
    correction_loss,
    gate_loss,
    high_quality_weights,
    keep_loss,
)
from fleetrl.models.flow import FlowChunkConfig
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import PolicyConfig, build_policy
from fleetrl.models.residual import ResidualAdapterConfig, ResidualAdapterPolicy
from fleetrl.platform.config import ConfigError
from fleetrl.platform.config import parse_config as parse_platform
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.inference.backends.torch_backend import TorchBackend

torch.set_num_threads(1)

OBS = {"state": ArraySpec((4,), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)
H, SEED, BIAS = 4, 0, 0.3
SPEC = PolicySpec(OBS, ACT, H)


def residual_policy(base=None, **kw) -> ResidualAdapterPolicy:
    cfg = ResidualAdapterConfig(base=base or GaussianMLPConfig(hidden=(32,)), hidden=(32, 32), **kw)
    return build_policy(cfg, OBS, ACT, H)


def obs_batch(n: int, seed: int = 1, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"state": scale * (2 * torch.rand(n, 4, generator=g) - 1)}


def chunk_batch(
    states: np.ndarray, actions: np.ndarray, step_rewards: np.ndarray, offline: np.ndarray
) -> ChunkBatch:
    """A ChunkBatch of complete chunks (no episode ends) from arrays [B, 4], [B, H, 2], [B, H], [B]."""
    b, gamma = len(states), 0.99
    batch = ChunkBatch(
        obs={"state": states.astype(np.float32)},
        actions=actions.astype(np.float32),
        rewards=step_rewards.astype(np.float32),
        chunk_reward=(step_rewards @ gamma ** np.arange(H)).astype(np.float32),
        next_obs={"state": states.astype(np.float32)},
        done=np.zeros(b, bool),
        mask=np.ones((b, H), bool),
        discount=np.full(b, gamma**H, np.float32),
        intervention=np.zeros(b, bool),
        offline=offline.astype(bool),
        robot_id=np.full(b, "r", dtype=object),
        episode_id=np.full(b, "e", dtype=object),
        step=np.zeros(b, np.int32),
        snapshot=0,
        gamma=gamma,
    )
    batch.validate()
    return batch


# --- (a) identity at initialisation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "base",
    [GaussianMLPConfig(hidden=(32,)), FlowChunkConfig(hidden=(32,), flow_steps=3)],
    ids=lambda c: c.family,
)
@pytest.mark.parametrize("gate_init", [0.0, 3.0])
def test_adapter_starts_as_the_base_policy(base, gate_init):
    policy, obs = residual_policy(base, gate_init=gate_init), obs_batch(64)
    chunk, log_prob = policy.act(obs, deterministic=True)
    assert torch.equal(chunk, policy.base.act(obs, deterministic=True)[0])
    assert chunk.shape == (64, H, 2) and torch.isnan(log_prob).all()
    torch.manual_seed(5)
    sampled = policy.act(obs)[0]
    torch.manual_seed(5)
    assert torch.equal(sampled, policy.base.act(obs)[0])  # same noise, same chunk


# --- (b) bounded for any input ----------------------------------------------------------------------


def test_residual_is_bounded_even_with_adversarial_weights():
    policy = residual_policy(max_residual=0.2, gate_init=50.0)
    with torch.no_grad():
        for p in policy.adapter_parameters():
            p.copy_(1e3 * torch.randn_like(p))
    obs = obs_batch(256, scale=1e3)
    base = policy.base_chunk(obs)
    out = policy.adapt(obs, base)
    assert torch.isfinite(out.adapted).all()
    assert (out.adapted - base).abs().max() <= 0.2 + 1e-5  # r_max = 0.2 * half-range 1
    assert (out.adapted - base).abs().max() > 0.19  # the bound is reached, not a dead adapter
    chunk, _ = policy.act(obs)
    assert chunk.min() >= -1.0 and chunk.max() <= 1.0
    wide = build_policy(  # the bound scales with the action range
        ResidualAdapterConfig(base=GaussianMLPConfig(hidden=(8,)), max_residual=0.2),
        OBS,
        ArraySpec((2,), "float32", -4.0, 4.0),
        H,
    )
    assert float(wide.r_max) == pytest.approx(0.8)


# --- (c) the base is frozen ---------------------------------------------------------------------------


def test_updates_leave_the_base_untouched_and_publish_the_adapter_only():
    policy = residual_policy(FlowChunkConfig(hidden=(32,), flow_steps=2))
    base_before = {k: v.clone() for k, v in policy.base.state_dict().items()}
    adapter_before = [p.detach().clone() for p in policy.adapter_parameters()]
    algo = build_algorithm("residual", {"lr": 1e-2, "batch_size": 64}, policy, SPEC, "residual")
    rng = np.random.default_rng(0)
    for _ in range(5):
        metrics = algo.update(
            chunk_batch(
                rng.uniform(-1, 1, (64, 4)),
                rng.uniform(-1, 1, (64, H, 2)),
                np.full((64, H), 0.1),
                rng.random(64) < 0.3,
            )
        )
    assert metrics["adapter_rows"] == 64 and np.isfinite(metrics["adapter_loss"])
    assert all(p.grad is None for p in policy.base.parameters())
    assert all(torch.equal(v, base_before[k]) for k, v in policy.base.state_dict().items())
    assert any(
        not torch.equal(p, q) for p, q in zip(policy.adapter_parameters(), adapter_before, strict=True)
    )

    published = policy.state_dict()  # what the learner publishes and checkpoints
    assert published and not any(k.startswith("base.") for k in published)
    fresh = residual_policy(FlowChunkConfig(hidden=(32,), flow_steps=2))
    fresh.load_state_dict(published)
    obs = obs_batch(8)
    assert torch.equal(fresh.act(obs, True)[0], policy.act(obs, True)[0])
    policy.train()
    assert policy.training and not policy.base.training

    # an inference replica loads the adapter-only weights like any family's
    cfg = ResidualAdapterConfig(base=FlowChunkConfig(hidden=(32,), flow_steps=2), hidden=(32, 32))
    backend = TorchBackend(cfg, OBS, ACT, H)
    backend.load_weights({k: v.numpy() for k, v in published.items()}, 1)
    actions, _, versions = backend.infer({"state": obs["state"].numpy()})
    assert versions.tolist() == [1] * 8 and actions.shape == (8, H, 2)


def test_base_weights_come_from_the_base_checkpoint(tmp_path):
    donor = build_policy(GaussianMLPConfig(hidden=(32,), seed=7), OBS, ACT, H)
    torch.save(donor.state_dict(), tmp_path / "base.pt")
    torch.save({"policy": donor.state_dict(), "step": 3}, tmp_path / "learner.pt")  # a learner checkpoint
    for name in ("base.pt", "learner.pt"):
        policy = residual_policy(GaussianMLPConfig(hidden=(32,)), base_checkpoint=str(tmp_path / name))
        for k, v in donor.state_dict().items():
            assert torch.equal(policy.base.state_dict()[k], v)
        assert not any(p.requires_grad for p in policy.base.parameters())


# --- loss maths -------------------------------------------------------------------------------------


def test_quality_split_and_losses():
    rewards = torch.tensor([[0.2, 0.1], [-0.1, 0.0], [0.5, 0.5], [-1.0, -1.0]])
    offline = torch.tensor([False, False, True, False])
    intervention = torch.tensor([False, False, False, True])
    assert high_quality_weights(rewards, offline, intervention, 0.0).tolist() == [1, 0, 0, 0]
    assert high_quality_weights(rewards, offline, intervention, 0.0, True).tolist() == [1, 0, 0, 1]

    adapted = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    target, mask = torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # ||.||^2 over executed entries, averaged over the marked rows only
    assert correction_loss(adapted, target, mask, torch.tensor([1.0, 0.0])).item() == pytest.approx(1.0)
    assert correction_loss(adapted, target, mask, torch.tensor([1.0, 1.0])).item() == pytest.approx(4.5)
    assert keep_loss(adapted, adapted, mask, torch.ones(2)).item() == 0.0
    assert correction_loss(adapted, target, mask, torch.zeros(2)).item() == 0.0  # no D_on^+ rows: no loss

    logits = torch.tensor([[20.0, 20.0], [-20.0, -20.0], [20.0, 20.0]])
    step_mask = torch.ones(3, 2)
    # rows 0 (D_on^+, open) and 1 (D_off, closed) are right; row 2 (D_on^-) is ignored
    assert gate_loss(logits, step_mask, torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])).item() < 1e-6
    wrong = gate_loss(logits, step_mask, torch.tensor([0, 1.0, 0]), torch.tensor([1.0, 0, 0]))
    assert wrong.item() == pytest.approx(20.0, abs=1e-3)


# --- (d) learning: a biased base, corrected from high-quality online segments -------------------------


EXPERT_W = torch.randn(4, H * 2, generator=torch.Generator().manual_seed(123))


def expert(states: np.ndarray) -> np.ndarray:
    s = torch.as_tensor(states, dtype=torch.float32)
    return (0.6 * torch.tanh(s @ EXPERT_W)).reshape(-1, H, 2).numpy()


def demos(states: np.ndarray) -> np.ndarray:
    """The offline demonstrations: the expert's chunks, shifted by +BIAS in the failure region s_0 > 0."""
    return expert(states) + BIAS * (states[:, :1, None] > 0)


BASE_CFG = GaussianMLPConfig(hidden=(64, 64), seed=SEED)


@pytest.fixture(scope="module")
def biased_base() -> dict[str, torch.Tensor]:
    """BC (regression of the deterministic chunk) on the demonstrations: wrong by +BIAS where s_0 > 0.
    Returns the base's weights, as a base checkpoint holds them."""
    torch.manual_seed(SEED)
    base = build_policy(BASE_CFG, OBS, ACT, H)
    opt = torch.optim.Adam(base.parameters(), lr=3e-3)
    rng = np.random.default_rng(SEED)
    for _ in range(400):
        s = rng.uniform(-1, 1, (256, 4))
        chunk = base.act({"state": torch.as_tensor(s, dtype=torch.float32)}, True)[0]
        loss = (chunk - torch.as_tensor(demos(s))).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return base.state_dict()


def mixed_batch(rng: np.random.Generator, b: int = 256) -> ChunkBatch:
    """The paper's 3:1 online:offline mix. Offline (25%): demonstrations anywhere. Online (75%): half
    high-quality segments, the expert's chunks where the base fails (s_0 > 0: corrected rollouts, scored
    +progress), half low-quality random chunks anywhere (scored -progress)."""
    s = rng.uniform(-1, 1, (b, 4))
    kind = rng.choice(3, size=b, p=[0.25, 0.375, 0.375])  # 0 offline, 1 online good, 2 online bad
    s[kind == 1, 0] = np.abs(s[kind == 1, 0])
    good = expert(s) + rng.normal(0, 0.02, (b, H, 2))
    actions = np.select([kind[:, None, None] == 0, kind[:, None, None] == 1], [demos(s), good])
    actions[kind == 2] = rng.uniform(-1, 1, (int((kind == 2).sum()), H, 2))
    rewards = np.select([kind == 1, kind == 2], [0.05, -0.05], 0.0)[:, None].repeat(H, 1)
    return chunk_batch(s, np.clip(actions, -1, 1), rewards, kind == 0)


def adapt_and_measure(
    base_state: dict[str, torch.Tensor], delta_plus: float, steps: int = 300
) -> tuple[dict[str, float], dict[str, float]]:
    """Action MSE vs. the expert on held-out observations, in and out of the failure region, of the base
    and the adapted policy; and the last update's metrics."""
    torch.manual_seed(SEED)
    base = build_policy(BASE_CFG, OBS, ACT, H)
    base.load_state_dict(base_state)
    cfg = ResidualAdapterConfig(base=BASE_CFG, hidden=(64, 64), max_residual=0.6, seed=SEED)
    policy = ResidualAdapterPolicy(cfg, base, OBS, ACT, H)
    algo = ResidualAdaptation(
        ResidualConfig(lr=1e-3, delta_plus=delta_plus, deterministic_base=True, seed=SEED), policy, SPEC
    )
    rng = np.random.default_rng(SEED + 1)
    for _ in range(steps):
        metrics = algo.update(mixed_batch(rng))
    held = obs_batch(2000, seed=99)
    target = torch.as_tensor(expert(held["state"].numpy()))
    fails = held["state"][:, 0] > 0
    errors = {}
    with torch.no_grad():
        for name, p in (("base", base), ("adapted", policy)):
            err = (p.act(held, True)[0] - target).square().mean((1, 2))
            errors[f"{name}_fail"], errors[f"{name}_ok"] = err[fails].mean().item(), err[~fails].mean().item()
    return errors, metrics


def test_residual_corrects_a_biased_base_from_high_quality_segments(biased_base):
    err, m = adapt_and_measure(biased_base, delta_plus=0.0)
    print("residual: " + ", ".join(f"{k} {v:.4f}" for k, v in (err | m).items()))
    assert err["base_fail"] > 0.07  # the base carries the +0.3 bias there (0.09 MSE)
    assert err["adapted_fail"] < 0.3 * err["base_fail"]  # corrected where it failed ...
    assert err["adapted_ok"] < err["base_ok"] + 0.005  # ... and kept where it was right (L_keep)
    assert m["gate_mean_online"] > m["gate_mean_offline"] + 0.1  # L_gate: open on D_on^+, closed on D_off
    # without the quality split (every online row counts as high quality) the random chunks drag it off
    unfiltered, _ = adapt_and_measure(biased_base, delta_plus=-np.inf)
    print("unfiltered: " + ", ".join(f"{k} {v:.4f}" for k, v in unfiltered.items()))
    assert unfiltered["adapted_fail"] > 5 * err["adapted_fail"]
    assert unfiltered["adapted_ok"] > 10 * err["adapted_ok"]


# --- (e) config ---------------------------------------------------------------------------------------


def test_config_round_trips_through_the_policy_union():
    adapter = TypeAdapter(PolicyConfig)
    raw = {
        "family": "residual",
        "base": {"family": "flow_chunk", "hidden": [16, 16], "flow_steps": 2},
        "base_checkpoint": "/ckpt/base.pt",
        "hidden": [32],
        "max_residual": 0.1,
        "gate_init": -2.0,
    }
    cfg = adapter.validate_python(raw)
    assert isinstance(cfg, ResidualAdapterConfig) and isinstance(cfg.base, FlowChunkConfig)
    assert adapter.validate_python(cfg.model_dump()) == cfg
    assert adapter.validate_json(adapter.dump_json(cfg)) == cfg
    with pytest.raises(ValidationError):  # a residual's base is another family, never a residual
        adapter.validate_python({**raw, "base": {**raw, "base": {"family": "gaussian_mlp"}}})
    with pytest.raises(ValidationError):
        adapter.validate_python({**raw, "max_residual": 0.0})
    with pytest.raises(ValidationError):
        adapter.validate_python({**raw, "bogus": 1})


def test_task_config_pairs_the_residual_family_with_its_algorithm():
    task = {
        "name": "t",
        "observation": {"state": {"shape": [4]}},
        "action": {"shape": [2], "low": -1, "high": 1},
        "policy": {"family": "residual", "base": {"family": "gaussian_mlp"}},
        "learner": {"algorithm": "residual", "config": {"lambda_keep": 0.5}},
    }
    parsed = parse_platform({"tasks": [task]}, "cfg")
    assert parsed.tasks[0].policy.family == "residual"
    assert incompatibility("residual", "residual") is None
    assert "residual" in incompatibility("residual", "flow_chunk")
    assert incompatibility("bc", "residual") is not None
    with pytest.raises(ConfigError, match="policy is 'residual'"):
        parse_platform({"tasks": [{**task, "learner": {"algorithm": "bc"}}]}, "cfg")
