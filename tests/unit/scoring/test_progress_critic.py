"""Progress critic: model contract, VLAC label construction, losses, training, rewards, and learning on cube."""

from __future__ import annotations

import time

import numpy as np
import pydantic
import pytest
import torch

from fleetrl.models.progress_critic import ProgressCritic, ProgressCriticConfig, build_progress_critic
from fleetrl.robots.episode import Episode, empty_columns
from fleetrl.scoring.critic_metrics import critic_report, progress_values
from fleetrl.scoring.progress import (
    BWD,
    DONE_NEG,
    DONE_POS,
    FINE_BWD,
    FINE_FWD,
    FWD,
    PairLabelConfig,
    PairSampler,
    ProgressRewarder,
    ProgressTrainConfig,
    detect_done,
    episode_frames,
    progress_losses,
    progress_rewards,
    train_progress_critic,
)


def make_episode(
    T: int, task: str = "a", outcome: str = "success", states: np.ndarray | None = None, eid: str = "e"
) -> Episode:
    """An episode whose state is [frame index, 0]: labels can be checked against the indices."""
    if states is None:
        states = np.stack([np.arange(T + 1), np.zeros(T + 1)], axis=1).astype(np.float32)
    return Episode(
        episode_id=eid,
        task=task,
        robot_id="r",
        outcome=outcome,
        observations={"state": states[:T].astype(np.float32)},
        actions=np.zeros((T, 1), np.float32),
        columns=empty_columns(T),
        final_observation={"state": states[T].astype(np.float32)},
        source="offline",
    )


def tiny_cfg(**kw) -> ProgressCriticConfig:
    base = dict(obs_dim=2, tasks=("a", "b"), encoder_hidden=(16,), head_hidden=(16,), feature_dim=8)
    return ProgressCriticConfig(**{**base, **kw})


# --- model --------------------------------------------------------------------------------------------


def test_config_is_frozen_strict_and_described():
    cfg = tiny_cfg()
    with pytest.raises(pydantic.ValidationError):
        ProgressCriticConfig(obs_dim=2, tasks=("a",), bogus=1)
    with pytest.raises(pydantic.ValidationError):
        cfg.obs_dim = 3
    for cls in (ProgressCriticConfig, PairLabelConfig, ProgressTrainConfig):
        assert all(f.description for f in cls.model_fields.values()), cls
    with pytest.raises(ValueError, match="obs_dim and tasks"):
        build_progress_critic(ProgressCriticConfig())
    with pytest.raises(pydantic.ValidationError):
        PairLabelConfig(min_gap=3, fine_gap=2)


def test_model_shapes_ranges_antisymmetry_and_determinism():
    m1, m2 = build_progress_critic(tiny_cfg(seed=3)), build_progress_critic(tiny_cfg(seed=3))
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)
    x, y = torch.randn(7, 2) * 5, torch.randn(7, 2) * 5
    task = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    d, logit = m1(x, y, task)
    assert d.shape == (7,) and logit.shape == (7,)
    assert (d.abs() <= 1).all()
    d_rev, _ = m1(y, x, task)
    torch.testing.assert_close(d_rev, -d)
    assert m1(x, x, task)[0].abs().max() < 1e-6
    # done depends on o_j only, and the dict form of an observation is accepted
    _, logit2 = m1({"state": torch.randn(7, 2)}, {"state": y}, task)
    torch.testing.assert_close(logit2, logit)
    torch.testing.assert_close(m1.done_logit(y, task), logit)
    # the task embedding matters
    assert not torch.allclose(m1(x, y, 1 - task)[0], d)


