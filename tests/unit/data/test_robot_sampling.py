"""workers/data/robot_sampling.py: robot codes, success windows and the dynamic-sampling weights."""

from __future__ import annotations

import pytest

from fleetrl.workers.data.robot_sampling import RobotSampling


def test_codes_follow_first_sight_and_names_map_back():
    s = RobotSampling(alpha=1.0, eps=0.05, window=3)
    assert [s.code(r) for r in ("b", "a", "b", "c")] == [0, 1, 0, 2]
    assert list(s.names) == ["b", "a", "c"]


def test_weights_follow_the_success_window():
    s = RobotSampling(alpha=2.0, eps=0.05, window=2)
    good, bad = s.code("good"), s.code("bad")
    for ok in (False, True, True):  # the window keeps the last two: good is at 100 %
        s.record(good, ok)
    s.record(bad, False)
    assert s.success_rates() == {"good": 1.0, "bad": 0.0}
    w = s.weight_array()
    assert w[good] == pytest.approx(0.05**2) and w[bad] == pytest.approx(1.05**2)
    rel = s.relative_weights([bad, good, bad])
    assert list(rel) == ["good", "bad"] and sum(rel.values()) == pytest.approx(1.0)
    assert rel["bad"] / rel["good"] == pytest.approx((1.05 / 0.05) ** 2)
    assert s.version == 4


def test_alpha_zero_is_uniform():
    s = RobotSampling(alpha=0.0, eps=0.05, window=5)
    a, b = s.code("a"), s.code("b")
    s.record(a, True)
    assert s.weight_array() is None
    assert s.relative_weights([a, b]) == {"a": 0.5, "b": 0.5}
