"""Where a task's learner keeps its files under the learner storage (no torch, no Ray: the task manager, the
CLI and the learner all ask).

The storage is a local (or shared) directory or an object store URL (``workers/locations.py``); locations here
are strings of the same kind.
"""

from __future__ import annotations

import io
from pathlib import Path

from fleetrl.workers.locations import filesystem, join

CHECKPOINT_FILE = "learner.pt"


def learner_checkpoint_root(storage_dir: str | Path, task: str) -> str:
    """Where Ray Train keeps a task's learner checkpoints under the learner storage."""
    return join(storage_dir, "ray_train", f"learner-{task}")


def saved_checkpoints(root: str | Path) -> list[str]:
    """The checkpoint files under ``root`` (locations of the same kind), oldest first: folder names
    (``checkpoint_<step>_<time>``) sort by step, then report time."""
    import pyarrow.fs as pafs

    fs, base = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found = []
    for info in infos:
        rel = info.path[len(base) :].lstrip("/")
        folder, _, name = rel.partition("/")
        if info.type == pafs.FileType.File and name == CHECKPOINT_FILE and folder.startswith("checkpoint_"):
            found.append((folder, join(root, folder, CHECKPOINT_FILE)))
    return [location for _, location in sorted(found)]


def checkpoint_folder(location: str | Path) -> str:
    """The name of the checkpoint folder a checkpoint file location is in."""
    return str(location).partition("?")[0].rstrip("/").split("/")[-2]


def exists(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(location: str | Path) -> io.BytesIO:
    """A file's whole content (a checkpoint: ``torch.load`` reads it), from a path or an object store."""
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return io.BytesIO(f.read())
