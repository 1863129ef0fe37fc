"""workers/data/replay.py (its partition.py ring and robot_sampling.py weights) and rewards.py: chunk maths,
partition mix, dynamic sampling, eviction, rewards."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.replay import Replay
from fleetrl.workers.data.rewards import assign_rewards, with_rewards
from fleetrl.workers.task import ReplayConfig

# The 5-step episode, H = 3, gamma = 0.9, rewards 1..5, computed by hand for every start step t:
#   t  valid h  chunk reward                 discount  chunk reaches the end
#   0  3        1 + .9*2 + .81*3 = 5.23      .729      no  (next obs = obs[3])
#   1  3        2 + .9*3 + .81*4 = 7.94      .729      no  (next obs = obs[4])
#   2  3        3 + .9*4 + .81*5 = 10.65     .729      yes (next obs = final)
#   3  2        4 + .9*5         = 8.5       .81       yes
#   4  1        5                = 5.0       .9        yes
HAND = {
    0: (3, 5.23, 0.729, False),
    1: (3, 7.94, 0.729, False),
    2: (3, 10.65, 0.729, True),
    3: (2, 8.5, 0.81, True),
    4: (1, 5.0, 0.9, True),
}


def five_step(terminated: bool):
    outcome = "success" if terminated else "timeout"
    return synthetic_episode(
        5, rewards=[1, 2, 3, 4, 5], outcome=outcome, terminated=terminated, truncated=not terminated
    )


@pytest.mark.parametrize("terminated", [True, False])
def test_chunks_match_hand_computed_values(terminated):
    ep = five_step(terminated)
    ep.columns["intervention"][1] = True
    replay = Replay(chunk_len=3, gamma=0.9, seed=0)
    replay.add(ep)
    b = replay.sample_chunks(400)
    b.validate()
    assert set(b.step.tolist()) == {0, 1, 2, 3, 4}
    assert b.notes and "offline partition empty" in b.notes[0] and not b.offline.any()
    for i, t in enumerate(b.step):
        h, chunk, discount, reaches_end = HAND[int(t)]
        assert b.mask[i].tolist() == [k < h for k in range(3)]
        assert b.chunk_reward[i] == pytest.approx(chunk, abs=1e-5)
        assert b.discount[i] == pytest.approx(discount, abs=1e-6)
        assert b.rewards[i].tolist() == [t + k + 1 if k < h else 0 for k in range(3)]
        # actions: synthetic action t has value t; past the end the last action repeats
        assert b.actions[i, :, 0].tolist() == [min(t + k, 4) for k in range(3)]
        assert bool(b.done[i]) == (terminated and reaches_end)
        assert bool(b.intervention[i]) == (t <= 1)  # step 1 was an operator's
        np.testing.assert_array_equal(b.obs["state"][i], ep.observations["state"][t])
        expected_next = ep.final_observation["state"] if reaches_end else ep.observations["state"][t + 3]
        np.testing.assert_array_equal(b.next_obs["state"][i], expected_next)
    assert b.actions.shape == (400, 3, 2) and b.rewards.dtype == np.float32
    assert set(b.episode_id) == {ep.episode_id} and set(b.robot_id) == {"robot-0"}


def test_sampling_is_uniform_over_transitions_not_episodes():
    replay = Replay(chunk_len=2, gamma=0.99, offline_fraction=0.0, seed=1)
    short, long = synthetic_episode(10, seed=1), synthetic_episode(30, seed=2)
    replay.add(short)
    replay.add(long)
    ids = np.concatenate([replay.sample_chunks(1000).episode_id for _ in range(20)])
    assert (ids == long.episode_id).mean() == pytest.approx(0.75, abs=0.015)


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_mix_ratio(fraction):
    replay = Replay(chunk_len=4, gamma=0.99, offline_fraction=fraction, seed=2)
    offline_ids = set()
    for i in range(6):
        off = synthetic_episode(20 + i, source="offline", seed=i)
        offline_ids.add(off.episode_id)
        replay.add(off)
        replay.add(synthetic_episode(40, source="online", seed=100 + i))
    counts = []
    for _ in range(300):
        b = replay.sample_chunks(64)
        counts.append(int(b.offline.sum()))
        assert all((eid in offline_ids) == off for eid, off in zip(b.episode_id, b.offline, strict=True))
        assert not b.notes
    assert set(counts) <= {int(64 * fraction), int(64 * fraction) + 1}  # stochastic rounding per batch
    assert np.mean(counts) / 64 == pytest.approx(fraction, abs=0.01)


def test_empty_partition_falls_back_and_says_so():
    replay = Replay(chunk_len=2, gamma=0.9, seed=3)
    with pytest.raises(ValueError, match="empty"):
        replay.sample_chunks(8)
    replay.add(synthetic_episode(6, source="offline"))
    b = replay.sample_chunks(32)
    assert b.offline.all() and b.notes == ("online partition empty: all 32 samples from offline",)


def robots_with_success_rates(alpha: float) -> Replay:
    replay = Replay(chunk_len=2, gamma=0.9, offline_fraction=0.0, seed=4, robot_alpha=alpha, robot_eps=0.05)
    for i in range(10):  # same amount of data per robot; "good" succeeds 8/10, "lagging" 2/10
        replay.add(synthetic_episode(20, robot_id="good", outcome="success" if i < 8 else "failure", seed=i))
        replay.add(
            synthetic_episode(20, robot_id="lagging", outcome="success" if i < 2 else "failure", seed=50 + i)
        )
    replay.add(
        synthetic_episode(20, robot_id="lagging", outcome="aborted", seed=99)
    )  # unlabelled: not counted
    return replay


def test_dynamic_sampling_favours_the_lagging_robot():
    replay = robots_with_success_rates(alpha=1.0)
    assert replay.success_rates() == {"good": 0.8, "lagging": 0.2}
    # weight (1 - s + eps)^alpha: good 0.25, lagging 0.85; lagging holds 220 of 420 transitions (11 episodes)
    w_good, w_lag = 0.25, 0.85
    assert replay.robot_weights()["lagging"] == pytest.approx(w_lag / (w_good + w_lag))
    expected = w_lag * 220 / (w_lag * 220 + w_good * 200)
    robots = np.concatenate([replay.sample_chunks(1000).robot_id for _ in range(20)])
    assert (robots == "lagging").mean() == pytest.approx(expected, abs=0.015)


def test_alpha_zero_is_uniform():
    replay = robots_with_success_rates(alpha=0.0)
    robots = np.concatenate([replay.sample_chunks(1000).robot_id for _ in range(20)])
    assert (robots == "lagging").mean() == pytest.approx(220 / 420, abs=0.015)
    assert replay.robot_weights() == {"good": 0.5, "lagging": 0.5}


def test_fifo_eviction_of_online_only_and_ring_wraps_correctly():
    replay = Replay(chunk_len=4, gamma=0.9, offline_fraction=0.5, seed=5, capacity=100)
    demo = synthetic_episode(30, source="offline", seed=0)
    replay.add(demo)
    held = {demo.episode_id: demo}
    online = []
    for i in range(25):  # lengths 7..13 (8..14 rows) so episodes straddle the ring's end
        ep = synthetic_episode(7 + i % 7, seed=10 + i)
        replay.add(ep)
        held[ep.episode_id] = ep
        online.append(ep)
        rows = sum(len(e) + 1 for e in online)
        while rows > 100:
            rows -= len(online.pop(0)) + 1
        s = replay.sizes()
        assert s["online_episodes"] == len(online) and s["online_rows"] == rows <= 100
        assert s["offline_episodes"] == 1 and s["offline_transitions"] == 30
    assert replay.sizes()["evicted_episodes"] == 25 - len(online)
    live = {e.episode_id for e in online} | {demo.episode_id}
    b = replay.sample_chunks(2000)
    assert set(b.episode_id) == live  # nothing evicted is sampled, everything live is
    for i in range(len(b)):
        ep, t = held[b.episode_id[i]], int(b.step[i])
        np.testing.assert_array_equal(b.obs["state"][i], ep.observations["state"][t])
        assert b.actions[i, :, 0].tolist() == [min(t + k, len(ep) - 1) for k in range(4)]
        nxt = ep.observations["state"][t + 4] if t + 4 < len(ep) else ep.final_observation["state"]
        np.testing.assert_array_equal(b.next_obs["state"][i], nxt)


def test_growth_right_after_an_eviction_keeps_episodes_intact():
    # rows start at 1024; A (11 rows) + B (1000 rows) fit; C (100 rows) exceeds capacity 1100, so A is
    # evicted (the ring's tail moves) and the storage grows to 1100 in the same add.
    replay = Replay(chunk_len=3, gamma=0.9, offline_fraction=0.0, seed=9, capacity=1100)
    a, b_, c = synthetic_episode(10, seed=1), synthetic_episode(999, seed=2), synthetic_episode(99, seed=3)
    for ep in (a, b_, c):
        replay.add(ep)
    assert replay.online.alloc == 1100 and replay.sizes()["evicted_episodes"] == 1
    held = {e.episode_id: e for e in (b_, c)}
    batch = replay.sample_chunks(3000)
    assert set(batch.episode_id) == set(held)
    for i in range(len(batch)):
        ep, t = held[batch.episode_id[i]], int(batch.step[i])
        np.testing.assert_array_equal(batch.obs["state"][i], ep.observations["state"][t])
        assert batch.actions[i, 0, 0] == t


def test_duplicates_and_spec_mismatch():
    replay = Replay(chunk_len=2, gamma=0.9, seed=6)
    ep = synthetic_episode(5)
    assert replay.add(ep, snapshot=3) is True
    assert replay.add(ep, snapshot=4) is False
    assert replay.sizes()["online_episodes"] == 1 and replay.snapshot == 4
    with pytest.raises(ValueError, match="shape"):
        replay.add(synthetic_episode(5, obs_spec={"state": ((3,), "float32")}))
    with pytest.raises(ValueError, match="dtype"):
        replay.add(synthetic_episode(5, obs_spec={"state": ((4,), "complex64")}))
    demo = synthetic_episode(5, obs_spec={"state": ((4,), "float64")}, source="offline")
    replay.add(demo)  # float64 demos are stored as the replay's float32
    assert replay.offline.obs["state"].dtype == np.float32
    b = replay.sample_chunks(16)
    assert b.obs["state"].dtype == np.float32 and b.offline.sum() == 8
    np.testing.assert_allclose(b.obs["state"][0], demo.observations["state"][b.step[0]], rtol=1e-6)


def test_reward_schemes():
    succ, fail = synthetic_episode(4, outcome="success"), synthetic_episode(4, outcome="failure")
    timeout, aborted = synthetic_episode(4, outcome="timeout"), synthetic_episode(4, outcome="aborted")
    succ.columns["reward"][:] = 0.5
    assert assign_rewards(succ, "env").tolist() == [0.5] * 4
    assert assign_rewards(succ, "sparse").tolist() == [0, 0, 0, 1]
    assert assign_rewards(fail, "sparse").tolist() == [0, 0, 0, 0]
    assert assign_rewards(succ, "aloe", c_fail=50).tolist() == [-1, -1, -1, 0]
    assert assign_rewards(fail, "aloe", c_fail=50).tolist() == [-1, -1, -1, -50]
    assert assign_rewards(timeout, "aloe", c_fail=50).tolist() == [-1, -1, -1, -50]
    assert assign_rewards(aborted, "aloe", c_fail=50).tolist() == [-1, -1, -1, -1]
    with pytest.raises(ValueError, match="unknown reward scheme"):
        assign_rewards(succ, "dense")
    relabelled = with_rewards(succ, "sparse")
    assert succ.columns["reward"].tolist() == [0.5] * 4 and relabelled.columns["reward"][-1] == 1


def test_replay_applies_reward_scheme_on_add():
    replay = Replay(chunk_len=2, gamma=0.5, seed=7, reward="aloe", c_fail=10.0)
    replay.add(synthetic_episode(3, outcome="failure"))
    b = replay.sample_chunks(200)
    by_step = {int(t): float(r) for t, r in zip(b.step, b.chunk_reward, strict=True)}
    assert by_step == {0: -1.5, 1: -1 + 0.5 * -10, 2: -10.0}
    assert replay.sample_episodes(1).episodes[0].columns["reward"].tolist() == [-1, -1, -10]


def test_sample_episodes_recent_and_fresh():
    replay = Replay(chunk_len=2, gamma=0.9, seed=8, recent_episodes=4)
    eps = [synthetic_episode(3, seed=i) for i in range(6)]
    for snap, ep in zip([2, 5, 7, 8, 10, 11], eps, strict=True):
        replay.add(ep, snapshot=snap)
    replay.add(synthetic_episode(3, source="offline"), snapshot=12)  # offline is never on-policy
    b = replay.sample_episodes(3)
    assert [e.episode_id for e in b.episodes] == [e.episode_id for e in eps[3:]] and b.snapshots == [
        8,
        10,
        11,
    ]
    assert b.snapshot == 12 and b.steps == 9
    b = replay.sample_episodes(10, max_staleness=3)  # snapshot >= 12 - 3
    assert b.snapshots == [10, 11] and b.notes
    assert replay.sample_episodes(10, since_snapshot=8).snapshots == [10, 11]
    assert replay.sample_episodes(10).snapshots == [7, 8, 10, 11]  # only the last 4 are kept whole


def test_from_config():
    cfg = ReplayConfig(gamma=0.8, offline_fraction=0.25, capacity=500, robot_alpha=2.0, reward="sparse")
    replay = Replay.from_config(cfg, chunk_len=5, seed=0)
    assert (replay.chunk_len, replay.gamma, replay.offline_fraction, replay.online.capacity) == (
        5,
        0.8,
        0.25,
        500,
    )
    assert replay.robot_alpha == 2.0 and replay.reward == "sparse"


def test_relabel_recomputes_rewards_in_place():
    import dataclasses

    replay = Replay(chunk_len=2, gamma=0.5, seed=7, reward="aloe", c_fail=10.0)
    ep = synthetic_episode(3, outcome="failure")
    replay.add(ep)
    assert replay.relabel(dataclasses.replace(ep, outcome="success", labelled_by="human"))
    b = replay.sample_chunks(200)
    by_step = {int(t): float(r) for t, r in zip(b.step, b.chunk_reward, strict=True)}
    assert by_step == {0: -1.5, 1: -1.0, 2: 0.0}  # success: no failure penalty, 0 on the last step
    assert not replay.relabel(synthetic_episode(3, episode_id="unknown"))


def test_aloe_failure_and_timeout_end_the_episode_and_do_not_bootstrap():
    """ALOE eq. 14: a failure (a timeout counts as one) is terminal: its last chunk carries -C_fail and no
    bootstrap, however the robot flagged the end (a time limit reports truncated)."""
    for outcome in ("failure", "timeout"):
        ep = synthetic_episode(5, outcome=outcome, terminated=False, truncated=True)
        scored = with_rewards(ep, "aloe", c_fail=20.0)
        assert scored.terminated and not scored.truncated and not ep.terminated  # the input is unchanged
        replay = Replay(chunk_len=3, gamma=0.9, seed=1, reward="aloe", c_fail=20.0)
        replay.add(ep)
        b = replay.sample_chunks(300)
        reaches_end = b.step >= 2
        assert b.done[reaches_end].all() and not b.done[~reaches_end].any()
    aborted = with_rewards(synthetic_episode(5, outcome="aborted", truncated=True), "aloe")
    assert not aborted.terminated and aborted.truncated  # no task label: still bootstraps
    env = with_rewards(synthetic_episode(5, outcome="timeout", truncated=True), "env")
    assert not env.terminated and env.truncated  # the env's own flags under the env scheme


def test_relabel_that_changes_the_terminal_flag_reaches_the_sampled_chunks():
    import dataclasses

    replay = Replay(chunk_len=2, gamma=0.5, seed=3, reward="sparse")
    ep = synthetic_episode(4, outcome="timeout", terminated=False, truncated=True)
    replay.add(ep)
    assert not replay.sample_chunks(100).done.any()  # a timeout bootstraps under the sparse scheme
    assert replay.relabel(dataclasses.replace(ep, outcome="success", labelled_by="human"))
    b = replay.sample_chunks(200)
    assert b.done[b.step >= 2].all() and not b.done[b.step < 2].any()


@pytest.mark.parametrize("terminated", [True, False])
def test_chunks_carry_the_observed_return_of_complete_episodes(terminated):
    """``returns`` = sum_k gamma^k r_{t+k} to the end (rewards 1..5, gamma 0.9), NaN for an episode that was
    cut off (its return is not observed); a relabel recomputes it."""
    replay = Replay(chunk_len=3, gamma=0.9, seed=2)
    replay.add(five_step(terminated))
    b = replay.sample_chunks(300)
    b.validate()
    by_hand = {t: sum(0.9**k * (t + k + 1) for k in range(5 - t)) for t in range(5)}
    for t, g in zip(b.step.tolist(), b.returns.tolist(), strict=True):
        assert (g == pytest.approx(by_hand[t], rel=1e-6)) if terminated else np.isnan(g)


def test_relabelled_returns_follow_the_new_rewards():
    import dataclasses

    replay = Replay(chunk_len=2, gamma=0.5, seed=4, reward="aloe", c_fail=10.0)
    ep = synthetic_episode(3, outcome="failure")
    replay.add(ep)
    b = replay.sample_chunks(100)
    assert {int(t): float(g) for t, g in zip(b.step, b.returns, strict=True)} == {0: -4.0, 1: -6.0, 2: -10.0}
    replay.relabel(dataclasses.replace(ep, outcome="success"))
    b = replay.sample_chunks(100)
    assert {int(t): float(g) for t, g in zip(b.step, b.returns, strict=True)} == {0: -1.5, 1: -1.0, 2: 0.0}


def test_segments_are_a_numbered_feed_under_the_reward_scheme_and_never_replay_rows():
    replay = Replay(chunk_len=2, gamma=0.9, seed=8, recent_episodes=3, reward="aloe", c_fail=20.0)
    pieces = [synthetic_episode(4, seed=i) for i in range(4)]
    for piece in pieces:
        piece.outcome = "aborted"  # a piece of a running episode has no label yet
        replay.add_segment(piece)
    assert replay.sizes()["online_rows"] == 0 and replay.sizes()["snapshot"] == 0  # not in the replay
    b = replay.sample_segments()
    assert [e.episode_id for e in b.episodes] == [p.episode_id for p in pieces[1:]]  # the last 3 are kept
    assert b.snapshots == [2, 3, 4] and b.snapshot == 4
    assert all((e.columns["reward"] == -1.0).all() for e in b.episodes)  # aloe: -1 per step, no -C_fail
    assert replay.sample_segments(since=3).snapshots == [4] and replay.sample_episodes(10).episodes == []


def test_recent_episodes_stay_in_snapshot_order_when_older_ones_arrive_later():
    """A data server refilling after a restart adds stored episodes newest first while new ones arrive."""
    replay = Replay(chunk_len=2, gamma=0.9, recent_episodes=3)
    for snapshot in (10, 14, 12, 11, 5):  # 11 pushes out 10; 5 is older than every episode kept
        replay.add(synthetic_episode(3, episode_id=f"ep-{snapshot}"), snapshot)
    batch = replay.sample_episodes(10)
    assert batch.snapshots == [11, 12, 14] and [e.episode_id for e in batch.episodes] == [
        "ep-11",
        "ep-12",
        "ep-14",
    ]
    assert replay.sizes()["online_episodes"] == 5  # the replay's rows keep them all
