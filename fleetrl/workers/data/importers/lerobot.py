"""Import LeRobot datasets (v2.x, v3.0) as ``Episode``s.

LeRobot layout (read from huggingface/lerobot ``datasets/utils.py``, ``dataset_writer.py`` and
``scripts/convert_dataset_v21_to_v30.py``; this is our own reader, not their code):

* ``meta/info.json``: ``codebase_version`` ("v2.0", "v2.1", "v3.0"), ``fps``, ``features`` (name ->
  ``{dtype, shape, names}``; ``dtype`` "image"/"video" for cameras), ``data_path`` (a ``str.format``
  template), ``total_episodes``, ``total_frames``, ``chunks_size``, ``robot_type``.
* v2.x: one Parquet file per episode, ``data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet``
  (chunk = episode_index // chunks_size). v3.0: many episodes per file,
  ``data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet``; an episode's rows sit in one file
  (``meta/episodes/`` records one data chunk/file per episode). Both are read the same way here: every
  file matching ``data_path`` (placeholders as wildcards) is split by its ``episode_index`` column.
* Columns: one per non-video feature; ``timestamp`` (float32, s), ``frame_index``, ``episode_index``,
  ``index``, ``task_index`` (int64) always; shape ``(1,)`` features are plain columns, ``(n,)`` lists,
  higher ranks nested lists. RL datasets add ``next.reward`` (float32), ``next.done`` and
  ``next.success`` (bool), the consequences of the frame's action.

Mapping to an ``Episode`` (row ``t`` after sorting by ``frame_index``): observations ``[t]`` = the
mapped ``observation.*`` features, ``actions[t]`` = ``action``, ``reward[t]`` = ``next.reward`` (0 when
absent), ``obs_time`` = ``action_start`` = ``timestamp``. ``final_observation`` is the *last row's*
observation: LeRobot stores no observation after the last action, so a bootstrap from it (truncated
episodes) uses the state one step early. Outcome: ``success`` if ``next.success`` is true at the last
frame, or, without that column, if ``next.done`` is true there with ``next.reward`` > 0; otherwise
``timeout`` (``terminated`` for success, ``truncated`` otherwise). Episode ids are deterministic (task,
episode index and content), so importing a dataset twice stores it once.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetrl.robots.episode import Episode, empty_columns
from fleetrl.workers.data.importers.common import DatasetImportError, spec_problem
from fleetrl.workers.data.video import decode_video, frames_at

if TYPE_CHECKING:  # task.py pulls in torch through the policy config; we only read its specs
    from fleetrl.workers.task import TaskConfig

_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?")
_LEGACY_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"  # v2.x
_V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
_AUX = {"next.reward": np.float32, "next.done": bool, "next.success": bool, "task_index": np.int64}
_Rows = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (mapped features, timestamp and _AUX)


class _Feature(BaseModel):
    model_config = ConfigDict(extra="allow")
    dtype: str
    shape: tuple[int, ...]


class _Info(BaseModel):
    """The parts of ``meta/info.json`` the importer reads."""

    model_config = ConfigDict(extra="allow")
    codebase_version: str
    fps: float = Field(gt=0)
    features: dict[str, _Feature]
    data_path: str | None = None
    total_episodes: int | None = Field(None, ge=0)
    total_frames: int | None = Field(None, ge=0)
    robot_type: str | None = None


def _load_info(root: Path) -> _Info:
    file = root / "meta" / "info.json"
    if not file.is_file():
        raise DatasetImportError(f"{file}: missing; {root} is not a LeRobot dataset (no meta/info.json)")
    try:
        info = _Info.model_validate(json.loads(file.read_text()))
    except (OSError, ValueError, ValidationError) as e:
        raise DatasetImportError(f"{file}: not a valid LeRobot info.json ({e})") from e
    m = _VERSION_RE.fullmatch(info.codebase_version.strip())
    if m is None or not (m.group(1) == "2" or (m.group(1), m.group(2)) == ("3", "0")):
        raise DatasetImportError(
            f"{file}: codebase_version {info.codebase_version!r} is not supported (v2.x or v3.0)"
        )
    if info.data_path is None:
        info.data_path = _LEGACY_DATA_PATH if m.group(1) == "2" else _V3_DATA_PATH
    return info


def _feature_plan(
    info: _Info, task: TaskConfig, observation_keys: dict[str, str] | None, action_key: str, where: Path
) -> dict[str, tuple[str, Any]]:
    """LeRobot feature -> (task observation key or '' for the action, its task ArraySpec), checked."""
    explicit = dict(observation_keys or {})
    unknown = sorted(set(explicit.values()) - set(task.observation_spec))
    if unknown:
        raise DatasetImportError(f"observation_keys maps to {unknown}, which task {task.name!r} lacks")
    targeted = set(explicit.values())
    mapping = explicit | {f"observation.{k}": k for k in task.observation_spec if k not in targeted}
    if len(set(mapping.values())) != len(mapping):
        raise DatasetImportError(f"observation_keys maps several features to one observation: {mapping}")
    plan = {feat: (key, task.observation_spec[key]) for feat, key in mapping.items()}
    if action_key in plan:
        raise DatasetImportError(f"feature {action_key!r} is mapped both as the action and an observation")
    plan[action_key] = ("", task.action_spec)
    problems = []
    for feat, (key, spec) in plan.items():
        role = f"task observation {key!r}" if key else "the task's action"
        ft = info.features.get(feat)
        if ft is None:
            problems.append(f"feature {feat!r} (for {role}) is not in the dataset")
        elif ft.dtype in ("image", "video"):
            hwc = (
                tuple(ft.shape)
                if len(ft.shape) == 3 and ft.shape[2] in (1, 3)
                else tuple(ft.shape[1:]) + ft.shape[:1]
            )
            if (spec.dtype, spec.shape) != ("uint8", hwc):
                problems.append(
                    f"feature {feat!r} (for {role}) is an {ft.dtype} of shape {list(hwc)}; the task's spec is "
                    f"{list(spec.shape)} {spec.dtype} (declare it uint8 [H, W, C])"
                )
        else:
            shape = () if ft.shape == (1,) and spec.shape == () else ft.shape
            p = spec_problem(f"feature {feat!r} (for {role})", shape, ft.dtype, spec)
            problems += [p] if p else []
    if problems:
        available = sorted(info.features)
        raise DatasetImportError(
            f"{where}: does not fit task {task.name!r}: " + "; ".join(problems) + f" (features: {available})"
        )
    return plan


def _leaf(col: pa.ChunkedArray, shape: tuple[int, ...], what: str) -> pa.Array:
    """A (possibly nested) list column of per-row ``shape`` -> the flat array of its values, checked."""
    arr = col.combine_chunks()
    dims = list(shape)
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        if arr.null_count:
            raise ValueError(f"{what} has null values")
        if not dims:
            raise ValueError(f"{what} is nested deeper than its shape {list(shape)}")
        dim = dims.pop(0)
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and not (lengths == dim).all():
            bad = sorted(set(lengths.tolist()) - {dim})[:3]
            raise ValueError(f"{what} has rows of length {bad}, expected {dim} (shape {list(shape)})")
        arr = arr.flatten()
    if arr.null_count:
        raise ValueError(f"{what} has null values")
    if int(np.prod(dims, dtype=np.int64)) != 1:
        raise ValueError(f"{what} holds {arr.type} values, expected rows of shape {list(shape)}")
    return arr


def _array(table: pa.Table, name: str, shape: tuple[int, ...], dtype: str, out_shape: tuple[int, ...]):
    """Column ``name`` (declared ``dtype``/``shape``) as a numpy array [rows, *out_shape] of that dtype."""
    values = _leaf(table.column(name), shape, f"column {name!r}").to_numpy(zero_copy_only=False)
    if values.dtype != np.dtype(dtype):
        raise ValueError(f"column {name!r} holds {values.dtype}, meta/info.json declares {dtype}")
    return values.reshape(table.num_rows, *out_shape)


def _images(table: pa.Table, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """An ``image`` column (a struct with each frame's encoded ``bytes``, PNG or JPEG) as uint8 [rows,
    *shape]; a frame that does not decode to ``shape`` raises ValueError naming the row."""
    from PIL import Image

    col = table.column(name).combine_chunks()
    if not pa.types.is_struct(col.type) or col.type.get_field_index("bytes") < 0:
        raise ValueError(f"column {name!r} is not an image column (a struct with 'bytes'), got {col.type}")
    out = np.empty((len(col), *shape), np.uint8)
    for i, data in enumerate(col.field("bytes").to_pylist()):
        try:
            with Image.open(io.BytesIO(data or b"")) as img:
                frame = np.asarray(img.convert("L" if shape[-1] == 1 else "RGB"))
        except (OSError, ValueError) as e:
            raise ValueError(f"column {name!r} row {i}: not a readable image ({e})") from None
        frame = frame.reshape(frame.shape[0], frame.shape[1], -1)
        if frame.shape != shape:
            raise ValueError(
                f"column {name!r} row {i}: image of shape {list(frame.shape)}, expected {list(shape)}"
            )
        out[i] = frame
    return out


def _scalar(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    """A per-row scalar column (plain or a length-1 list) cast to ``dtype``; numeric or bool only."""
    values = _leaf(table.column(name), (1,), f"column {name!r}").to_numpy(zero_copy_only=False)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"column {name!r} holds {values.dtype}, expected numbers")
    return values.astype(dtype)


def _data_files(root: Path, info: _Info) -> list[Path]:
    assert info.data_path is not None
    pattern = re.sub(r"\{[^}]*\}", "*", info.data_path)
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise DatasetImportError(f"{root / 'meta' / 'info.json'}: no data files match {pattern!r} in {root}")
    return files


def _read_data_file(file: Path, required: list[str]) -> pa.Table:
    """The columns the importer needs (``required`` and whichever of ``_AUX`` exist) of one data file."""
    try:
        names = pq.read_schema(file).names
    except (OSError, pa.ArrowException) as e:
        raise DatasetImportError(f"{file}: not a readable Parquet file ({e})") from e
    missing = [c for c in required if c not in names]
    if missing:
        raise DatasetImportError(f"{file}: missing column(s) {missing} (has {names})")
    try:
        return pq.read_table(file, columns=list(dict.fromkeys(required + [c for c in _AUX if c in names])))
    except (OSError, pa.ArrowException) as e:
        raise DatasetImportError(f"{file}: not a readable Parquet file ({e})") from e


def import_lerobot(
    path: str | Path,
    task: TaskConfig,
    observation_keys: dict[str, str] | None = None,
    action_key: str = "action",
) -> list[Episode]:
    """All episodes of the LeRobot dataset (v2.x or v3.0) in folder ``path``, in episode_index order.

    ``observation_keys`` maps LeRobot feature names to the task's observation keys; a task key it does
    not name is read from ``observation.<key>`` (so the default maps ``observation.state`` to ``state``).
    Unmapped features are ignored; a mapped ``image`` or ``video`` feature becomes a uint8 [H, W, C]
    camera key (its frames decoded; a video's frames found by time, as LeRobot does, needs PyAV).
    """
    root = Path(path)
    info = _load_info(root)
    info_file = root / "meta" / "info.json"
    plan = _feature_plan(info, task, observation_keys, action_key, info_file)
    videos = {feat: spec for feat, (_, spec) in plan.items() if info.features[feat].dtype == "video"}
    required = ["episode_index", "frame_index", "timestamp", *(f for f in plan if f not in videos)]
    episodes: dict[int, tuple[Path, _Rows]] = {}
    frames = 0
    for file in _data_files(root, info):
        table = _read_data_file(file, required)
        try:
            for ep_index, rows in _split_episodes(table, plan, videos, info).items():
                if ep_index in episodes:
                    raise ValueError(f"episode_index {ep_index} also appears in {episodes[ep_index][0]}")
                episodes[ep_index] = (file, rows)
            frames += table.num_rows
        except (OSError, ValueError, pa.ArrowException) as e:
            raise DatasetImportError(f"{file}: {e}") from e
    if info.total_episodes is not None and info.total_episodes != len(episodes):
        raise DatasetImportError(
            f"{info_file}: declares {info.total_episodes} episodes, the data files hold {len(episodes)}"
            " (partial download?)"
        )
    if info.total_frames is not None and info.total_frames != frames:
        raise DatasetImportError(
            f"{info_file}: declares {info.total_frames} frames, the data files hold {frames} (partial download?)"
        )
    if videos:
        _add_video_frames(root, info, videos, {i: rows for i, (_, rows) in episodes.items()})
    return [
        _lerobot_episode(ep_index, rows, plan, file, root, info, task)
        for ep_index, (file, rows) in sorted(episodes.items())
    ]


def _split_episodes(
    table: pa.Table, plan: dict[str, tuple[str, Any]], videos: dict[str, Any], info: _Info
) -> dict[int, _Rows]:
    """The rows of one data file, decoded and split into episodes (sorted by frame_index); ``videos``'
    features are not in the file (``_add_video_frames`` fills them in)."""
    feats = {
        feat: _images(table, feat, spec.shape)
        if info.features[feat].dtype == "image"
        else _array(table, feat, info.features[feat].shape, info.features[feat].dtype, spec.shape)
        for feat, (_, spec) in plan.items()
        if feat not in videos
    }
    aux = {name: _scalar(table, name, dtype) for name, dtype in _AUX.items() if name in table.column_names}
    aux["timestamp"] = _scalar(table, "timestamp", np.float64)
    ep_col = _scalar(table, "episode_index", np.int64)
    frame = _scalar(table, "frame_index", np.int64)
    out = {}
    for ep_index in np.unique(ep_col):
        rows = np.flatnonzero(ep_col == ep_index)
        rows = rows[np.argsort(frame[rows], kind="stable")]
        f = frame[rows]
        if len(f) > 1 and not (np.diff(f) == 1).all():
            what = "duplicate" if (np.diff(f) == 0).any() else "missing"
            raise ValueError(
                f"episode_index {ep_index}: {what} frames (frame_index {f[0]}..{f[-1]} in {len(f)} rows)"
            )
        out[int(ep_index)] = ({k: v[rows] for k, v in feats.items()}, {k: v[rows] for k, v in aux.items()})
    return out


def _video_locations(
    root: Path, info: _Info, feat: str, ep_indices: list[int]
) -> dict[int, tuple[Path, float]]:
    """Episode index -> (its mp4 for video feature ``feat``, the time its first frame has in that file).

    v3.0: ``meta/episodes`` names each episode's file (``videos/<feat>/chunk_index``, ``file_index``) and
    ``from_timestamp``; v2.x: one file per episode, ``video_path`` with ``episode_chunk``, from time 0."""
    template = info.model_extra.get("video_path") if info.model_extra else None
    if not template:
        raise DatasetImportError(
            f"{root / 'meta' / 'info.json'}: has video feature {feat!r} but no video_path"
        )
    if info.codebase_version.lstrip("v").startswith("2"):
        chunks = int((info.model_extra or {}).get("chunks_size") or 1000)
        return {
            i: (root / template.format(episode_chunk=i // chunks, video_key=feat, episode_index=i), 0.0)
            for i in ep_indices
        }
    files = sorted((root / "meta" / "episodes").glob("**/*.parquet"))
    cols = ["episode_index", *(f"videos/{feat}/{c}" for c in ("chunk_index", "file_index", "from_timestamp"))]
    try:
        table = pa.concat_tables(pq.read_table(f, columns=cols) for f in files) if files else None
    except (OSError, KeyError, pa.ArrowException) as e:
        raise DatasetImportError(f"{root / 'meta' / 'episodes'}: cannot read {cols} ({e})") from e
    if table is None:
        raise DatasetImportError(f"{root / 'meta' / 'episodes'}: missing; it says where video frames lie")
    rows = {int(r["episode_index"]): r for r in table.to_pylist()}
    missing = sorted(set(ep_indices) - set(rows))
    if missing:
        raise DatasetImportError(f"{root / 'meta' / 'episodes'}: no entry for episode(s) {missing[:5]}")
    return {
        i: (
            root
            / template.format(
                video_key=feat,
                chunk_index=rows[i][f"videos/{feat}/chunk_index"],
                file_index=rows[i][f"videos/{feat}/file_index"],
            ),
            float(rows[i][f"videos/{feat}/from_timestamp"]),
        )
        for i in ep_indices
    }


def _add_video_frames(root: Path, info: _Info, videos: dict[str, Any], episodes: dict[int, _Rows]) -> None:
    """Decode each video file once and give every episode the frames stamped at its rows' times."""
    tolerance = min(1e-3, 0.25 / info.fps)
    for feat, spec in videos.items():
        where = _video_locations(root, info, feat, sorted(episodes))
        for file in sorted({f for f, _ in where.values()}):
            if not file.is_file():
                raise DatasetImportError(f"{file}: missing (video feature {feat!r})")
            try:
                frames, times = decode_video(file, channels=spec.shape[-1])
            except (ValueError, ImportError) as e:
                raise DatasetImportError(str(e)) from e
            if frames.shape[1:] != tuple(spec.shape):
                raise DatasetImportError(
                    f"{file}: frames of shape {list(frames.shape[1:])}, the task's spec is {list(spec.shape)}"
                )
            for i in (i for i, (f, _) in where.items() if f == file):
                feats, data = episodes[i]
                try:
                    wanted = where[i][1] + data["timestamp"]
                    feats[feat] = frames_at(frames, times, wanted, tolerance, f"{file} episode_index {i}")
                except ValueError as e:
                    raise DatasetImportError(str(e)) from e


def _lerobot_episode(
    ep_index: int,
    rows: _Rows,
    plan: dict[str, tuple[str, Any]],
    file: Path,
    root: Path,
    info: _Info,
    task: TaskConfig,
) -> Episode:
    feats, data = rows
    n = len(data["timestamp"])
    observations = {key: feats[feat] for feat, (key, _) in plan.items() if key}
    actions = next(feats[feat] for feat, (key, _) in plan.items() if not key)
    columns = empty_columns(n)
    reward = data.get("next.reward")
    if reward is not None:
        columns["reward"][:] = reward
    columns["obs_time"][:] = data["timestamp"]
    columns["action_start"][:] = data["timestamp"]
    if "next.success" in data:
        success = bool(data["next.success"][-1])
    else:
        done = data.get("next.done")
        success = done is not None and bool(done[-1]) and reward is not None and float(reward[-1]) > 0
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{task.name}/{ep_index}".encode())
    for key in sorted(observations):
        digest.update(np.ascontiguousarray(observations[key]).tobytes())
    digest.update(np.ascontiguousarray(actions).tobytes())
    task_index = data.get("task_index")
    meta = {
        "importer": "lerobot",
        "dataset": root.resolve().name,
        "codebase_version": info.codebase_version,
        "fps": info.fps,
        "episode_index": ep_index,
        "data_file": file.relative_to(root).as_posix(),
        "features": {feat: key or "action" for feat, (key, _) in plan.items()},
        "task_index": int(task_index[0]) if task_index is not None else None,
    }
    ep = Episode(
        episode_id=f"lerobot-{ep_index:06d}-{digest.hexdigest()}",
        task=task.name,
        robot_id=f"lerobot-{re.sub(r'[^A-Za-z0-9_.-]', '-', info.robot_type)[:100]}"
        if info.robot_type
        else "lerobot",
        outcome="success" if success else "timeout",
        observations=observations,
        actions=actions,
        columns=columns,
        final_observation={key: obs[-1].copy() for key, obs in observations.items()},
        labelled_by="dataset",
        source="offline",
        terminated=success,
        truncated=not success,
        meta=meta,
    )
    try:
        ep.validate()
    except ValueError as e:
        raise DatasetImportError(f"{file}: episode_index {ep_index}: {e}") from e
    return ep
