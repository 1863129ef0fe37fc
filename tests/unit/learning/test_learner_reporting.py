"""The learner's weight versions (a fresh start keeps v0, a restart continues above what the fleet saw),
the metric names and TensorBoard tags it reports, and its demo-replay status."""

from __future__ import annotations

import numpy as np
import pytest
from learner_stand_ins import Method, resolve, small_policy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fleetrl.algorithms.demo_replay import DemoReplayConfig
from fleetrl.workers.learning.demo_feed import DemoReplay
from fleetrl.workers.learning.publishing import Publisher, first_version
from fleetrl.workers.learning.reporting import Reporter, Scalars


@pytest.mark.parametrize(
    ("resumed", "board", "first"),
    [(None, -1, 0), (None, 4, 5), (7, -1, 8), (7, 3, 8), (2, 9, 10), (0, -1, 1)],
)
def test_first_version(resumed, board, first):
    assert first_version(resumed, board) == first


class Board:
    def __init__(self, newest: int | None):
        self.published: list[tuple[str, int, dict]] = []
        self.latest = Method(lambda task: None if newest is None else (newest, [], 0.0))
        self.publish = Method(lambda task, version, state: self.published.append((task, version, state)))


@pytest.mark.parametrize(("resumed", "newest", "versions"), [(None, None, [0, 1, 2]), (4, 6, [7, 8, 9])])
def test_publisher_versions_only_grow(resumed, newest, versions):
    board, policy = Board(newest), small_policy()
    publisher = Publisher(board, "reach", policy, resumed, get=resolve)
    assert publisher.version == (resumed or 0)
    assert [publisher.publish(initial=True), publisher.publish(), publisher.publish()] == versions
    assert [v for _, v, _ in board.published] == versions
    task, _, state = board.published[0]
    assert task == "reach" and state.keys() == policy.state_dict().keys()
    assert all(isinstance(v, np.ndarray) for v in state.values())


def test_metric_names_and_tensorboard_tags(tmp_path):
    server = type("Server", (), {})()
    server.ingest = Method(lambda events, gauges: None)
    scalars = Scalars("reach", server, str(tmp_path))
    scalars.count_step("awr")
    scalars.count_step("awr")
    rollout = {"success_rate": 0.5, "mean_return": 1.5, "episodes": 3}
    scalars.log(7, 3, "awr", {"critic_loss": 0.25, "actor_loss": float("nan")}, 2.0, rollout)

    events, gauges = server.ingest.calls[0]
    assert events == [("learner_steps_total", ("reach", "awr"), 2.0)]  # two steps, summed in the flush
    assert gauges == [
        ("learner_updates_per_second", ("reach",), 2.0),
        ("learner_loss", ("reach", "critic_loss"), 0.25),  # a non-finite loss is not exported
    ]
    board = EventAccumulator(str(tmp_path))
    board.Reload()
    tags = board.Tags()["scalars"]
    assert sorted(tags) == sorted(
        [
            "awr/critic_loss",
            "awr/actor_loss",
            "learner/version",
            "learner/updates_per_s",
            "rollout/success_rate",
            "rollout/mean_return",
        ]
    )
    (point,) = board.Scalars("learner/version")
    assert (point.step, point.value) == (7, 3.0)


def test_reporter_records_losses_and_update_time():
    reporter = Reporter("reach", 1.0, data=None, control=None, metrics_server=None, tensorboard_dir=None)
    reporter.record("bc", {"bc_loss": np.float32(0.5)}, 0.25, 0.125)
    reporter.record("bc", {"bc_loss": 0.75}, 0.5, 0.25)
    assert reporter.losses == {"bc_loss": 0.75} and reporter.update_s == 0.75
    assert reporter.update_cpu_s == 0.375
    assert reporter.scalars.buffer.drain()[0] == [
        ("learner_steps_total", ("reach", "bc"), 2.0)
    ]  # summed per flush


def test_demo_replay_status():
    def status(weight: float, step: int) -> str:
        cfg = DemoReplayConfig(weight=weight)
        return DemoReplay(None, "reach", cfg, 2, offline_steps=10, family="flow_chunk").status(step)

    assert status(0.0, 50) == "off"
    assert status(0.1, 5) == "starts after the offline pretraining steps"
    assert status(0.1, 50) == "waiting for demos"
