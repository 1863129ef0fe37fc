"""The rollout rules (fleetrl/workers/gateway/rollout.py): which version an episode runs, canary verdicts,
evaluations and their intervals."""

from __future__ import annotations

import math

import pytest

from fleetrl.workers.gateway.rollout import NEWEST, Assignment, Evaluation, TaskRollout, wilson_interval
from fleetrl.workers.task import RolloutConfig

ROBOTS = ["r0", "r1", "r2", "r3"]


def canary(**cfg) -> TaskRollout:
    r = TaskRollout("t", RolloutConfig(mode="canary", canary_fraction=0.5, window_episodes=4, **cfg))
    r.saw_version(3)  # the fleet served version 3 when the gateway started: the first stable version
    r.held = r.wanted()
    return r


def run_trial(r: TaskRollout, canary_success: bool, stable_success: bool) -> dict:
    """Finish a trial: every robot runs episodes until the verdict; returns it."""
    for _ in range(10):
        for robot in ROBOTS:
            a = r.assign(robot, 0)
            won = canary_success if a.arm == "canary" else stable_success
            event = r.ended(robot, a, "success" if won else "failure", 1.0)
            if event is not None:
                return event["verdict"]
    raise AssertionError("no verdict")


def test_follow_mode_pins_nothing_and_canary_mode_runs_the_stable_version():
    follow = TaskRollout("t", RolloutConfig())
    follow.saw_version(5)
    assert follow.assign("r0", 0) == Assignment() and not follow.pins_rows
    r = canary()
    r.saw_version(4)  # a newer version is published: no trial yet, robots stay on stable
    assert r.stable == 3 and r.assign("r0", 0).version == 3 and r.pins_rows


def test_a_version_is_assigned_only_once_the_replicas_hold_it():
    r = TaskRollout("t", RolloutConfig(mode="canary"))
    r.saw_version(3)
    assert r.assign("r0", 0).version == NEWEST  # stable 3 not confirmed held yet
    r.held = (3,)
    assert r.assign("r0", 0).version == 3


def test_a_trial_splits_the_robots_and_promotes_a_candidate_that_holds_up():
    r = canary()
    r.saw_version(7)
    assert r.proposed_trial(ROBOTS) == (3, 7)
    assert r.wanted(r.proposed_trial(ROBOTS)) == (3, 7)
    r.held = (3, 7)
    trial = r.start_trial(3, 7, ROBOTS)
    assert len(trial.canary_robots) == 2
    versions = {robot: r.assign(robot, 0).version for robot in ROBOTS}
    assert sorted(versions.values()) == [3, 3, 7, 7]
    verdict = run_trial(r, canary_success=True, stable_success=True)
    assert verdict["decision"] == "promoted" and r.stable == 7 and r.trial is None
    assert verdict["episodes"]["canary"] >= 4 and verdict["episodes"]["stable"] >= 4


def test_a_worse_candidate_is_rolled_back_and_the_next_trial_waits_for_a_newer_version():
    r = canary()
    r.saw_version(8)
    r.held = (3, 8)
    r.start_trial(3, 8, ROBOTS)
    verdict = run_trial(r, canary_success=False, stable_success=True)
    assert verdict["decision"] == "rolled_back" and verdict["canary_success"] == 0.0
    assert r.stable == 3 and r.rejected == 8
    assert r.proposed_trial(ROBOTS) is None  # 8 was rejected: wait for something newer
    r.saw_version(9)
    assert r.proposed_trial(ROBOTS) == (3, 9)


def test_within_tolerance_promotes_and_beyond_it_rolls_back():
    r = canary(tolerance=0.3)
    r.saw_version(4)
    r.held = (3, 4)
    trial = r.start_trial(3, 4, ROBOTS)
    trial.counts = {"canary": [2, 3], "stable": [3, 3]}  # 0.67 vs 1.0 after the next episodes decide
    canary_robot = next(iter(trial.canary_robots))
    stable_robot = next(x for x in ROBOTS if x not in trial.canary_robots)
    r.ended(canary_robot, r.assign(canary_robot, 0), "success", 0.0)
    verdict = r.ended(stable_robot, r.assign(stable_robot, 0), "success", 0.0)["verdict"]
    assert verdict["decision"] == "promoted"  # 0.75 >= 1.0 - 0.3


