"""Offline data export: ``Episode``s -> a LeRobot v3.0 dataset folder (the layout ``importers/lerobot.py``
reads).

Written so that ``import_lerobot`` (and LeRobot's own loaders, for the tabular parts) read it back: one
data file ``data/chunk-000/file-000.parquet`` with every episode; ``meta/info.json``; ``meta/tasks.parquet``
indexed by the task string (a ``task_index`` column, as pandas writes an index); ``meta/episodes/chunk-000/
file-000.parquet``, one row per episode (``episode_index``, ``tasks``, ``length``, where its rows are:
``data/chunk_index``, ``data/file_index``, ``dataset_from_index``, ``dataset_to_index``, and its own
``stats/<feature>/{min,max,mean,std,count}``); ``meta/stats.json``, the same statistics over the dataset
(what LeRobot normalises with). Everything is written into a temporary sibling folder and renamed into
place, so a failed export leaves nothing half-written. numpy/pyarrow only (no Ray, no torch).

Camera keys (uint8 [H, W, C]) become LeRobot ``image`` features (a struct column of per-frame PNG bytes),
or with ``video=True`` ``video`` features: per camera one AV1 mp4 of every episode in order,
``videos/<feature>/chunk-000/file-000.mp4`` (``video.py``), no data column, and per episode
``videos/<feature>/{chunk_index,file_index,from_timestamp,to_timestamp}`` in ``meta/episodes`` (where its
frames start in the file). What LeRobot cannot hold is dropped: ``final_observation`` (no observation after the last action), the
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
from fleetrl.robots.protocol import encode_frame
from fleetrl.workers.data.video import encode_video

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
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


def _feature(values: np.ndarray, video: bool) -> dict[str, Any]:
    if is_image(values):
        kind = "video" if video else "image"
        return {"dtype": kind, "shape": list(values.shape[1:]), "names": ["height", "width", "channels"]}
    shape = list(values.shape[1:]) or [1]
    return {"dtype": str(values.dtype), "shape": shape, "names": None}


def is_image(values: np.ndarray) -> bool:
    """Rows of camera frames (uint8 [T, H, W, C], C 1 or 3): exported as LeRobot ``image`` features."""
    return values.dtype == np.uint8 and values.ndim == 4 and values.shape[3] in (1, 3)


def _image_column(values: np.ndarray) -> pa.Array:
    """LeRobot's image column: a struct of the frame's PNG bytes and a (null) path per row."""
    frames = [encode_frame(f if f.shape[2] == 3 else f[:, :, 0], "png").data for f in values]
    return pa.StructArray.from_arrays(
        [pa.array(frames, pa.binary()), pa.array([None] * len(frames), pa.string())], names=["bytes", "path"]
    )


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


EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
QUANTILES = {
    "q01": 0.01,
    "q10": 0.10,
    "q50": 0.50,
    "q90": 0.90,
    "q99": 0.99,
}  # LeRobot's (pi0.5 normalises by q01/q99)
STATS = ("min", "max", "mean", "std", "count", *QUANTILES)
FILE_SIZES_MB = {
    "data_files_size_in_mb": 100,
    "video_files_size_in_mb": 200,
}  # LeRobot's defaults; its tools read them


def feature_stats(values: np.ndarray) -> dict[str, list]:
    """LeRobot's statistics of one feature over rows [T, *shape]: per entry min/max/mean/std, the
    quantiles q01..q99, and count."""
    if is_image(values):  # per channel, pixels scaled to [0, 1], shape [C, 1, 1] (LeRobot's image stats)
        x = values.astype(np.float64).reshape(-1, values.shape[3]) / 255.0
        shape = [values.shape[3], 1, 1]
    else:
        x = values.astype(np.float64).reshape(len(values), -1)
        shape = list(values.shape[1:]) or [1]
    out = {k: getattr(x, k)(axis=0).reshape(shape).tolist() for k in ("min", "max", "mean", "std")}
    out |= {k: np.quantile(x, q, axis=0).reshape(shape).tolist() for k, q in QUANTILES.items()}
    return out | {"count": [len(values)]}


def _tasks_table(tasks: list[str]) -> pa.Table:
    """``meta/tasks.parquet`` as LeRobot writes it with pandas: ``task_index`` indexed by the task string."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": tasks})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "fleetrl"},
        "pandas_version": "2.0.0",
    }  # fmt: skip
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _episodes_table(
    episodes: Sequence[Episode], cols: dict[str, np.ndarray], videos: Sequence[str], fps: float
) -> pa.Table:
    """``meta/episodes``: one row per episode, where its rows (and its frames in each of ``videos``) lie,
    and its own feature statistics."""
    lengths = np.array([len(ep) for ep in episodes], dtype=np.int64)
    ends = np.cumsum(lengths)
    rows: dict[str, list] = {
        "episode_index": list(range(len(episodes))),
        "tasks": [[ep.task] for ep in episodes],
        "length": lengths.tolist(),
        "data/chunk_index": [0] * len(episodes),
        "data/file_index": [0] * len(episodes),
        "dataset_from_index": (ends - lengths).tolist(),
        "dataset_to_index": ends.tolist(),
        "meta/episodes/chunk_index": [0] * len(episodes),
        "meta/episodes/file_index": [0] * len(episodes),
    }
    for key in videos:  # every episode in file 0, its frames one after another from its first row's time
        rows |= {
            f"videos/{key}/chunk_index": [0] * len(episodes),
            f"videos/{key}/file_index": [0] * len(episodes),
        }
        rows[f"videos/{key}/from_timestamp"] = ((ends - lengths) / fps).tolist()
        rows[f"videos/{key}/to_timestamp"] = (ends / fps).tolist()
    for name, values in cols.items():
        per_episode = [feature_stats(values[a:b]) for a, b in zip(ends - lengths, ends, strict=True)]
        for stat in STATS:
            rows[f"stats/{name}/{stat}"] = [st[stat] for st in per_episode]  # nested as the feature's stats
    return pa.table(rows)


