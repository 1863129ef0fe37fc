"""W&B logging beside TensorBoard (``learner.wandb``): the learner's scalars reach a W&B run, here an
offline one whose files the test reads back."""

from __future__ import annotations

import pytest

from fleetrl.workers.learning.reporting import Scalars
from fleetrl.workers.task import LearnerConfig, WandbConfig


def test_learner_scalars_are_logged_to_an_offline_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'fleetrl[wandb]')")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LearnerConfig(algorithm="bc", wandb={"project": "fleetrl-test", "mode": "offline"})
    assert isinstance(cfg.wandb, WandbConfig)
    scalars = Scalars("reach", None, str(tmp_path / "tensorboard" / "reach"), cfg.wandb, {"algorithm": "bc"})
    for step in (1, 2, 3):
        scalars.log(step, version=step, algorithm="bc", losses={"bc_loss": 1.0 / step}, updates_per_s=5.0,
                    rollout={"success_rate": 0.1 * step})  # fmt: skip
    summary = dict(scalars.run.summary)
    assert summary["bc/bc_loss"] == pytest.approx(1 / 3) and summary["rollout/success_rate"] == pytest.approx(
        0.3
    )
    assert summary["learner/version"] == 3 and summary["_step"] == 3
    scalars.close()  # also ends W&B's service process (it kept 2/3 of a core busy for the rest of a session)
    (logged,) = (tmp_path / "wandb").glob("**/offline-run-*/run-*.wandb")  # the run, for ``wandb sync``
    assert logged.stat().st_size > 0 and (tmp_path / "tensorboard" / "reach").is_dir()


def test_a_missing_wandb_install_is_one_line_naming_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'", name="wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    monkeypatch.delitem(__import__("sys").modules, "wandb", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'fleetrl\[wandb\]'"):
        Scalars("reach", None, None, WandbConfig(project="p"))
