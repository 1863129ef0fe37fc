"""Where a task's learner keeps its files under the learner storage folder (no torch, no Ray: the task
manager, the CLI and the learner all ask)."""

from __future__ import annotations

from pathlib import Path


def learner_checkpoint_root(storage_dir: str | Path, task: str) -> Path:
    """Where Ray Train keeps a task's learner checkpoints under the learner storage folder."""
    return Path(storage_dir).expanduser() / "ray_train" / f"learner-{task}"
