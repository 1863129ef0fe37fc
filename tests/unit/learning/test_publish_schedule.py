"""PublishSchedule: every N updates; an off-policy learner at most once per interval, a deferred version
published later rather than dropped; an on-policy learner whenever one is due."""

from __future__ import annotations

from fleetrl.workers.learning.publishing import PublishSchedule


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_off_policy_versions_wait_for_the_interval_and_are_not_dropped():
    clock = Clock()
    schedule = PublishSchedule(every=10, min_interval_s=0.25, clock=clock)
    schedule.published()  # the initial version
    for step in range(1, 10):
        schedule.updated(step)
        assert not schedule.publish_now(off_policy=True)  # not due before 10 updates
    clock.t += 0.05
    schedule.updated(10)
    assert schedule.due and not schedule.publish_now(off_policy=True)  # due, but 0.05 s after the last
    clock.t += 0.1
    schedule.updated(11)
    assert not schedule.publish_now(off_policy=True)
    clock.t += 0.11  # over 0.25 s since the last publish: the deferred version goes out now
    schedule.updated(12)
    assert schedule.publish_now(off_policy=True)
    schedule.published()
    schedule.updated(13)
    assert not schedule.due and not schedule.publish_now(off_policy=True)


def test_on_policy_versions_go_out_as_soon_as_they_are_due():
    clock = Clock()
    schedule = PublishSchedule(every=1, min_interval_s=10.0, clock=clock)
    schedule.published()
    for step in range(1, 4):
        schedule.updated(step)
        assert schedule.publish_now(off_policy=False)  # PPO: its next data must come from these weights
        schedule.published()
