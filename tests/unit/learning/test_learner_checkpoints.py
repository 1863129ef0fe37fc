"""Checkpoint save -> restore of a real policy and its algorithms, the file layout old checkpoints have, the
newest readable checkpoint winning, and the algorithm set keeping a switched-away algorithm's state."""

from __future__ import annotations

import pytest
import torch
from learner_stand_ins import AWR_CONFIG, FAMILY, SPEC, chunk_batch, small_policy

from fleetrl.workers.learning.algorithm_set import AlgorithmSet
from fleetrl.workers.learning.checkpoints import (
    CHECKPOINT_FILE,
    Checkpoints,
    PolicyMismatch,
    Resumed,
    checkpoint_dir_name,
)

torch.set_num_threads(1)
CPU = torch.device("cpu")


def trained_learner(root, seed: int = 0) -> tuple[torch.nn.Module, AlgorithmSet, Checkpoints]:
    """A policy trained by two AWR steps, then switched to BC for one: both algorithms have state."""
    policy = small_policy(seed)
    algorithms = AlgorithmSet(policy, SPEC, FAMILY, CPU)
    algorithms.activate("awr", AWR_CONFIG, version=0)
    for i in range(2):
        algorithms.current.update(chunk_batch(seed=i))
    algorithms.activate("bc", {"batch_size": 8}, version=1)
    algorithms.current.update(chunk_batch(seed=5))
    return policy, algorithms, Checkpoints(str(root), "reach", policy, algorithms, CPU)


def fresh_learner(root, seed: int = 1) -> tuple[torch.nn.Module, AlgorithmSet, Checkpoints]:
    policy = small_policy(seed)
    algorithms = AlgorithmSet(policy, SPEC, FAMILY, CPU)
    return policy, algorithms, Checkpoints(str(root), "reach", policy, algorithms, CPU)


