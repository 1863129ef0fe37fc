"""``fleetrl run`` says when it goes on from an earlier run's state instead of starting fresh."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleetrl.cli.run import earlier_state
from fleetrl.platform.config import parse_config

ROOT = Path(__file__).resolve().parents[3]


def config(state_dir: Path):
    data = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    data["state_dir"] = str(state_dir)
    return parse_config(data, "local.yaml")


def test_a_fresh_state_dir_says_nothing_and_a_used_one_names_what_it_resumes(tmp_path):
    cfg = config(tmp_path / "state")
    assert earlier_state(cfg) is None
    (tmp_path / "state" / "episodes").mkdir(parents=True)
    assert earlier_state(cfg) is None  # an empty store is a fresh one
    (tmp_path / "state" / "episodes" / "catalog.sqlite").write_text("")
    assert "stored episodes" in earlier_state(cfg) and "learner" not in earlier_state(cfg)
    (tmp_path / "state" / "learners" / "reach").mkdir(parents=True)
    said = earlier_state(cfg)
    assert "learner checkpoints and stored episodes" in said and str(tmp_path / "state") in said
