"""workers/data/importers/: our own episode folders and LeRobot v2.x / v3.0 datasets -> Episodes -> store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.episode_file import to_table
from fleetrl.workers.data.importers import (
    DatasetImportError,
    import_fleetrl_folder,
    import_into_store,
    import_lerobot,
)
from fleetrl.workers.data.store import SAFE_NAME, EpisodeStore
from fleetrl.workers.task import TaskConfig

FPS = 10
LENGTHS = (5, 6, 7)


def make_task(state_shape=(4,), state_dtype="float32", obs_key="state", action_shape=(2,)) -> TaskConfig:
    return TaskConfig(
        name="reach",
        observation={obs_key: {"shape": list(state_shape), "dtype": state_dtype}},
        action={"shape": list(action_shape), "dtype": "float32", "low": -1, "high": 1},
    )


def episode_frames(i: int) -> dict[str, np.ndarray]:
    """LeRobot columns of episode ``i`` (n = LENGTHS[i] frames)."""
    n = LENGTHS[i]
    rng = np.random.default_rng(i)
    frame = np.arange(n, dtype=np.int64)
    reward = np.zeros(n, np.float32)
    done = np.zeros(n, bool)
    success = np.zeros(n, bool)
    if i == 0:  # done with a positive reward: success
        reward[-1], done[-1], success[-1] = 1.0, True, True
    elif i == 1:  # done without reward: timeout
        done[-1] = True
    else:  # never done; the success column (v3 fixture) says it succeeded
        success[-1] = True
    return {
        "observation.state": rng.standard_normal((n, 4)).astype(np.float32),
        "action": rng.standard_normal((n, 2)).astype(np.float32),
        "timestamp": (frame / FPS).astype(np.float32),
        "frame_index": frame,
        "episode_index": np.full(n, i, np.int64),
        "index": frame + sum(LENGTHS[:i]),
        "task_index": np.zeros(n, np.int64),
        "next.reward": reward,
        "next.done": done,
        "next.success": success,
    }


def lerobot_table(frames: dict[str, np.ndarray], fixed_lists: bool, drop=()) -> pa.Table:
    cols = {}
    for name, values in frames.items():
        if name in drop:
            continue
        if values.ndim == 2:
            flat = pa.array(values.reshape(-1))
            if fixed_lists:  # recent `datasets`: Sequence(length=n) -> fixed_size_list
                cols[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
            else:  # older `datasets`: a variable-length list
                offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
                cols[name] = pa.ListArray.from_arrays(offsets, flat)
        else:
            cols[name] = pa.array(values)
    return pa.table(cols)


def write_info(root: Path, version: str, with_success: bool, data_path: str, **extra) -> None:
    features = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "g"]},
        "observation.images.top": {"dtype": "video", "shape": [48, 64, 3], "names": ["h", "w", "c"]},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }
    if with_success:
        features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    info = {
        "codebase_version": version,
        "robot_type": "so100",
        "total_episodes": len(LENGTHS),
        "total_frames": sum(LENGTHS),
        "total_tasks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{len(LENGTHS)}"},
        "data_path": data_path,
        "video_path": None,
        "features": features,
    } | extra
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))


def write_v2(root: Path) -> list[Path]:
    """v2.1: one file per episode, no next.success column, variable-length list columns."""
    write_info(root, "v2.1", False, "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet")
    files = []
    for i in range(len(LENGTHS)):
        file = root / f"data/chunk-000/episode_{i:06d}.parquet"
        file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(lerobot_table(episode_frames(i), False, drop=("next.success",)), file)
        files.append(file)
    return files


def write_v3(root: Path, drop=()) -> Path:
    """v3.0: all episodes in one file, rows shuffled, next.success present, fixed-size list columns."""
    write_info(root, "v3.0", True, "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
    table = pa.concat_tables(lerobot_table(episode_frames(i), True, drop) for i in range(len(LENGTHS)))
    table = table.take(np.random.default_rng(0).permutation(table.num_rows))
    file = root / "data/chunk-000/file-000.parquet"
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, file, row_group_size=7)
    return file


def check_lerobot_episodes(episodes, outcomes):
    assert [len(ep) for ep in episodes] == list(LENGTHS)
    assert [ep.outcome for ep in episodes] == outcomes
    for i, ep in enumerate(episodes):
        ep.validate()
        want = episode_frames(i)
        assert ep.task == "reach" and ep.source == "offline" and ep.labelled_by == "dataset"
        assert SAFE_NAME.match(ep.episode_id) and ep.meta["episode_index"] == i
        np.testing.assert_array_equal(ep.observations["state"], want["observation.state"])
        np.testing.assert_array_equal(ep.actions, want["action"])
        np.testing.assert_array_equal(ep.final_observation["state"], want["observation.state"][-1])
        np.testing.assert_array_equal(ep.columns["reward"], want["next.reward"])
        np.testing.assert_allclose(ep.columns["obs_time"], np.arange(LENGTHS[i]) / FPS, rtol=1e-6)
        assert ep.columns["obs_time"].dtype == np.float64
        assert (ep.terminated, ep.truncated) == (ep.success, not ep.success)
    assert len({ep.episode_id for ep in episodes}) == len(episodes)


def test_lerobot_v2_one_file_per_episode(tmp_path):
    write_v2(tmp_path)
    episodes = import_lerobot(tmp_path, make_task())
    check_lerobot_episodes(episodes, ["success", "timeout", "timeout"])  # done + reward > 0 only for ep 0
    assert episodes[1].meta["data_file"] == "data/chunk-000/episode_000001.parquet"
    assert episodes[0].robot_id == "lerobot-so100"
    again = import_lerobot(tmp_path, make_task())
    assert [ep.episode_id for ep in again] == [ep.episode_id for ep in episodes]  # deterministic ids


def test_lerobot_v3_many_episodes_per_file(tmp_path):
    write_v3(tmp_path)
    episodes = import_lerobot(tmp_path, make_task())
    check_lerobot_episodes(episodes, ["success", "timeout", "success"])  # next.success at the end wins
    assert {ep.meta["data_file"] for ep in episodes} == {"data/chunk-000/file-000.parquet"}
    assert episodes[0].meta["codebase_version"] == "v3.0" and episodes[0].meta["task_index"] == 0


def test_lerobot_custom_feature_mapping(tmp_path):
    write_v3(tmp_path)
    task = make_task(obs_key="joints")
    with pytest.raises(DatasetImportError, match=r"info\.json.*'observation\.joints'.*not in the dataset"):
        import_lerobot(tmp_path, task)
    episodes = import_lerobot(tmp_path, task, observation_keys={"observation.state": "joints"})
    np.testing.assert_array_equal(episodes[2].observations["joints"], episode_frames(2)["observation.state"])
    with pytest.raises(DatasetImportError, match="'act'.*not in the dataset"):
        import_lerobot(tmp_path, make_task(), action_key="act")


def test_lerobot_mapped_video_feature_without_its_files_is_refused(tmp_path):
    write_v3(tmp_path)  # declares a video feature, but no video_path and no mp4 files
    task = TaskConfig(
        name="reach",
        observation={"state": {"shape": [4]}, "cam": {"shape": [48, 64, 3], "dtype": "uint8"}},
        action={"shape": [2], "low": -1, "high": 1},
    )
    with pytest.raises(
        DatasetImportError, match=r"video feature 'observation\.images\.top' but no video_path"
    ):
        import_lerobot(tmp_path, task, observation_keys={"observation.images.top": "cam"})


def test_lerobot_missing_info_json(tmp_path):
    write_v2(tmp_path)
    (tmp_path / "meta" / "info.json").unlink()
    with pytest.raises(DatasetImportError, match=r"info\.json.*missing"):
        import_lerobot(tmp_path, make_task())


def test_lerobot_bad_info_json_and_version(tmp_path):
    write_v2(tmp_path)
    (tmp_path / "meta" / "info.json").write_text("{not json")
    with pytest.raises(DatasetImportError, match=r"info\.json: not a valid"):
        import_lerobot(tmp_path, make_task())
    write_info(tmp_path, "v1.6", False, "data/*.parquet")
    with pytest.raises(DatasetImportError, match=r"info\.json: codebase_version 'v1.6'"):
        import_lerobot(tmp_path, make_task())


def test_lerobot_shape_or_dtype_that_does_not_fit_the_task(tmp_path):
    write_v2(tmp_path)
    with pytest.raises(DatasetImportError, match=r"info\.json.*'observation\.state'.*float32\[4\].*\[5\]"):
        import_lerobot(tmp_path, make_task(state_shape=(5,)))
    with pytest.raises(DatasetImportError, match=r"info\.json.*'observation\.state'.*float64"):
        import_lerobot(tmp_path, make_task(state_dtype="float64"))
    with pytest.raises(DatasetImportError, match=r"info\.json.*'action'"):
        import_lerobot(tmp_path, make_task(action_shape=(3,)))


def test_lerobot_data_that_contradicts_info_json(tmp_path):
    files = write_v2(tmp_path)
    frames = episode_frames(1)
    frames["observation.state"] = frames["observation.state"][:, :3].copy()  # rows of 3, info says 4
    pq.write_table(lerobot_table(frames, False, drop=("next.success",)), files[1])
    with pytest.raises(
        DatasetImportError, match=r"episode_000001\.parquet.*'observation\.state'.*length \[3\]"
    ):
        import_lerobot(tmp_path, make_task())
    frames = episode_frames(1)
    frames["action"] = frames["action"].astype(np.float64)
    pq.write_table(lerobot_table(frames, False, drop=("next.success",)), files[1])
    with pytest.raises(DatasetImportError, match=r"episode_000001\.parquet.*'action' holds float64"):
        import_lerobot(tmp_path, make_task())


def test_lerobot_truncated_or_corrupt_parquet(tmp_path):
    files = write_v2(tmp_path)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetImportError, match=r"episode_000002\.parquet: not a readable Parquet file"):
        import_lerobot(tmp_path, make_task())
    files[2].write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    with pytest.raises(DatasetImportError, match=r"episode_000002\.parquet"):
        import_lerobot(tmp_path, make_task())


def test_lerobot_missing_column(tmp_path):
    write_v3(tmp_path, drop=("action",))
    with pytest.raises(DatasetImportError, match=r"file-000\.parquet: missing column\(s\) \['action'\]"):
        import_lerobot(tmp_path, make_task())


def test_lerobot_partial_download_and_duplicate_frames(tmp_path):
    files = write_v2(tmp_path)
    files[1].unlink()
    with pytest.raises(DatasetImportError, match=r"info\.json: declares 3 episodes.*hold 2"):
        import_lerobot(tmp_path, make_task())
    frames = episode_frames(1)
    frames["frame_index"][3] = 2
    pq.write_table(lerobot_table(frames, False, drop=("next.success",)), files[1])
    with pytest.raises(
        DatasetImportError, match=r"episode_000001\.parquet: episode_index 1: duplicate frames"
    ):
        import_lerobot(tmp_path, make_task())


def test_lerobot_into_store_once(tmp_path):
    write_v3(tmp_path / "ds")
    episodes = import_lerobot(tmp_path / "ds", make_task())
    store = EpisodeStore(str(tmp_path / "store"))
    assert import_into_store(store, episodes) == {"stored": 3, "duplicates": 0}
    again = import_lerobot(tmp_path / "ds", make_task())
    assert import_into_store(store, again) == {"stored": 0, "duplicates": 3}
    back = store.get(episodes[2].episode_id)
    np.testing.assert_array_equal(back.actions, episodes[2].actions)
    assert (back.outcome, back.source, len(back)) == ("success", "offline", LENGTHS[2])
    assert store.stats("reach")["success"] == 2


def test_import_into_store_checks_everything_first(tmp_path):
    store = EpisodeStore(str(tmp_path / "store"))
    good = synthetic_episode(4, episode_id="good-1")
    bad = synthetic_episode(4, episode_id="bad id with spaces")
    with pytest.raises(DatasetImportError, match="bad id with spaces"):
        import_into_store(store, [good, bad])
    assert store.stats()["episodes"] == 0


# ------------------------------------------------------------------------------------------- our format


def test_fleetrl_folder_from_store_and_to_table(tmp_path):
    store = EpisodeStore(str(tmp_path / "src"))
    originals = [
        synthetic_episode(n, episode_id=f"ep-{n}", task="old", outcome="failure", seed=n) for n in (3, 4)
    ]
    for ep in originals:
        store.put(ep)
    extra = synthetic_episode(6, episode_id="ep-6", seed=6)
    (tmp_path / "src" / "nested" / "deeper").mkdir(parents=True)
    pq.write_table(to_table(extra)[0], tmp_path / "src" / "nested" / "deeper" / "ep-6.parquet")
    task = make_task()
    episodes = import_fleetrl_folder(tmp_path / "src", task)
    assert sorted(ep.episode_id for ep in episodes) == ["ep-3", "ep-4", "ep-6"]
    by_id = {ep.episode_id: ep for ep in episodes}
    for want in [*originals, extra]:
        got = by_id[want.episode_id]
        assert (got.source, got.task, len(got), got.outcome) == ("offline", "reach", len(want), want.outcome)
        np.testing.assert_array_equal(got.observations["state"], want.observations["state"])
        np.testing.assert_array_equal(got.final_observation["state"], want.final_observation["state"])
        np.testing.assert_array_equal(got.actions, want.actions)
    assert (
        by_id["ep-3"].meta["imported_from_task"] == "old" and "imported_from_task" not in by_id["ep-6"].meta
    )
    dest = EpisodeStore(str(tmp_path / "dest"))
    assert import_into_store(dest, episodes) == {"stored": 3, "duplicates": 0}
    assert import_into_store(dest, import_fleetrl_folder(tmp_path / "src", task))["duplicates"] == 3


def test_fleetrl_folder_spec_mismatch_and_corrupt_file(tmp_path):
    pq.write_table(to_table(synthetic_episode(3, episode_id="a"))[0], tmp_path / "a.parquet")
    with pytest.raises(
        DatasetImportError, match=r"a\.parquet: episode a does not fit.*'state' is float32\[4\]"
    ):
        import_fleetrl_folder(tmp_path, make_task(state_shape=(7,)))
    with pytest.raises(DatasetImportError, match=r"a\.parquet.*action"):
        import_fleetrl_folder(tmp_path, make_task(action_shape=(3,)))
    data = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "b.parquet").write_bytes(data[: len(data) - 20])
    with pytest.raises(DatasetImportError, match=r"b\.parquet"):
        import_fleetrl_folder(tmp_path, make_task())
    (tmp_path / "b.parquet").unlink()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "c.parquet")
    with pytest.raises(DatasetImportError, match=r"c\.parquet: Parquet file has no fleetrl metadata"):
        import_fleetrl_folder(tmp_path, make_task())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetImportError, match=r"empty: no \*\.parquet episode files"):
        import_fleetrl_folder(tmp_path / "empty", make_task())


def test_lerobot_nested_and_scalar_features(tmp_path):
    """A [2, 3] feature stored as nested lists (``datasets`` Array2D) and a shape-[1] feature as a scalar."""
    file = write_v3(tmp_path)
    table = pq.read_table(file)
    n = table.num_rows
    pose = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * 6 + 1, 3, dtype=np.int32)), pa.array(pose.ravel())
    )
    nested = pa.ListArray.from_arrays(pa.array(np.arange(0, n * 2 + 1, 2, dtype=np.int32)), inner)
    grip = np.arange(n, dtype=np.float32)
    pq.write_table(
        table.append_column("observation.pose", nested).append_column("observation.grip", pa.array(grip)),
        file,
    )
    info = json.loads((tmp_path / "meta" / "info.json").read_text())
    info["features"]["observation.pose"] = {"dtype": "float32", "shape": [2, 3], "names": None}
    info["features"]["observation.grip"] = {"dtype": "float32", "shape": [1], "names": None}
    (tmp_path / "meta" / "info.json").write_text(json.dumps(info))
    task = TaskConfig(
        name="reach",
        observation={"state": {"shape": [4]}, "pose": {"shape": [2, 3]}, "grip": {"shape": []}},
        action={"shape": [2], "low": -1, "high": 1},
    )
    episodes = import_lerobot(tmp_path, task)
    order = np.lexsort((table.column("frame_index").to_numpy(), table.column("episode_index").to_numpy()))
    np.testing.assert_array_equal(np.concatenate([ep.observations["pose"] for ep in episodes]), pose[order])
    np.testing.assert_array_equal(np.concatenate([ep.observations["grip"] for ep in episodes]), grip[order])
    assert episodes[0].final_observation["grip"].shape == ()