def assert_same_tensors(a, b) -> None:
    """Equal nested state (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tensors(x, y)
    else:
        assert a == b


def test_save_restore_round_trip_of_policy_and_every_algorithm(tmp_path):
    policy, algorithms, checkpoints = trained_learner(tmp_path)
    checkpoints.write(tmp_path / checkpoint_dir_name(7), step=7, version=3)

    policy2, algorithms2, checkpoints2 = fresh_learner(tmp_path)
    assert not torch.equal(next(policy2.parameters()), next(policy.parameters()))
    resumed = checkpoints2.restore(registered=None)

    assert resumed == Resumed(7, 3, "bc", algorithms.current.config.model_dump())
    assert checkpoints2.restored_step == 7
    assert_same_tensors(policy2.state_dict(), policy.state_dict())
    awr = algorithms2.activate("awr", AWR_CONFIG, version=4)  # state from the checkpoint, not new critics
    assert awr.steps == 2
    assert_same_tensors(awr.critic.state_dict(), algorithms.kept["awr"].critic.state_dict())
    assert_same_tensors(
        awr.critic_optim.state_dict()["state"], algorithms.kept["awr"].critic_optim.state_dict()["state"]
    )
    bc = algorithms2.activate("bc", {"batch_size": 8}, version=4)
    assert bc.optim.state_dict()["state"]  # BC's Adam moments came back too
    assert_same_tensors(bc.optim.state_dict()["state"], algorithms.kept["bc"].optim.state_dict()["state"])


def test_checkpoint_file_layout_is_the_one_old_checkpoints_have(tmp_path):
    policy, algorithms, checkpoints = trained_learner(tmp_path)
    path = checkpoints.write(tmp_path / checkpoint_dir_name(4), step=4, version=2)
    assert path.name == CHECKPOINT_FILE == "learner.pt" and path.parent.name.startswith(
        "checkpoint_0000000004_"
    )
    saved = torch.load(path, weights_only=False)
    assert list(saved) == ["policy", "step", "version", "algorithm", "algorithm_config", "algorithms"]
    assert (saved["step"], saved["version"], saved["algorithm"]) == (4, 2, "bc")
    assert set(saved["algorithms"]) == {"awr", "bc"}
    assert set(saved["algorithms"]["awr"]) == {"config", "state"}
    assert saved["algorithms"]["awr"]["config"]["batch_size"] == 8

    # a checkpoint written as a learner always wrote them (a plain dict) restores the same way
    old = {
        "policy": policy.state_dict(),
        "step": 11,
        "version": 6,
        "algorithm": "awr",
        "algorithm_config": saved["algorithms"]["awr"]["config"],
        "algorithms": {
            "awr": {
                "config": saved["algorithms"]["awr"]["config"],
                "state": algorithms.kept["awr"].state_dict(),
            }
        },
    }
    old_dir = tmp_path / "old" / "checkpoint_0000000011_1700000000000000000"
    old_dir.mkdir(parents=True)
    torch.save(old, old_dir / "learner.pt")
    policy2, algorithms2, checkpoints2 = fresh_learner(tmp_path / "old")
    resumed = checkpoints2.restore(registered=None)
    assert (resumed.step, resumed.version, resumed.algorithm) == (11, 6, "awr")
    assert_same_tensors(policy2.state_dict(), policy.state_dict())
    assert algorithms2.activate("awr", resumed.algorithm_config, version=7).steps == 2


def test_newest_readable_checkpoint_wins_registered_one_included(tmp_path):
    policy, algorithms, checkpoints = trained_learner(tmp_path / "run")
    checkpoints.write(tmp_path / "run" / "checkpoint_0000000005_1", step=5, version=2)
    checkpoints.write(tmp_path / "run" / "checkpoint_0000000005_2", step=5, version=3)  # same step, later
    torn = checkpoints.write(tmp_path / "run" / "checkpoint_0000000009_1", step=9, version=4)
    torn.write_bytes(torn.read_bytes()[:1000])  # newest, cut short (a crash mid-write): skipped
    (tmp_path / "run" / "checkpoint_0000000010_1").mkdir()  # a folder without its file yet: skipped

    assert fresh_learner(tmp_path / "run")[2].restore(registered=None).version == 3

    registered = tmp_path / "elsewhere" / "checkpoint_0000000008_1"  # Ray Train's, outside the root
    checkpoints.write(registered, step=8, version=4)
    resumed = fresh_learner(tmp_path / "run")[2].restore(registered=registered)
    assert (resumed.step, resumed.version) == (8, 4)


def test_no_checkpoint_restores_nothing(tmp_path):
    policy, algorithms, checkpoints = fresh_learner(tmp_path)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    assert checkpoints.restore(registered=None) is None
    assert checkpoints.restored_step is None
    assert_same_tensors(policy.state_dict(), before)
    assert algorithms.activate("awr", AWR_CONFIG, version=0).steps == 0


def test_switching_back_resumes_the_kept_algorithm_and_all_hear_of_new_versions(tmp_path):
    policy, algorithms, _ = trained_learner(tmp_path)
    awr_before = algorithms.kept["awr"]
    critic = {k: v.clone() for k, v in awr_before.critic.state_dict().items()}
    published = []
    awr_before.published = published.append  # the kept (not current) algorithm is told too
    algorithms.published(5)
    assert published == [5]

    awr = algorithms.activate("awr", AWR_CONFIG, version=6)
    assert awr is not awr_before and algorithms.current is awr and awr.steps == 2
    assert_same_tensors(awr.critic.state_dict(), critic)
    assert algorithms.names() == ["awr", "bc"]


def test_a_checkpoint_of_another_policy_shape_is_refused_naming_the_config_change(tmp_path):
    """A task whose policy config changed since its checkpoints were saved: the learner says so and what to do
    instead of a bare state-dict error."""
    _, _, checkpoints = trained_learner(tmp_path)
    checkpoints.write(tmp_path / checkpoint_dir_name(7), step=7, version=3)
    wider = small_policy(seed=1, hidden=(32,))
    algorithms = AlgorithmSet(wider, SPEC, FAMILY, CPU)
    with pytest.raises(PolicyMismatch, match=r"another shape .* the config changed .* move .* aside"):
        Checkpoints(str(tmp_path), "reach", wider, algorithms, CPU).restore(registered=None)
