"""The torch backend's kept versions: what a replica serves per row (pins), what it holds for a canary,
rollback or evaluation (``hold``), and the policy's mode for evaluation rows (``deterministic``)."""

from __future__ import annotations

import numpy as np

from fleetrl.models.configs import GaussianMLPConfig
from fleetrl.testing.threshold_robot import THRESHOLD, ThresholdRobot, broken_weights, good_weights
from fleetrl.workers.inference.backends.torch_backend import TorchBackend


def backend(keep: int = 1) -> TorchBackend:
    spec = ThresholdRobot.observation_spec
    return TorchBackend(GaussianMLPConfig(), spec, ThresholdRobot.action_spec, 1, keep_versions=keep)


def batch(n: int) -> dict[str, np.ndarray]:
    return {"state": np.tile(np.array([[1.0, 0.0]], np.float32), (n, 1))}


def test_held_versions_survive_newer_ones_and_each_row_gets_the_version_it_asks_for():
    b = backend(keep=1)
    v0 = b.served_state()
    b.load_weights(good_weights(v0), 1)
    assert b.hold({1: None}) == [1]
    for v in (2, 3, 4):  # a learner publishing on: only the newest and the held one stay
        b.load_weights(broken_weights(v0), v)
    assert sorted(b.policies) == [1, 4]
    actions, _, versions = b.infer(batch(4), np.array([1, -1, 1, 2]))
    assert versions.tolist() == [1, 4, 1, 4]  # 2 is not kept: the newest, and the row says so
    assert (actions[[0, 2], 0, 0] > THRESHOLD).all()


def test_hold_rebuilds_the_initial_weights_and_releases_what_it_no_longer_names():
    b = backend(keep=1)
    v0 = b.served_state()
    b.load_weights(good_weights(v0), 1)
    b.load_weights(good_weights(v0), 2)
    assert sorted(b.policies) == [2]
    assert b.hold({0: None, 1: good_weights(v0)}) == [0, 1, 2]
    for key, value in b.policies[0].state_dict().items():  # version 0 rebuilt exactly as it started
        np.testing.assert_array_equal(value.numpy(), v0[key])
    assert b.hold({}) == [2]


def test_deterministic_rows_take_the_mode_and_sampled_rows_do_not():
    b = backend()
    b.load_weights(broken_weights(b.served_state()), 1)  # mean 0, std 1
    rows = np.array([True, False] * 32)
    actions, _, _ = b.infer(batch(64), None, rows)
    assert np.all(actions[rows] == 0.0)
    assert np.std(actions[~rows]) > 0.3