def export_lerobot(
    episodes: Sequence[Episode],
    path: str | Path,
    fps: float,
    robot_type: str = "fleetrl",
    video: bool = False,
) -> dict[str, Any]:
    """Write ``episodes`` (episode_index 0..n-1 in the given order) as a LeRobot v3.0 dataset at ``path``,
    which must not exist or be an empty folder; ``video``: cameras as mp4 ``video`` features (needs PyAV)
    rather than PNG ``image`` columns. Returns ``{"episodes", "frames", "path"}``."""
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
        **FILE_SIZES_MB,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": {name: _feature(values, video) for name, values in cols.items()},
    }
    videos = [name for name, values in cols.items() if video and is_image(values)]
    if videos:
        info["video_path"] = VIDEO_PATH

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.export-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the dataset is meant to be shared
        data_file = tmp / DATA_PATH.format(chunk_index=0, file_index=0)
        data_file.parent.mkdir(parents=True)
        columns = {
            name: _image_column(v) if is_image(v) else _column(v)
            for name, v in cols.items()
            if name not in videos
        }
        pq.write_table(pa.table(columns), data_file)
        for key in videos:  # one file per camera: every episode's frames, in episode order
            video_file = tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            video_file.parent.mkdir(parents=True)
            info["features"][key]["info"] = encode_video(cols[key], video_file, fps)
        (tmp / "meta").mkdir()
        pq.write_table(_tasks_table(tasks), tmp / "meta" / "tasks.parquet")
        episodes_file = tmp / EPISODES_PATH
        episodes_file.parent.mkdir(parents=True)
        pq.write_table(_episodes_table(episodes, cols, videos, fps), episodes_file)
        stats = {name: feature_stats(values) for name, values in cols.items()}
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
        os.replace(tmp, root)  # atomic; replaces an empty folder, fails on a non-empty one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"episodes": len(episodes), "frames": total, "path": str(root)}
