"""Learner checkpoints on object storage (``learner_storage: s3://...``), against a real S3 API (moto's
server): Ray Train uploads the learner's checkpoints through pyarrow's S3 filesystem, the learner's own
listing finds them there, a restarted learner resumes from the newest, and the policy export reads it."""

from __future__ import annotations

import sys

import ray
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from fleetrl.algorithms.base import PolicySpec
from fleetrl.models.export import load_checkpoint
from fleetrl.models.flow import FlowChunkConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots.protocol import ArraySpec
from fleetrl.testing.s3 import local_s3
from fleetrl.workers.learning.algorithm_set import AlgorithmSet
from fleetrl.workers.learning.checkpoints import Checkpoints, newest_readable
from fleetrl.workers.learning.paths import learner_checkpoint_root, read_bytes, saved_checkpoints
from fleetrl.workers.locations import filesystem, join

SPEC, ACT = {"state": ArraySpec((3,))}, ArraySpec((2,), "float32", -1.0, 1.0)


def learner_checkpoints(root: str) -> Checkpoints:
    policy = build_policy(FlowChunkConfig(hidden=(8,), flow_steps=2), SPEC, ACT, 2)
    algorithms = AlgorithmSet(policy, PolicySpec(SPEC, ACT, 2, 0.99), "flow_chunk", torch.device("cpu"))
    algorithms.activate("bc", {"batch_size": 4}, 0)
    return Checkpoints(root, "t", policy, algorithms, torch.device("cpu"))


def checkpointing_loop(config: dict) -> None:
    """A learner's checkpointing on a Ray Train worker: two checkpoints, saved through Ray Train."""
    checkpoints = learner_checkpoints(config["root"])
    for step in (5, 10):
        checkpoints.save(step, step // 5, wait=True)


def test_learner_checkpoints_go_to_s3_and_a_restart_resumes_from_there(ray_session):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the loop travels to the worker
    with local_s3() as s3:
        storage = s3.url("learners")
        root = learner_checkpoint_root(storage, "t")
        fs, path = filesystem(join(storage, "ray_train"))  # what Learner._fit hands Ray Train
        TorchTrainer(
            checkpointing_loop, train_loop_config={"root": root},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="learner-t", storage_path=path, storage_filesystem=fs),
        ).fit()  # fmt: skip
        saved = saved_checkpoints(root)
        assert len(saved) == 2 and all(
            loc.startswith("s3://fleetrl/learners/ray_train/learner-t/checkpoint_") for loc in saved
        )
        assert sum(k.endswith("/learner.pt") for k in s3.keys("learners/ray_train/learner-t/")) == 2
        location, newest = newest_readable(saved, "cpu", "test")
        assert newest["step"] == 10 and newest["version"] == 2 and location == saved[-1]
        # a learner restarted anywhere (no registered checkpoint at hand) resumes from the bucket
        resumed = learner_checkpoints(root).restore(None)
        assert resumed is not None and resumed.step == 10 and resumed.algorithm == "bc"
        assert load_checkpoint(read_bytes(location))["version"] == 2  # what `fleetrl policy export` reads
