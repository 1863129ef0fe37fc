"""``fleetrl value report``: episodes written the way the platform stores them (an ``EpisodeStore`` root,
or a plain folder of its episode files) -> report.json + value_curves.png."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from fleetrl.cli.value_report import add_value_parser, cmd_value_report
from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.store import EpisodeStore

torch.set_num_threads(1)

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
REPORT_KEYS = {
    "command",
    "episodes",
    "task",
    "seed",
    "steps",
    "checkpoint",
    "n_episodes",
    "n_train",
    "n_eval",
    "evaluated_on",
    "label_scale",
    "estimator",
    "training",
    "metrics",
    "plot",
}
METRIC_KEYS = {"mor", "bump_ratio", "bump_magnitude", "error_sensitivity", "error_slope", "per_episode"}


def reach(i: int, outcome: str, task: str = "reach"):
    """A stored-format episode whose first state entry is the distance to the goal (success: it closes
    at 0.02/step; failure: it stalls)."""
    rng = np.random.default_rng(i)
    n = int(rng.integers(30, 45)) if outcome == "success" else 40
    ep = synthetic_episode(n, episode_id=f"{task}-{outcome}-{i}", task=task, outcome=outcome, seed=i)
    x0 = 0.02 * n
    x = np.maximum(x0 - 0.02 * np.arange(n + 1), 0) if outcome == "success" else np.full(n + 1, x0)
    state = np.concatenate([x[:, None], rng.standard_normal((n + 1, 3))], axis=1).astype(np.float32)
    return dataclasses.replace(ep, observations={"state": state[:n]}, final_observation={"state": state[n]})


def write_store(root: Path, episodes) -> None:
    with EpisodeStore(str(root)) as store:
        for ep in episodes:
            store.put(ep)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fleetrl")
    add_value_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func is cmd_value_report
    return args.func(args)


def test_value_report_from_a_store(tmp_path, capsys):
    episodes = [reach(i, "success") for i in range(6)] + [reach(10 + i, "failure") for i in range(3)]
    episodes += [reach(20, "aborted"), reach(21, "success", task="other")]
    write_store(tmp_path / "store", episodes)
    out = tmp_path / "out"
    rc = run(
        ["value", "report", "--episodes", str(tmp_path / "store"), "--task", "reach"]
        + ["--steps", "20", "--holdout", "0", "--out", str(out), "--seed", "1"]
    )
    assert rc == 0
    printed = capsys.readouterr()
    assert "training the value estimator" in printed.out and "20/20" in printed.out  # its progress bar
    assert printed.out.strip().splitlines()[-1].startswith("value report:")
    report = json.loads((out / "report.json").read_text())
    assert set(report) == REPORT_KEYS and set(report["metrics"]) >= METRIC_KEYS
    assert report["task"] == "reach" and report["n_episodes"] == 9  # aborted and other task left out
    assert report["evaluated_on"] == "training" and report["n_eval"] == 9 and report["steps"] == 20
    assert report["metrics"]["n_success"] == 6 and report["metrics"]["n_failed"] == 3
    assert report["metrics"]["sources"]["boundaries_equal"] == 6
    assert report["metrics"]["sources"]["errors_failure"] == 3
    assert report["label_scale"]["c_fail"] == max(len(ep) for ep in episodes[:6])
    assert len(report["training"]["history"]) == 1 and report["training"]["final"]["step"] == 20
    for key in ("mor", "bump_ratio", "bump_magnitude", "error_sensitivity", "error_slope"):
        assert isinstance(report["metrics"][key], float), key
    assert Path(report["checkpoint"]).is_file()
    png = out / "value_curves.png"
    if HAVE_MATPLOTLIB:
        assert report["plot"] == str(png) and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:  # the venv has no matplotlib: the report is still written, the plot skipped with a warning
        assert report["plot"] is None and "matplotlib" in printed.err


def test_value_report_from_episode_files_and_a_saved_estimator(tmp_path):
    episodes = [reach(i, "success") for i in range(4)] + [reach(10 + i, "failure") for i in range(2)]
    write_store(tmp_path / "store", episodes)
    files = tmp_path / "files"
    files.mkdir()
    for f in (tmp_path / "store" / "reach").rglob("*.parquet"):
        shutil.copy(f, files / f.name)
    out = tmp_path / "out"
    assert (
        run(
            ["value", "report", "--episodes", str(files), "--steps", "5", "--out", str(out)]
            + ["--holdout", "0.34", "--history-frames", "0"]
        )
        == 0
    )
    first = json.loads((out / "report.json").read_text())
    assert first["evaluated_on"] == "held_out" and first["n_eval"] == 2 and first["n_train"] == 4
    assert first["estimator"]["history_frames"] == 0
    assert not (files / "catalog.sqlite").exists()  # a plain folder is only read
    again = tmp_path / "again"
    assert (
        run(
            ["value", "report", "--episodes", str(files), "--checkpoint", first["checkpoint"]]
            + ["--out", str(again)]
        )
        == 0
    )
    second = json.loads((again / "report.json").read_text())
    assert second["evaluated_on"] == "all" and second["n_eval"] == 6 and second["steps"] == 0
    assert second["checkpoint"] == first["checkpoint"] and second["training"]["final"] is None
    assert not (again / "value_estimator.pt").exists()


def test_value_report_refuses_mixed_tasks_and_empty_folders(tmp_path, capsys):
    write_store(tmp_path / "store", [reach(0, "success"), reach(1, "success", task="other")])
    assert run(["value", "report", "--episodes", str(tmp_path / "store"), "--out", str(tmp_path / "o")]) == 2
    assert "pass --task" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(["value", "report", "--episodes", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert run(["value", "report", "--episodes", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "bad.pt"
    torch.save({"something": 1}, bad)
    store = str(tmp_path / "store")
    argv = ["value", "report", "--episodes", store, "--task", "reach", "--out", str(tmp_path / "o")]
    assert run([*argv, "--checkpoint", str(bad)]) == 2
    assert run([*argv, "--steps", "0"]) == 2
    assert "not a value-estimator checkpoint" in capsys.readouterr().err
