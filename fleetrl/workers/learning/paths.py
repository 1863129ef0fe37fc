"""Where a task's learner keeps its files under the learner storage folder (no torch, no Ray: the task
manager, the CLI and the learner all ask)."""

from __future__ import annotations

from pathlib import Path


def learner_checkpoint_root(storage_dir: str | Path, task: str) -> Path:
    """Where Ray Train keeps a task's learner checkpoints under the learner storage folder."""
    return Path(storage_dir).expanduser() / "ray_train" / f"learner-{task}"


CHECKPOINT_FILE = "learner.pt"


def saved_checkpoints(root: str | Path) -> list[Path]:
    """The checkpoint files under ``root``, oldest first (folder names sort by step, then report time)."""
    return sorted(Path(root).glob(f"checkpoint_*/{CHECKPOINT_FILE}"), key=lambda p: p.parent.name)
