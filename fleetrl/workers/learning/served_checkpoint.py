"""A resumed task serves its trained weights from its first seconds. Its learner republishes them too, but
only once Ray Train has started its worker (tens of seconds on a small machine, after REST answers): until
then the replicas would serve version 0, the untrained initial weights, and a restarted fleet would act
randomly and an evaluation started then would measure nothing. So when a task with learner checkpoints
starts, a short Ray task publishes the newest readable checkpoint's policy under its version; the learner's
own first publish then follows as the next version (``publishing.first_version``)."""

from __future__ import annotations

import logging
from typing import Any

import ray

from fleetrl.workers.learning.paths import saved_checkpoints

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
def publish_newest_checkpoint(weights: Any, task: str, root: str) -> int | None:
    """Publish the policy of the newest readable checkpoint under ``root`` as its version; None if none."""
    from fleetrl.workers.learning.checkpoints import newest_readable
    from fleetrl.workers.weights import to_numpy_state

    found = newest_readable(saved_checkpoints(root), "cpu", task)
    if found is None:
        return None
    path, saved = found
    served = ray.get(weights.publish.remote(task, int(saved["version"]), to_numpy_state(saved["policy"])))
    log.info("%s: serving version %d from %s until its learner publishes", task, served, path)
    return served


def serve_newest_checkpoint(weights: Any, task: str, root: str) -> ray.ObjectRef | None:
    """Start ``publish_newest_checkpoint`` when ``root`` holds checkpoints (a resumed task); not waited for."""
    if not saved_checkpoints(root):
        return None
    return publish_newest_checkpoint.remote(weights, task, str(root))
