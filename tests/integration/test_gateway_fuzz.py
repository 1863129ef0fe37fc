"""The gateway under fuzzed robot frames (well-typed, hostile content) over its real ZeroMQ socket: no
frame reaches the catch-all, the gateway is not restarted, and everything it acked is stored valid and
finite, so replay still samples clean batches. A task of its own keeps the fuzzed episodes away from the
other tests' data."""

from __future__ import annotations

from fleetrl.testing.gateway_fuzz import fuzz
from tests.conftest import ADMIN_TOKEN, reacher_task


def test_fuzzed_frames_are_refused_or_served_and_nothing_bad_is_stored(platform, api):
    r = api.post("/v1/tasks", json=reacher_task("fuzz"), timeout=120)
    assert r.status_code == 201, r.text
    report = fuzz(platform, frames=900, seed=3, admin_token=ADMIN_TOKEN, task="fuzz")
    assert report["internal_refusals"] == 0 and not report["gateway_restarted"], report
    replies = report["replies"]
    # the fuzzer reached the deep paths: actions served, episodes acked, and refusals of several kinds
    assert replies.get("action", 0) > 0 and replies.get("ack", 0) > 0, replies
    assert {"bad_message", "bad_observation", "out_of_order"} <= set(replies), replies
    assert report["episodes_stored"] > 0 and report["bad_episodes"] == [], report
    assert report["replay_samples"] == 64 and report["replay_finite"], report
