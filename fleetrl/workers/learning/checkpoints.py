"""The learner's checkpoints: the policy, every algorithm's state, the step and the weight version.

One ``learner.pt`` per checkpoint folder, reported to Ray Train, which copies it into the run folder
(``<root>/checkpoint_<step>_<time>/learner.pt``) and keeps the newest ``keep_checkpoints``. A Ray Train
worker restarted after a failure restores the newest readable one and continues from its step.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from torch import nn

from fleetrl.workers.learning.algorithm_set import AlgorithmSet
from fleetrl.workers.learning.paths import (
    CHECKPOINT_FILE,
    checkpoint_folder,
    exists,
    read_bytes,
    saved_checkpoints,
)
from fleetrl.workers.locations import is_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resumed:
    """Where a restored checkpoint left off: the loop continues from ``step`` with ``algorithm``."""

    step: int
    version: int
    algorithm: str
    algorithm_config: dict[str, Any]


def checkpoint_dir_name(step: int) -> str:
    """Folder names sort in report order: by step, then by report time."""
    return f"checkpoint_{step:010d}_{time.time_ns()}"


UNREADABLE = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)  # a damaged or partly written file


def newest_readable(
    locations: Iterable[str | Path], device: Any, what: str
) -> tuple[str, dict[str, Any]] | None:
    """The newest of ``locations`` (paths or object-store URLs; their folder names order them: step, then
    report time) that loads, with its location; a damaged one is logged and skipped. The learner resumes
    from it, and a starting task serves it."""
    for location in sorted({str(p) for p in locations}, key=checkpoint_folder, reverse=True):
        try:
            return location, torch.load(read_bytes(location), map_location=device, weights_only=False)
        except UNREADABLE as exc:
            log.warning("%s: unreadable checkpoint %s (%s)", what, location, exc)
    return None


def registered_checkpoint() -> Path | None:
    """The folder of the checkpoint Ray Train hands a (re)started worker, if any."""
    ckpt = ray.train.get_checkpoint()
    return Path(ckpt.path) if ckpt is not None else None


class PolicyMismatch(RuntimeError):
    """The newest checkpoint's policy does not fit the task's policy (its config changed since it was saved)."""


def load_policy(policy: nn.Module, state: dict[str, Any], location: str, root: str, who: str) -> None:
    """Load a checkpoint's policy weights into ``policy``; PolicyMismatch, naming the checkpoint and the
    remedy, when they do not fit it (missing, unexpected or reshaped weights: the policy config changed)."""
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise PolicyMismatch(
            f"{who}: checkpoint {location} holds a policy of another shape than the task's policy config "
            f"builds ({' '.join(str(exc).split())[:300]}): the config changed since it was saved. Go back to "
            f"that config, or move {root} aside to train this task from scratch."
        ) from exc


class Checkpoints:
    """``save`` the policy and ``algorithms`` through Ray Train; ``restore`` the newest into them."""

    def __init__(
        self,
        root: str,
        task: str,
        policy: nn.Module,
        algorithms: AlgorithmSet,
        device: torch.device,
        writes: bool = True,
    ):
        """``writes``: False for the workers of a multi-worker learner other than its leader (they report
        to Ray Train without a checkpoint: the leader's holds the same weights)."""
        self.root, self.task, self.policy, self.algorithms, self.device = (
            root,
            task,
            policy,
            algorithms,
            device,
        )
        self.writes = writes
        self.restored_step: int | None = None

    def save(self, step: int, version: int, wait: bool = False) -> None:
        """Saved to a fresh local folder; Ray Train copies it into the run folder and deletes the local copy,
        on a background thread (ASYNC) unless the caller must know it is on disk (``wait``)."""
        if not self.writes:
            ray.train.report({"step": step, "version": version})
            return
        directory = tempfile.mkdtemp(prefix=f"fleetrl-{self.task}-ckpt-")
        self.write(directory, step, version)
        mode = ray.train.CheckpointUploadMode
        ray.train.report(
            {"step": step, "version": version},
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=checkpoint_dir_name(step),
            checkpoint_upload_mode=mode.SYNC if wait else mode.ASYNC,
            delete_local_checkpoint_after_upload=True,
        )

    def write(self, directory: str | Path, step: int, version: int) -> Path:
        """Write the checkpoint file into ``directory`` (created if missing); returns its path."""
        path = Path(directory) / CHECKPOINT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state(step, version), os.fspath(path))
        return path

    def state(self, step: int, version: int) -> dict[str, Any]:
        """What a checkpoint holds: the policy, every algorithm's config and state, step and version."""
        state = {"policy": self.policy.state_dict(), "step": step, "version": version}
        return state | self.algorithms.checkpoint_entries()

    def adopt(self, state: dict[str, Any]) -> None:
        """Take another worker's live ``state`` (``state()``): the policy and every algorithm's state."""
        self.policy.load_state_dict(state["policy"])
        self.algorithms.load_states(state["algorithms"])

    def restore(self, registered: Path | None) -> Resumed | None:
        """Load the newest checkpoint into the policy and keep its algorithm states; None if there is none.

        Ray Train registers a reported checkpoint (``registered``) only when its controller next polls the
        worker, so one written just before a crash (e.g. right after an algorithm switch) may be
        unregistered; the files are on disk all the same, so the newest readable one wins. Folder names
        order them (step, then report time): background uploads may finish out of order."""
        found = self._newest(registered)
        if found is None:
            return None
        location, saved = found
        load_policy(self.policy, saved["policy"], location, self.root, f"learner {self.task}")
        self.algorithms.restore(saved["algorithms"])
        self.restored_step = saved["step"]
        log.info("learner %s: resumed at step %d, version %d", self.task, saved["step"], saved["version"])
        return Resumed(saved["step"], saved["version"], saved["algorithm"], saved["algorithm_config"])

    def _newest(self, registered: Path | None) -> tuple[str, dict[str, Any]] | None:
        candidates = set(saved_checkpoints(self.root))
        if registered is not None and not is_url(self.root):  # on an object store the listing has it
            handed = str(registered / CHECKPOINT_FILE)
            if exists(handed):  # the listed ones exist: they were just listed
                candidates.add(handed)
        return newest_readable(candidates, self.device, f"learner {self.task}")
