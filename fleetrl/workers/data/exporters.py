"""Offline data export: ``Episode``s -> a LeRobot v3.0 dataset folder (the layout ``importers/lerobot.py``
reads).

Written so that ``import_lerobot`` (and LeRobot's own loaders, for the tabular parts) read it back: one
data file ``data/chunk-000/file-000.parquet`` with every episode, ``meta/info.json`` and
``meta/tasks.parquet``. Everything is written into a temporary sibling folder and renamed into place, so a
failed export leaves nothing half-written. numpy/pyarrow only (no Ray, no torch).

What LeRobot cannot hold is dropped: ``final_observation`` (no observation after the last action), the
behaviour columns (intervention, log_prob, ...) and the episode ids. Outcomes survive as ``next.success``
on the last frame of successful episodes; ``next.done`` is true on every episode's last frame.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fleetrl.robots.episode import Episode

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000  # LeRobot's default files per chunk


def _column(values: np.ndarray) -> pa.Array:
    """[T, *shape] -> a plain column for shape () and (1,) (LeRobot's convention for scalars), else
    (nested) fixed-size lists, one level per dimension."""
    values = np.ascontiguousarray(values)
    if values.ndim == 1 or values.shape[1:] == (1,):
        return pa.array(values.reshape(len(values)))
    arr = pa.array(values.reshape(-1))
    for dim in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, dim)
    return arr


def _feature(values: np.ndarray) -> dict[str, Any]:
    shape = list(values.shape[1:]) or [1]
    return {"dtype": str(values.dtype), "shape": shape, "names": None}


def _check(episodes: Sequence[Episode]) -> None:
    """Refuse what one table cannot hold: no episodes, or episodes whose columns differ in key/shape/dtype."""
    if not episodes:
        raise ValueError("export_lerobot: no episodes to export")

    def layout(ep: Episode) -> dict[str, tuple]:
        out = {f"observation {k!r}": (v.shape[1:], v.dtype.str) for k, v in ep.observations.items()}
        return out | {"action": (ep.actions.shape[1:], ep.actions.dtype.str)}

    first = layout(episodes[0])
    for i, ep in enumerate(episodes):
        ep.validate()
        if len(ep) == 0:
            raise ValueError(f"export_lerobot: episode {i} ({ep.episode_id}) has no steps")
        other = layout(ep)
        if other != first:
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise ValueError(
                f"export_lerobot: episode {i} ({ep.episode_id}) differs from episode 0 "
                f"({episodes[0].episode_id}) in {', '.join(diff)}: {[other.get(k) for k in diff]} vs "
                f"{[first.get(k) for k in diff]}"
            )


def export_lerobot(
    episodes: Sequence[Episode], path: str | Path, fps: float, robot_type: str = "fleetrl"
) -> dict[str, Any]:
    """Write ``episodes`` (episode_index 0..n-1 in the given order) as a LeRobot v3.0 dataset at ``path``,
    which must not exist or be an empty folder. Returns ``{"episodes", "frames", "path"}``."""
    root = Path(path)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"export_lerobot: {root} exists and is not an empty folder")
    if not fps > 0:
        raise ValueError(f"export_lerobot: fps must be positive, got {fps}")
    _check(episodes)

    tasks = list(dict.fromkeys(ep.task for ep in episodes))
    lengths = np.array([len(ep) for ep in episodes], dtype=np.int64)
    total = int(lengths.sum())
    frame = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
    last = np.zeros(total, bool)
    last[np.cumsum(lengths) - 1] = True
    success = last & np.repeat([ep.success for ep in episodes], lengths)
    cols: dict[str, np.ndarray] = {
        f"observation.{k}": np.concatenate([ep.observations[k] for ep in episodes])
        for k in episodes[0].observations
    }
    cols["action"] = np.concatenate([ep.actions for ep in episodes])
    cols |= {
        "timestamp": (frame / fps).astype(np.float32),
        "frame_index": frame,
        "episode_index": np.repeat(np.arange(len(episodes), dtype=np.int64), lengths),
        "index": np.arange(total, dtype=np.int64),
        "task_index": np.repeat([tasks.index(ep.task) for ep in episodes], lengths).astype(np.int64),
        "next.reward": np.concatenate([ep.columns["reward"] for ep in episodes]).astype(np.float32),
        "next.done": last,
        "next.success": success,
    }
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": total,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": {name: _feature(values) for name, values in cols.items()},
    }

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.export-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the dataset is meant to be shared
        data_file = tmp / DATA_PATH.format(chunk_index=0, file_index=0)
        data_file.parent.mkdir(parents=True)
        pq.write_table(pa.table({name: _column(v) for name, v in cols.items()}), data_file)
        (tmp / "meta").mkdir()
        pq.write_table(
            pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": tasks}),
            tmp / "meta" / "tasks.parquet",
        )
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
        os.replace(tmp, root)  # atomic; replaces an empty folder, fails on a non-empty one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"episodes": len(episodes), "frames": total, "path": str(root)}
