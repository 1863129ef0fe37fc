"""workers/data/exporters.py: Episodes -> LeRobot v3.0 folder, read back by importers.import_lerobot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.exporters import export_lerobot
from fleetrl.workers.data.importers import import_lerobot
from fleetrl.workers.task import TaskConfig

OBS = {"state": ((10,), "float32")}
OUTCOMES = ("success", "timeout", "success")
LENGTHS = (4, 7, 5)


def make_episodes():
    return [
        synthetic_episode(
            n,
            outcome=outcome,
            obs_spec=OBS,
            action_shape=(2,),
            rewards=np.linspace(0, 1, n, dtype=np.float32) * (i + 1),
            seed=i,
        )
        for i, (n, outcome) in enumerate(zip(LENGTHS, OUTCOMES, strict=True))
    ]


def test_round_trip(tmp_path):
    episodes = make_episodes()
    target = tmp_path / "ds"
    result = export_lerobot(episodes, target, fps=10, robot_type="arm")
    assert result == {"episodes": 3, "frames": sum(LENGTHS), "path": str(target)}
    assert (target / "data/chunk-000/file-000.parquet").is_file()
    info = json.loads((target / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == sum(LENGTHS)
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temp folder left behind

    task = TaskConfig(
        name="reach", observation={"state": {"shape": [10]}}, action={"shape": [2], "low": -1, "high": 1}
    )
    back = import_lerobot(target, task)
    assert len(back) == 3
    for orig, ep in zip(episodes, back, strict=True):
        assert len(ep) == len(orig)
        assert ep.outcome == orig.outcome
        assert ep.terminated == orig.terminated and ep.truncated == orig.truncated
        np.testing.assert_array_equal(ep.actions, orig.actions)
        np.testing.assert_array_equal(ep.observations["state"], orig.observations["state"])
        np.testing.assert_array_equal(ep.columns["reward"], orig.columns["reward"])
        np.testing.assert_allclose(ep.columns["obs_time"], np.arange(len(orig)) / 10, rtol=1e-6)
        assert ep.robot_id == "lerobot-arm"


def test_refuses_non_empty_target(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        export_lerobot(make_episodes(), tmp_path / "ds", fps=10)
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["keep.txt"]


def test_empty_target_folder_is_fine(tmp_path):
    (tmp_path / "ds").mkdir()
    assert export_lerobot(make_episodes(), tmp_path / "ds", fps=10)["episodes"] == 3


def test_refuses_no_episodes(tmp_path):
    with pytest.raises(ValueError, match="no episodes"):
        export_lerobot([], tmp_path / "ds", fps=10)
    assert not (tmp_path / "ds").exists()


def test_refuses_mismatched_shapes(tmp_path):
    episodes = make_episodes()
    episodes.append(synthetic_episode(3, obs_spec={"state": ((9,), "float32")}))
    with pytest.raises(ValueError, match="episode 3 .* observation 'state'"):
        export_lerobot(episodes, tmp_path / "ds", fps=10)
    episodes[-1] = synthetic_episode(3, obs_spec={"other": ((10,), "float32")})
    with pytest.raises(ValueError, match="observation 'other'"):
        export_lerobot(episodes, tmp_path / "ds", fps=10)
    assert list(tmp_path.iterdir()) == []


def test_the_export_has_lerobot_v3_metadata_episodes_tasks_and_stats(tmp_path):
    """The v3.0 layout as LeRobot documents it: meta/episodes (where each episode's rows are, its own
    statistics), meta/tasks.parquet indexed by the task string, meta/stats.json over the dataset."""
    import pandas as pd
    import pyarrow.parquet as pq

    episodes = make_episodes()
    export_lerobot(episodes, tmp_path / "ds", fps=10)
    meta = tmp_path / "ds" / "meta"
    rows = pq.read_table(meta / "episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["episode_index"] for r in rows] == [0, 1, 2] and [r["length"] for r in rows] == list(LENGTHS)
    assert [(r["dataset_from_index"], r["dataset_to_index"]) for r in rows] == [(0, 4), (4, 11), (11, 16)]
    assert all(
        r["tasks"] == [episodes[0].task] and r["data/chunk_index"] == r["data/file_index"] == 0 for r in rows
    )
    for r, ep in zip(rows, episodes, strict=True):  # each episode's own statistics
        assert r["stats/action/count"] == [len(ep)]
        np.testing.assert_allclose(r["stats/action/mean"], ep.actions.mean(0), rtol=1e-6)
        np.testing.assert_allclose(
            r["stats/observation.state/max"], ep.observations["state"].max(0), rtol=1e-6
        )
    tasks = pd.read_parquet(meta / "tasks.parquet")
    assert list(tasks.index) == [episodes[0].task] and tasks.loc[episodes[0].task, "task_index"] == 0
    stats = json.loads((meta / "stats.json").read_text())
    info = json.loads((meta / "info.json").read_text())
    assert set(stats) == set(info["features"])
    actions = np.concatenate([ep.actions for ep in episodes])
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-6)
    assert stats["action"]["count"] == [sum(LENGTHS)] and stats["next.success"]["max"] == [1.0]
    # LeRobot's quantile statistics (QUANTILES normalisation needs q01/q99) and the file-size settings its
    # dataset tools (split, append, convert to video) read from info.json
    for q, level in (("q01", 0.01), ("q50", 0.5), ("q99", 0.99)):
        np.testing.assert_allclose(stats["action"][q], np.quantile(actions, level, axis=0), rtol=1e-6)
        assert np.shape(rows[0][f"stats/action/{q}"]) == (2,)
    assert info["data_files_size_in_mb"] == 100 and info["video_files_size_in_mb"] == 200


def test_camera_frames_export_as_image_features_and_import_back_exactly(tmp_path):
    import pyarrow.parquet as pq

    from fleetrl.workers.data.importers.common import DatasetImportError

    rng = np.random.default_rng(0)
    episodes = []
    for i, n in enumerate((3, 5)):
        ep = synthetic_episode(n, obs_spec=OBS, action_shape=(2,), seed=i)
        frames = rng.integers(0, 256, (n + 1, 16, 16, 3), dtype=np.uint8)
        episodes.append(ep.__class__(**{**ep.__dict__, "observations": {**ep.observations, "cam": frames[:n]},
                                        "final_observation": {**ep.final_observation, "cam": frames[n]}}))  # fmt: skip
    export_lerobot(episodes, tmp_path / "ds", fps=10)
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"]["observation.cam"] == {
        "dtype": "image",
        "shape": [16, 16, 3],
        "names": ["height", "width", "channels"],
    }
    column = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet").column("observation.cam")
    assert column.type.names == ["bytes", "path"]  # LeRobot's image struct (PNG bytes)
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())["observation.cam"]
    assert np.array(stats["mean"]).shape == (3, 1, 1) and 0 < stats["mean"][0][0][0] < 1
    task = TaskConfig(
        name="reach",
        observation={"state": {"shape": [10]}, "cam": {"shape": [16, 16, 3], "dtype": "uint8"}},
        action={"shape": [2], "low": -1, "high": 1},
    )
    back = import_lerobot(tmp_path / "ds", task)
    for orig, ep in zip(episodes, back, strict=True):
        np.testing.assert_array_equal(ep.observations["cam"], orig.observations["cam"])
    wrong = task.model_copy(
        update={
            "observation": {
                **task.observation,
                "cam": task.observation["cam"].model_copy(update={"shape": (8, 8, 3)}),
            }
        }
    )
    with pytest.raises(DatasetImportError, match=r"an image of shape \[16, 16, 3\]"):
        import_lerobot(tmp_path / "ds", TaskConfig.model_validate(wrong.model_dump()))


def camera_episodes(lengths, size=16, seed=0):
    """Synthetic episodes with a ``cam`` key: a bright square that moves one pixel per step over noise
    (frames a video codec must keep apart)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        ep = synthetic_episode(n, obs_spec=OBS, action_shape=(2,), seed=i)
        frames = rng.integers(0, 16, (n + 1, size, size, 3), dtype=np.uint8)
        for t in range(n + 1):
            frames[t, 4:10, (t + i) % (size - 6) : (t + i) % (size - 6) + 6] = 230
        out.append(ep.__class__(**{**ep.__dict__, "observations": {**ep.observations, "cam": frames[:n]},
                                   "final_observation": {**ep.final_observation, "cam": frames[n]}}))  # fmt: skip
    return out


