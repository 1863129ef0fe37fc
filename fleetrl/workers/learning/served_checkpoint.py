"""A resumed task serves its trained weights from its first seconds. Its learner republishes them too, but
only once Ray Train has started its worker (tens of seconds on a small machine, after REST answers): until
then the replicas would serve version 0, the untrained initial weights, and a restarted fleet would act
randomly and an evaluation started then would measure nothing. So when a task with learner checkpoints
starts, a short Ray task publishes the newest readable checkpoint's policy under its version; the learner's
own first publish then follows as the next version (``publishing.first_version``). A checkpoint whose policy
no longer fits the task's policy config (the config changed since it was saved) is not served: the replicas
could not load it, and the learner refuses it with the remedy (``checkpoints.PolicyMismatch``)."""

from __future__ import annotations

import logging
from typing import Any

import ray

from fleetrl.workers.learning.paths import saved_checkpoints
from fleetrl.workers.task import TaskConfig

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
def publish_newest_checkpoint(weights: Any, task: TaskConfig, root: str) -> int | None:
    """Publish the policy of the newest readable checkpoint under ``root`` as its version; None if there is
    none, or if its policy does not fit the one ``task``'s config builds (logged with the remedy)."""
    from fleetrl.models.policies import build_policy
    from fleetrl.workers.learning.checkpoints import PolicyMismatch, load_policy, newest_readable
    from fleetrl.workers.weights import to_numpy_state

    found = newest_readable(saved_checkpoints(root), "cpu", task.name)
    if found is None:
        return None
    path, saved = found
    policy = build_policy(task.policy, task.observation_spec, task.action_spec, task.chunk_len)
    try:  # the check the learner's restore makes: replicas could not load what it refuses
        load_policy(policy, saved["policy"], path, root, task.name)
    except PolicyMismatch as exc:
        log.error("%s Not served.", exc)
        return None
    served = ray.get(
        weights.publish.remote(task.name, int(saved["version"]), to_numpy_state(saved["policy"]))
    )
    log.info("%s: serving version %d from %s until its learner publishes", task.name, served, path)
    return served


def serve_newest_checkpoint(weights: Any, task: TaskConfig, root: str) -> ray.ObjectRef | None:
    """Start ``publish_newest_checkpoint`` when ``root`` holds checkpoints (a resumed task); not waited for."""
    if not saved_checkpoints(root):
        return None
    return publish_newest_checkpoint.remote(weights, task, str(root))
