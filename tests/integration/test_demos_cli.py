"""`fleetrl demos collect` records oracle demos to disk; `fleetrl demos import` hands a folder to the platform."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from fleetrl.cli import main
from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.store import EpisodeStore
from tests.conftest import ADMIN_TOKEN


def test_collect_oracle_demos_then_import(platform, tmp_path, capsys):
    out = tmp_path / "cube"
    r = subprocess.run(
        [sys.executable, "-m", "fleetrl.cli", "demos", "collect", "--n", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 episodes" in r.stdout
    with EpisodeStore(str(out)) as store:
        rows = store.list()
    assert len(rows) == 2 and all(row["source"] == "offline" and row["n_steps"] > 10 for row in rows)
    # The test platform serves only `reach`: cube demos do not fit its specs and are refused as a whole.
    code = main(
        ["demos", "import", str(out), "--task", "reach", "--api", platform.rest_url, "--token", ADMIN_TOKEN]
    )
    assert code == 1 and ".parquet" in capsys.readouterr().err
    reach = EpisodeStore(str(tmp_path / "reach"))
    reach.put(
        synthetic_episode(
            8, episode_id="cli-demo-1", obs_spec={"state": ((10,), "float32")}, source="offline"
        )
    )
    reach.close()
    again = ["demos", "import", str(tmp_path / "reach"), "--task", "reach", "--api", platform.rest_url,
             "--token", ADMIN_TOKEN]  # fmt: skip
    assert main(again) == 0 and "imported into reach: 1 new episodes" in capsys.readouterr().out
    assert main(again) == 0  # the same episode again: stored once, and the user is told why
    assert "0 new episodes, 1 already stored (same episode ids" in capsys.readouterr().out


def test_collect_with_a_scripted_policy(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "fleetrl.cli", "demos", "collect", "--env", "Reacher-v5", "--policy", "reacher",
         "--task", "reach", "--n", "3", "--out", str(tmp_path / "reach"), "--camera", "32"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "MUJOCO_GL": "egl"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 episodes (3 successful" in r.stdout
    assert "3/3" in r.stdout and "collecting reacher demos" in r.stdout  # the progress bar's last state
    # ... and exported as a LeRobot v3.0 dataset (the camera as an mp4 video feature) that the LeRobot
    # importer reads back.
    from fleetrl.workers.data.importers import import_lerobot
    from fleetrl.workers.task import TaskConfig

    out = tmp_path / "lerobot"
    assert main(["demos", "export", "--store", str(tmp_path / "reach"), "--task", "reach", "--out", str(out),
                 "--fps", "20", "--video"]) == 0  # fmt: skip
    assert (out / "videos/observation.camera/chunk-000/file-000.mp4").is_file()
    task = TaskConfig(
        name="reach",
        observation={"state": {"shape": [10]}, "camera": {"shape": [32, 32, 3], "dtype": "uint8"}},
        action={"shape": [2], "low": -1, "high": 1},
    )
    back = import_lerobot(out, task)
    assert len(back) == 3 and all(ep.outcome == "success" for ep in back)
    with EpisodeStore(str(tmp_path / "reach")) as store:
        stored = sorted((ep for _, ep in store.iter_episodes()), key=len)
    assert sorted(len(ep) for ep in back) == [len(ep) for ep in stored]
    for ep, orig in zip(sorted(back, key=len), stored, strict=True):  # the rendered frames, within AV1's loss
        assert np.abs(ep.observations["camera"].astype(int) - orig.observations["camera"]).mean() < 6
    assert main(["demos", "export", "--store", str(tmp_path / "reach"), "--task", "reach", "--out", str(out),
                 "--fps", "20"]) == 1  # fmt: skip  # refuses to overwrite


def test_collect_servo_demos_records_the_wrapper_they_need(tmp_path, capsys):
    out = tmp_path / "servo"
    assert main(["demos", "collect", "--env", "Reacher-v5", "--policy", "reacher-servo", "--task", "reach",
                 "--n", "2", "--out", str(out)]) == 0  # fmt: skip
    assert "2 episodes (2 successful" in capsys.readouterr().out
    with EpisodeStore(str(out)) as store:
        eps = [ep for _, ep in store.iter_episodes()]
    assert [ep.meta["wrappers"] for ep in eps] == [["fleetrl.robots.servo:DampedJointServo"]] * 2