def test_episodes_already_under_way_aborted_or_of_an_older_trial_count_nowhere():
    r = canary()
    r.saw_version(5)
    r.held = (3, 5)
    r.start_trial(3, 5, ROBOTS)
    assert r.assign("r0", step=12) == Assignment()  # joined mid-episode: unpinned, uncounted
    a = r.assign("r0", 0)
    r.ended("r0", a, "aborted", 0.0)
    r.ended("r0", Assignment(3, arm="stable", trial=4), "success", 0.0)  # a trial that is over
    assert all(n == 0 for _, n in r.trial.counts.values())


def test_a_pin_overrides_the_canary_and_stops_proposals():
    r = canary()
    r.pinned, r.held = 1, (1, 3)
    r.saw_version(6)
    assert r.assign("r2", 0).version == 1 and r.proposed_trial(ROBOTS) is None
    assert 1 in r.wanted()


def test_an_evaluation_takes_its_robots_episodes_then_ends_with_its_interval():
    r = TaskRollout("t", RolloutConfig())
    ev = Evaluation("t", version=2, episodes=3, deterministic=True, robots=frozenset({"r1"}))
    r.evaluations[ev.evaluation_id] = ev
    assert r.assign("r1", 0).version == NEWEST  # version 2 not held yet
    r.held = r.wanted()
    assert r.held == (2,)
    assert r.assign("r0", 0) == Assignment()  # not one of its robots
    a = r.assign("r1", 0)
    assert (a.version, a.deterministic, a.evaluation) == (2, True, ev.evaluation_id)
    assert a.meta() == {"evaluation": ev.evaluation_id, "deterministic": True}
    assert r.ended("r1", a, "aborted", 0.0) is None  # run again: the robot left, not the policy's fault
    events = [r.ended("r1", r.assign("r1", 0), outcome, ret) for outcome, ret in
              (("success", 1.0), ("failure", 0.0), ("success", 1.0))]  # fmt: skip
    summary = events[-1]["evaluation"]
    assert events[:2] == [None, None] and not r.evaluations and r.assign("r1", 0) == Assignment()
    assert summary["status"] == "done" and summary["episodes_done"] == 3
    assert summary["success_rate"] == pytest.approx(2 / 3)
    lo, hi = summary["success_ci95"]
    assert lo < 2 / 3 < hi and (lo, hi) == pytest.approx(wilson_interval(2, 3))
    assert summary["return_mean"] == pytest.approx(2 / 3) and summary["per_robot"]["r1"]["successes"] == 2


def test_an_exclusive_evaluations_robots_run_only_evaluation_episodes_and_extras_count_nowhere():
    r = TaskRollout("t", RolloutConfig())
    ev = Evaluation(
        "t", version=2, episodes=1, deterministic=True, robots=frozenset({"r1", "r2"}), exclusive=True
    )
    r.evaluations[ev.evaluation_id] = ev
    r.held = r.wanted()
    counted, extra = r.assign("r1", 0), r.assign("r2", 0)  # its one episode is handed out: r2 runs an extra
    assert counted.evaluation == ev.evaluation_id and (extra.version, extra.deterministic) == (2, True)
    assert (
        extra.evaluation == ev.extra_tag and extra.meta()["evaluation"] == ev.extra_tag
    )  # stored, not learned
    assert r.ended("r2", extra, "success", 1.0) is None and ev.results == []  # an extra counts nowhere
    assert r.ended("r1", counted, "failure", 0.0)["evaluation"]["success_rate"] == 0.0
    after = r.assign("r2", 0)  # done, but its robots stay evaluation-only until they leave
    assert after.evaluation == ev.extra_tag and after.meta() == {
        "evaluation": ev.extra_tag,
        "deterministic": False,
    }
    plain = Evaluation("t", version=2, episodes=1, deterministic=True, robots=frozenset({"r3", "r4"}))
    r.evaluations[plain.evaluation_id] = plain
    r.held = r.wanted()
    r.assign("r3", 0)
    assert r.assign("r4", 0) == Assignment()  # not exclusive: a robot beyond its episodes runs as usual


def test_wilson_interval_against_its_formula_and_edges():
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-3)  # the rule of three's neighbour
    lo, hi = wilson_interval(10, 20)
    z = 1.96
    half = z * math.sqrt(0.25 / 20 + z * z / 1600) / (1 + z * z / 20)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
    assert wilson_interval(0, 0) == (0.0, 1.0)