def test_camera_frames_export_as_video_features_and_import_back_by_time(tmp_path):
    """``video=True``: one AV1 mp4 per camera under videos/, episodes located by from_timestamp in
    meta/episodes (LeRobot v3.0), no data column; the importer decodes it and finds each row's frame."""
    pytest.importorskip("av", reason="PyAV is in the dev extra")
    import pyarrow.parquet as pq

    episodes = camera_episodes((6, 9, 5), size=32)
    export_lerobot(episodes, tmp_path / "ds", fps=10, video=True)
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    feature = info["features"]["observation.cam"]
    assert feature["dtype"] == "video" and feature["shape"] == [32, 32, 3]
    assert feature["info"]["video.codec"] == "av1" and feature["info"]["video.fps"] == 10
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (tmp_path / "ds/videos/observation.cam/chunk-000/file-000.mp4").stat().st_size > 0
    assert "observation.cam" not in pq.read_schema(tmp_path / "ds/data/chunk-000/file-000.parquet").names
    meta = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert meta["videos/observation.cam/from_timestamp"] == [0.0, 0.6, 1.5]
    assert meta["videos/observation.cam/to_timestamp"] == [0.6, 1.5, 2.0]

    task = TaskConfig(
        name="reach",
        observation={"state": {"shape": [10]}, "cam": {"shape": [32, 32, 3], "dtype": "uint8"}},
        action={"shape": [2], "low": -1, "high": 1},
    )
    back = import_lerobot(tmp_path / "ds", task)
    for orig, ep in zip(episodes, back, strict=True):
        want, got = orig.observations["cam"].astype(int), ep.observations["cam"].astype(int)
        assert got.shape == want.shape
        # lossy, but each row gets its own frame: closer to it than to the frame before
        err = np.abs(got - want).mean(axis=(1, 2, 3))
        assert err.max() < 8, err
        to_previous = np.abs(got[1:] - want[:-1]).mean(axis=(1, 2, 3))
        assert (err[1:] < to_previous).all(), (err, to_previous)
        np.testing.assert_array_equal(ep.observations["state"], orig.observations["state"])


