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
    from fleetrl.workers.learning.checkpoints import newest_readable
    from fleetrl.workers.weights import to_numpy_state

    found = newest_readable(saved_checkpoints(root), "cpu", task.name)
    if found is None:
        return None
    path, saved = found
    problem = policy_mismatch(saved["policy"], task)
    if problem is not None:
        log.error(
            "%s: not serving checkpoint %s: it holds a policy of another shape than the task's policy config "
            "builds (%s). Go back to that config, or move %s aside to train from scratch.",
            task.name, path, problem, root,
        )  # fmt: skip
        return None
    served = ray.get(
        weights.publish.remote(task.name, int(saved["version"]), to_numpy_state(saved["policy"]))
    )
    log.info("%s: serving version %d from %s until its learner publishes", task.name, served, path)
    return served


def policy_mismatch(state: dict[str, Any], task: TaskConfig) -> str | None:
    """Why ``state`` does not load into the policy ``task``'s config builds (None: it loads): the same
    check as the learner's restore and each replica's ``load_weights``."""
    from fleetrl.models.policies import build_policy

    policy = build_policy(task.policy, task.observation_spec, task.action_spec, task.chunk_len)
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or reshaped weights
        return " ".join(str(exc).split())[:300]
    return None


def serve_newest_checkpoint(weights: Any, task: TaskConfig, root: str) -> ray.ObjectRef | None:
    """Start ``publish_newest_checkpoint`` when ``root`` holds checkpoints (a resumed task); not waited for."""
    if not saved_checkpoints(root):
        return None
    return publish_newest_checkpoint.remote(weights, task, str(root))
