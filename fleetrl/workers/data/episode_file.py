"""The Parquet layout of one episode file (format 1): what ``EpisodeStore`` writes and reads.

Row ``t < T`` is step ``t``: columns ``obs/<key>`` and ``action`` (a fixed-size list of the flattened
array, or a plain column for scalars; a camera key stored compressed is a binary column of one JPEG or PNG
file per row, its header entry naming the ``encoding``) and the ``STEP_COLUMNS`` of ``Episode``. Row ``T`` — the last row,
in its own row group — holds ``final_observation`` in the ``obs/<key>`` columns, with ``action`` and the
step columns null: one representation for all observations, compressed like the rest, exact dtypes.
The schema metadata key ``fleetrl`` holds JSON with the episode's scalar fields, ``meta``, the shape and
numpy dtype of every array column, and summary numbers (``n_steps``, ``intervention_steps``,
``duration_s``, ``total_reward``) and the episode's ``digest`` (``Episode.digest``), so a catalog can be
rebuilt from file footers alone.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fleetrl.robots.episode import STEP_COLUMNS, Episode
from fleetrl.robots.protocol import ArraySpec, EncodedFrame, ProtocolError, decode_frame, encode_frame

FORMAT = 1
META_KEY = b"fleetrl"


def scalar_fields(ep: Episode) -> dict[str, Any]:
    """The episode's non-array fields (the catalog row's identity and labels)."""
    return {
        "episode_id": ep.episode_id,
        "task": ep.task,
        "robot_id": ep.robot_id,
        "outcome": ep.outcome,
        "labelled_by": ep.labelled_by,
        "source": ep.source,
        "terminated": bool(ep.terminated),
        "truncated": bool(ep.truncated),
    }


def episode_summary(ep: Episode) -> dict[str, Any]:
    """Catalog numbers of an episode. ``duration_s`` is the obs_time span extended by one mean step."""
    n = len(ep)
    t = ep.columns["obs_time"]
    duration = float(t[-1] - t[0]) * n / (n - 1) if n >= 2 else 0.0
    return {
        "n_steps": n,
        "intervention_steps": int(ep.columns["intervention"].sum()),
        "duration_s": max(duration, 0.0),
        "total_reward": float(ep.columns["reward"].astype(np.float64).sum()),
    }


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _array_column(values: np.ndarray, mask: np.ndarray | None) -> pa.Array:
    """[R, *shape] -> a plain column (scalars) or a fixed-size list of the flattened item."""
    try:
        pa.from_numpy_dtype(values.dtype)
    except (pa.ArrowNotImplementedError, TypeError) as e:
        raise ValueError(f"dtype {values.dtype} cannot be stored in Parquet") from e
    if values.ndim == 1:
        return pa.array(values, mask=mask)
    size = int(np.prod(values.shape[1:]))
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, size, mask=None if mask is None else pa.array(mask))


def to_table(
    ep: Episode, digest: str | None = None, frames: dict[str, ArraySpec] | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """The episode as a T + 1 row table with its JSON header in the schema metadata, and its summary
    (``digest``: ``ep.digest()`` when the caller has it already; ``frames``: camera keys to store
    compressed, by their spec's encoding and quality)."""
    n = len(ep)
    pad = np.zeros(n + 1, dtype=bool)
    pad[n] = True  # the final-observation row has no action and no step columns
    arrays: dict[str, pa.Array] = {}
    specs: dict[str, dict[str, Any]] = {}
    for key, obs in ep.observations.items():
        rows = np.concatenate([obs, np.asarray(ep.final_observation[key], dtype=obs.dtype)[None]])
        specs[f"obs/{key}"] = {"shape": list(obs.shape[1:]), "dtype": obs.dtype.str}
        if frames and key in frames:
            frame = frames[key]
            data = [encode_frame(r, frame.encoding, frame.quality).data for r in rows]
            arrays[f"obs/{key}"] = pa.array(data, pa.binary())
            specs[f"obs/{key}"]["encoding"] = frame.encoding
        else:
            arrays[f"obs/{key}"] = _array_column(rows, None)
    acts = np.concatenate([ep.actions, np.zeros((1, *ep.actions.shape[1:]), ep.actions.dtype)])
    arrays["action"] = _array_column(acts, pad)
    specs["action"] = {"shape": list(ep.actions.shape[1:]), "dtype": ep.actions.dtype.str}
    for name, dtype in STEP_COLUMNS.items():
        arrays[name] = pa.array(np.concatenate([ep.columns[name], np.zeros(1, dtype)]), mask=pad)
    summary = episode_summary(ep)
    header = scalar_fields(ep) | {
        "format": FORMAT, "meta": ep.meta, "arrays": specs, "summary": summary, "digest": digest or ep.digest()
    }  # fmt: skip
    try:
        blob = json.dumps(header, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ValueError(f"episode {ep.episode_id}: meta is not JSON serialisable ({e})") from e
    return pa.table(arrays).replace_schema_metadata({META_KEY: blob.encode()}), summary


def read_header(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """The JSON header of an episode file, from its footer only."""
    try:
        with fs.open_input_file(path) as f:
            schema = pq.ParquetFile(f).schema_arrow
        return _parse_header(schema.metadata, path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable fleetrl episode file ({e})") from e


def _parse_header(metadata: dict[bytes, bytes] | None, path: str) -> dict[str, Any]:
    if not metadata or META_KEY not in metadata:
        raise ValueError(f"{path}: Parquet file has no fleetrl metadata")
    try:
        header = json.loads(metadata[META_KEY])
    except ValueError as e:
        raise ValueError(f"{path}: fleetrl metadata is not valid JSON ({e})") from e
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported fleetrl file format {header.get('format')!r}")
    return header


def _column_numpy(col: pa.Array, spec: dict[str, Any], rows: int) -> np.ndarray:
    if "encoding" in spec:  # one compressed camera frame per row
        frame = ArraySpec(tuple(spec["shape"]), np.dtype(spec["dtype"]).name, encoding=spec["encoding"])
        decoded = [decode_frame(EncodedFrame(spec["encoding"], b), frame, "frame") for b in col.to_pylist()]
        return np.stack(decoded).reshape(rows, *spec["shape"])
    if isinstance(col, pa.FixedSizeListArray):
        col = col.flatten()
    out = col.to_numpy(zero_copy_only=False).astype(np.dtype(spec["dtype"]), copy=False)
    return out.reshape(rows, *spec["shape"])


def read_episode(path: str, fs: pafs.FileSystem | None = None) -> Episode:
    """Read one episode file; any damage raises ValueError naming ``path``."""
    fs = fs or pafs.LocalFileSystem()
    try:
        with fs.open_input_file(path) as f:
            table = pq.read_table(f)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable fleetrl episode file ({e})") from e
    h = _parse_header(table.schema.metadata, path)
    n = int(h["summary"]["n_steps"])
    try:
        if table.num_rows != n + 1:
            raise ValueError(f"{table.num_rows} rows, expected {n + 1}")
        cols = {name: table.column(name).combine_chunks() for name in table.column_names}
        obs, final = {}, {}
        for name, spec in h["arrays"].items():
            if not name.startswith("obs/"):
                continue
            key = name[4:]
            obs[key] = _column_numpy(cols[name].slice(0, n), spec, n)
            final[key] = _column_numpy(cols[name].slice(n, 1), spec, 1)[0]
        actions = _column_numpy(cols["action"].slice(0, n), h["arrays"]["action"], n)
        columns = {
            name: cols[name].slice(0, n).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
            for name, dtype in STEP_COLUMNS.items()
        }
    except (KeyError, ValueError, ProtocolError, pa.ArrowException) as e:
        raise ValueError(f"{path}: inconsistent fleetrl episode file ({e!r})") from e
    ep = Episode(
        episode_id=h["episode_id"],
        task=h["task"],
        robot_id=h["robot_id"],
        outcome=h["outcome"],
        observations=obs,
        actions=actions,
        columns=columns,
        final_observation=final,
        labelled_by=h["labelled_by"],
        source=h["source"],
        terminated=bool(h["terminated"]),
        truncated=bool(h["truncated"]),
        meta=h["meta"],
    )
    return ep