def test_a_video_that_lacks_frames_for_some_rows_is_refused(tmp_path):
    pytest.importorskip("av", reason="PyAV is in the dev extra")
    from fleetrl.workers.data.importers.common import DatasetImportError
    from fleetrl.workers.data.video import encode_video

    episodes = camera_episodes((4, 6))
    export_lerobot(episodes, tmp_path / "ds", fps=10, video=True)
    video = tmp_path / "ds/videos/observation.cam/chunk-000/file-000.mp4"
    encode_video(np.concatenate([ep.observations["cam"] for ep in episodes])[:7], video, fps=10)  # 3 short
    task = TaskConfig(
        name="reach",
        observation={"state": {"shape": [10]}, "cam": {"shape": [16, 16, 3], "dtype": "uint8"}},
        action={"shape": [2], "low": -1, "high": 1},
    )
    with pytest.raises(DatasetImportError, match=r"episode_index 1: no video frame at 0\.7000 s"):
        import_lerobot(tmp_path / "ds", task)


def test_lerobot_itself_opens_the_export_and_reads_frames_back(tmp_path):
    """Where the ``lerobot`` package is installed: its ``LeRobotDataset`` opens our export offline and each
    item carries the frame, state and action we wrote (lerobot 0.4 pins torch < 2.11; not installed by
    ``make``, so this runs on machines that have it)."""
    pytest.importorskip("lerobot", reason="the lerobot package is not installed (it pins torch < 2.11)")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    episodes = camera_episodes((6, 9, 5))
    export_lerobot(episodes, tmp_path / "ds", fps=10)
    ds = LeRobotDataset(repo_id="local/fleetrl-export", root=tmp_path / "ds")
    assert len(ds) == 20 and ds.fps == 10
    frames = np.concatenate([ep.observations["cam"] for ep in episodes])
    actions = np.concatenate([ep.actions for ep in episodes])
    for i in (0, 7, 19):
        item = ds[i]
        np.testing.assert_allclose(item["action"].numpy(), actions[i], rtol=1e-6)
        np.testing.assert_allclose(
            item["observation.cam"].numpy(), frames[i].transpose(2, 0, 1) / 255.0, atol=1e-6
        )