def test_task_index_and_checkpoint_round_trip():
    m = build_progress_critic(tiny_cfg())
    m.set_normalizer(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    assert m.task_index("b") == 1 and m.task_index(0) == 0
    with pytest.raises(KeyError, match="does not know task 'zzz'"):
        m.task_index("zzz")
    m2 = ProgressCritic.from_checkpoint(m.checkpoint())
    x, y, t = torch.randn(4, 2), torch.randn(4, 2), torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(m2(x, y, t), m(x, y, t))
    assert m2.tasks == ("a", "b")


# --- labels -------------------------------------------------------------------------------------------


def sample(episodes, cfg=None, tasks=("a", "b"), n=4000, seed=0):
    sampler = PairSampler(episodes, tasks, cfg or PairLabelConfig(mismatch_prob=0.0))
    return sampler, sampler.sample(n, np.random.default_rng(seed))


def test_forward_backward_labels_are_fraction_of_remaining_work():
    _, b = sample([make_episode(40), make_episode(25)])
    T = np.where(b.episode == 0, 40, 25)
    i, j = b.step_i, b.step_j
    fwd, bwd = j > i, j < i
    assert fwd.any() and bwd.any() and not (i == j).any()
    np.testing.assert_allclose(b.delta[fwd], (j - i)[fwd] / (T - i)[fwd], rtol=1e-6)
    np.testing.assert_allclose(b.delta[bwd], -(i - j)[bwd] / (T - j)[bwd], rtol=1e-6)
    assert (b.delta[fwd] > 0).all() and (b.delta[bwd] < 0).all() and (np.abs(b.delta) <= 1).all()
    # a pair that ends at the final observation (frame T) has label exactly 1
    to_end = fwd & (j == T)
    assert to_end.any() and np.allclose(b.delta[to_end], 1.0)
    # group structure: short pair both ways, long pair both ways
    assert ((j - i)[b.kind == FINE_FWD] == 1).all() and ((i - j)[b.kind == FINE_BWD] == 1).all()
    assert (j > i)[b.kind == FWD].all() and (j < i)[b.kind == BWD].all()
    # the pairs index the sampler's frames, whose state column 0 is the frame index
    sampler, _ = sample([make_episode(40), make_episode(25)])
    np.testing.assert_array_equal(sampler.frames[b.i, 0], i)
    np.testing.assert_array_equal(sampler.frames[b.j, 0], j)


def test_one_step_labels_cumulate_to_linear_progress():
    # the label c(t, t+1) = 1/(T - t) fed through the VOC recursion gives v_t = t / T
    T = 30
    c = 1.0 / (T - np.arange(T))
    np.testing.assert_allclose(progress_values(c), np.arange(T + 1) / T, atol=1e-12)


def test_difference_filter_drops_close_pairs_and_zeroes_same_state_pairs():
    _, b = sample([make_episode(50)], PairLabelConfig(min_gap=5, fine_gap=5, mismatch_prob=0.0))
    assert (np.abs(b.step_j - b.step_i) >= 5).all()
    assert ((b.step_j - b.step_i)[b.kind == FINE_FWD] == 5).all()
    # short episodes: every sampled frame stays inside its episode; too short ones are skipped
    cfg = PairLabelConfig(min_gap=3, fine_gap=3, mismatch_prob=0.0)
    sampler, b = sample(
        [make_episode(6), make_episode(5, eid="short"), make_episode(7, outcome="failure")], cfg
    )
    assert [ep.episode_id for ep in sampler.episodes] == ["e", "e"] and len(sampler.episodes) == 2
    T = sampler.length[b.episode]
    assert (b.step_i >= 0).all() and (b.step_i <= T).all() and (b.step_j >= 0).all() and (b.step_j <= T).all()
    assert (np.abs(b.step_j - b.step_i) >= 3).all()
    # frames 10..30 are one static state: pairs inside it get label 0 (the paper's Diff < sigma rule)
    s = np.stack([np.arange(41.0), np.zeros(41)], axis=1)
    s[10:31, 0] = 10.0
    cfg = PairLabelConfig(same_state_sigma=0.01, mismatch_prob=0.0)
    _, b = sample([make_episode(40, states=s)], cfg)
    inside = (b.step_i >= 10) & (b.step_i <= 30) & (b.step_j >= 10) & (b.step_j <= 30)
    assert inside.any() and (b.delta[inside] == 0).all()
    assert (b.delta[~inside] != 0).all()


def test_done_labels_joint_sampling_and_failed_episodes():
    cfg = PairLabelConfig(mismatch_prob=0.0, failed_weight=0.5)
    _, b = sample([make_episode(40), make_episode(40, outcome="timeout", eid="f")], cfg)
    ok, T, j = b.episode == 0, 40, b.step_j
    # successful episode: done iff j > 0.95 T; unlabelled in [0.8 T, 0.95 T]
    assert (b.done[ok] == (j[ok] > 0.95 * T)).all()
    band = ok & (j >= 0.8 * T) & (j <= 0.95 * T)
    assert band.any() and (b.done_mask[band] == 0).all() and (b.done_mask[ok & ~band] == 1).all()
    # every group carries one completed and one not-completed second frame
    pos, neg = ok & (b.kind == DONE_POS), ok & (b.kind == DONE_NEG)
    assert (b.done[pos] == 1).all() and (b.done[neg] == 0).all() and (b.done_mask[pos | neg] == 1).all()
    assert pos.sum() == neg.sum() > 0
    assert (np.abs(b.step_j - b.step_i)[pos | neg] >= 1).all()
    share_pos = b.done[ok & (b.done_mask == 1)].mean()
    assert 0.15 < share_pos < 0.4, share_pos
    # failed episode: no progress, never done, down-weighted
    f = ~ok
    assert (b.delta[f] == 0).all() and (b.done[f] == 0).all() and (b.done_mask[f] == 1).all()
    assert (b.weight[f] == 0.5).all() and (b.weight[ok] == 1).all()
    # excluded altogether when asked
    sampler, b = sample(
        [make_episode(40), make_episode(40, outcome="failure", eid="f")], PairLabelConfig(use_failed=False)
    )
    assert len(sampler.episodes) == 1 and (b.episode == 0).all()


def test_mismatched_task_share_and_labels():
    episodes = [make_episode(40, task="a"), make_episode(30, task="b", eid="e2")]
    sampler, b = sample(episodes, PairLabelConfig(), n=5000, seed=1)  # default mismatch_prob 0.05
    share = b.mismatch.mean()
    assert 0.04 < share < 0.06, share
    own = sampler.task[b.episode]
    assert (b.task[b.mismatch] != own[b.mismatch]).all() and (b.task[~b.mismatch] == own[~b.mismatch]).all()
    assert (b.delta[b.mismatch] == 0).all() and (b.done[b.mismatch] == 0).all()
    assert (b.done_mask[b.mismatch] == 1).all()
    # one known task: nothing to mismatch
    _, b1 = sample([make_episode(40)], PairLabelConfig(), tasks=("a",))
    assert not b1.mismatch.any()
    with pytest.raises(ValueError, match="not in the critic's task list"):
        PairSampler([make_episode(10, task="c")], ("a",), PairLabelConfig())


# --- losses, training, rewards ------------------------------------------------------------------------


def test_progress_losses_hand_case():
    out = progress_losses(
        delta_pred=torch.tensor([0.5, 0.0]),
        done_logit=torch.tensor([0.0, 100.0]),
        delta=torch.tensor([1.0, 0.0]),
        done=torch.tensor([1.0, 1.0]),
        done_mask=torch.tensor([1.0, 0.0]),
        weight=torch.tensor([1.0, 3.0]),
        done_weight=2.0,
    )
    assert out["delta_mse"].item() == pytest.approx(0.25 / 4)
    assert out["done_bce"].item() == pytest.approx(np.log(2))
    assert out["loss"].item() == pytest.approx(0.25 / 4 + 2 * np.log(2))


def linear_reach_episodes(n: int, seed: int, T: int = 30, outcome: str = "success") -> list[Episode]:
    """A point moving from a random start to the goal (0, 0) (success) or wandering (failure)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        start = rng.uniform(-1, 1, 2)
        if outcome == "success":
            s = start[None] * (1 - np.linspace(0, 1, T + 1))[:, None]
        else:
            s = start[None] + np.cumsum(rng.normal(0, 0.05, (T + 1, 2)), axis=0)
        s = s + rng.normal(0, 0.005, s.shape)
        out.append(make_episode(T, task="reach", outcome=outcome, states=s, eid=f"{outcome}{k}"))
    return out


def test_training_learns_a_synthetic_task_and_reports_progress():
    calls = []
    cfg = ProgressTrainConfig(
        critic=ProgressCriticConfig(encoder_hidden=(64,), head_hidden=(64,), feature_dim=32),
        groups_per_batch=32,
        log_every=50,
    )
    train = linear_reach_episodes(16, seed=0) + linear_reach_episodes(8, seed=1, outcome="failure")
    model, history = train_progress_critic(
        train, cfg, steps=200, seed=0, callback=lambda s, m: calls.append(s)
    )
    assert calls == [50, 100, 150, 200] and [h["step"] for h in history] == [50, 100, 150, 200]
    assert history[-1]["delta_mse"] < history[0]["delta_mse"]
    assert model.tasks == ("reach",) and model.cfg.obs_dim == 2
    report = critic_report(model, linear_reach_episodes(4, seed=2))
    assert report["voc"] > 0.9 and report["success"]["n"] == 4 and report["failed"]["n"] == 0
    # rewards: one per step; done fires at the end of a successful episode
    ep = linear_reach_episodes(1, seed=3)[0]
    frames = episode_frames(ep)
    r = progress_rewards(model, frames, "reach")
    assert r.shape == (len(ep),) and r.dtype == np.float32 and r.sum() > 0
    scored = ProgressRewarder(model).score_episode(ep)
    assert scored["done_prob"].shape == (len(ep) + 1,)
    assert scored["done_step"] is not None and scored["done_step"] >= 0.8 * len(ep)


def moving_bar_episodes(n: int, seed: int, T: int = 20) -> list[Episode]:
    """Camera episodes: a bright bar crosses a 16x16 grey frame from left to right (success = at the right)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        start = int(rng.integers(0, 4))
        frames = np.full((T + 1, 16, 16, 1), 40, np.uint8)
        for t, x in enumerate(np.linspace(start, 15, T + 1).round().astype(int)):
            frames[t, :, x] = 230
        frames = np.clip(frames + rng.normal(0, 4, frames.shape), 0, 255).astype(np.uint8)
        ep = make_episode(T, task="reach", eid=f"bar{k}")
        out.append(
            Episode(
                **{
                    **ep.__dict__,
                    "observations": {"cam": frames[:T]},
                    "final_observation": {"cam": frames[T]},
                }
            )
        )
    return out


def test_a_cnn_progress_critic_learns_progress_from_camera_frames():
    cfg = ProgressTrainConfig(
        critic=ProgressCriticConfig(
            obs_key="cam", encoder="cnn", head_hidden=(32,), feature_dim=16,
            image_encoder={"channels": (8, 8), "strides": (2, 2)},
        ),
        groups_per_batch=16,
        log_every=60,
    )  # fmt: skip
    model, history = train_progress_critic(moving_bar_episodes(12, seed=0), cfg, steps=180, seed=0)
    assert model.cfg.image_shape == (16, 16, 1) and type(model.encoder).__name__ == "ImageEncoder"
    assert history[-1]["delta_mse"] < 0.5 * history[0]["delta_mse"], history
    report = critic_report(model, moving_bar_episodes(4, seed=1))
    assert report["voc"] > 0.8, report


def test_detect_done_threshold_and_patience():
    p = np.array([0.1, 0.7, 0.2, 0.6, 0.8, 0.9])
    assert detect_done(p, 0.5) == 1
    assert detect_done(p, 0.5, patience=2) == 4
    assert detect_done(p, 0.95) is None
    assert detect_done(np.zeros(0)) is None


# --- learning on real demonstrations ------------------------------------------------------------------

CUBE = "cube-single-singletask-task1-v0"
SEED = 0


def test_critic_learns_progress_from_cube_oracle_demos():
    """24 plan-oracle demos + 12 random-policy failures -> held-out demos (6) vs held-out failures (16).

    Measured with this exact setup (300 steps; seed 0 here, 1 and 2 by editing SEED), 2 CPU cores:
    held-out success VOC 1.000 / 0.998 / 1.000, VROC 0.999 / 0.998 / 1.000, final progress 0.99-1.00;
    held-out random-policy VOC 0.710 / 0.400 / 0.780, VOC-F1 0.596 / 0.124 / 0.699, final progress
    0.10 / 0.06 / 0.11. VOC is scale-free, so a small consistent drift on failures (the random arm sinks
    and closes its gripper, as the first half of a demo does) still ranks high; VOC-F1 and the cumulative
    progress separate them clearly. About 15 s on 2 otherwise idle cores (collection ~10 s, training
    ~4 s); 30-40 s when the machine is shared with a running integration suite.
    """
    from fleetrl.robots.demos import RandomPolicy, collect_oracle_demos, collect_scripted_demos
    from fleetrl.robots.sim import SimRobot

    seed = SEED
    t0 = time.perf_counter()
    demos = collect_oracle_demos(CUBE, n=30, oracle="plan", seed=seed, log_every=0)
    spec = SimRobot(CUBE).action_spec
    rand = collect_scripted_demos(
        CUBE, RandomPolicy(spec, seed), n=28, seed=seed + 7, max_steps=60, log_every=0
    )
    assert sum(d.success for d in demos) >= 27 and not any(r.success for r in rand)
    cfg = ProgressTrainConfig(
        critic=ProgressCriticConfig(
            tasks=(CUBE, "other-task"), encoder_hidden=(128, 128), head_hidden=(128, 128), feature_dim=64
        ),
        groups_per_batch=32,
        log_every=100,
    )
    model, _ = train_progress_critic(demos[:24] + rand[:12], cfg, steps=300, seed=seed)
    ok = critic_report(model, [d for d in demos[24:] if d.success])
    failed = critic_report(model, rand[12:])
    print(
        f"seed {seed}: success VOC {ok['voc']:.3f} VROC {ok['vroc']:.3f} F1 {ok['voc_f1']:.3f} "
        f"progress {ok['progress']:.2f} | failed VOC {failed['voc']:.3f} VROC {failed['vroc']:.3f} "
        f"F1 {failed['voc_f1']:.3f} progress {failed['progress']:.2f} | {time.perf_counter() - t0:.1f}s"
    )
    assert ok["voc"] > 0.97 and ok["vroc"] > 0.97 and ok["voc_f1"] > 0.97
    assert ok["progress"] > 0.95
    assert ok["final_done_prob"] > 0.8 and ok["false_done_rate"] < 0.05
    assert failed["voc"] < 0.9 and failed["voc_f1"] < 0.8
    assert failed["progress"] < 0.25
    assert failed["false_done_rate"] < 0.05 and failed["done_detected"] == 0
    # the critic answers "no progress" for a task the episode does not belong to
    frames = episode_frames(demos[-1])
    own = np.abs(progress_rewards(model, frames, CUBE)).mean()
    assert np.abs(progress_rewards(model, frames, "other-task")).mean() < 0.5 * own
