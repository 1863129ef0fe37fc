"""fleetrl.models.export and ``fleetrl policy export``: every policy family exported and loaded back from the
folder alone acts exactly as the policy it came from (same observation, same seed); a task starts from an
export with ``policy: {checkpoint: DIR}``, which is refused naming what differs when it does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter

from fleetrl.models.export import POLICY_FILE, export_policy, load_policy
from fleetrl.models.policies import PolicyConfig, build_policy
from fleetrl.robots.protocol import ArraySpec

OBS = {"state": ArraySpec((6,), "float32"), "cam": ArraySpec((16, 16, 3), "uint8")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)
CNN = {"channels": [8], "strides": [2], "feature_dim": 8}
FAMILIES = {
    "gaussian_mlp": {"family": "gaussian_mlp", "hidden": [16], "encoder": CNN},
    "flow_chunk": {"family": "flow_chunk", "hidden": [16], "flow_steps": 2, "encoder": CNN},
    "residual": {"family": "residual", "base": {"family": "flow_chunk", "hidden": [16], "flow_steps": 2},
                 "hidden": [16], "encoder": CNN},
    "token_lm": {"family": "token_lm", "hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 16},
}  # fmt: skip


def config(family: str, **extra):
    return TypeAdapter(PolicyConfig).validate_python(FAMILIES[family] | extra)


def observation(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    obs = {"state": torch.randn(3, 6, generator=g)}
    if family != "token_lm":  # token_lm reads flat state entries only
        obs["cam"] = torch.randint(0, 256, (3, 16, 16, 3), generator=g, dtype=torch.uint8)
    return obs


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, msg=name)


def trained(policy: torch.nn.Module) -> torch.nn.Module:
    """Weights no fresh build has: every parameter moved."""
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_exports_and_loads_back_acting_the_same(tmp_path, family):
    obs_spec = OBS if family != "token_lm" else {"state": OBS["state"]}
    cfg = config(family)
    policy = trained(build_policy(cfg, obs_spec, ACT, 4)).eval()
    out = export_policy(policy, cfg, obs_spec, ACT, 4, tmp_path / "exp", {"task": "t", "version": 7})
    meta = json.loads((out / POLICY_FILE).read_text())
    assert meta["source"] == {"task": "t", "version": 7} and meta["chunk_len"] == 4
    loaded = load_policy(out)
    obs = observation(family)
    torch.manual_seed(1)
    want = policy.act(obs, deterministic=True)[0]
    torch.manual_seed(1)
    got = loaded.act(obs, deterministic=True)[0]
    torch.testing.assert_close(got, want)
    fresh = build_policy(cfg, obs_spec, ACT, 4).eval()
    torch.manual_seed(1)
    assert not torch.allclose(fresh.act(obs, deterministic=True)[0], want)  # the weights made the difference


def test_a_task_starts_from_an_export_and_a_misfit_is_refused(tmp_path):
    cfg = config("flow_chunk")
    policy = trained(build_policy(cfg, OBS, ACT, 4)).eval()
    out = export_policy(policy, cfg, OBS, ACT, 4, tmp_path / "exp")
    started = build_policy(config("flow_chunk", checkpoint=str(out), seed=5), OBS, ACT, 4)
    assert_same_weights(policy, started)
    with pytest.raises(ValueError, match="does not fit this task's policy: chunk_len differ"):
        build_policy(config("flow_chunk", checkpoint=str(out)), OBS, ACT, 5)
    with pytest.raises(ValueError, match="observation_spec, policy differ"):
        build_policy(config("flow_chunk", checkpoint=str(out), hidden=[8]), {"state": OBS["state"]}, ACT, 4)
    with pytest.raises(ValueError, match="is not an exported fleetrl policy"):
        build_policy(config("flow_chunk", checkpoint=str(tmp_path)), OBS, ACT, 4)
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        export_policy(policy, cfg, OBS, ACT, 4, out)


def test_the_cli_exports_a_learner_checkpoint_by_version(tmp_path, capsys):
    import yaml

    from fleetrl.cli import main
    from fleetrl.workers.learning.paths import learner_checkpoint_root

    task = {"name": "reach", "observation": {"state": {"shape": [6]}}, "action": {"shape": [2], "low": -1, "high": 1},
            "chunk_len": 4, "policy": FAMILIES["gaussian_mlp"] | {"encoder": {}}}  # fmt: skip
    cfg_file = tmp_path / "platform.yaml"
    cfg_file.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "tasks": [task]}))
    cfg = config("gaussian_mlp", encoder={})
    obs_spec = {"state": OBS["state"]}
    root = Path(learner_checkpoint_root(tmp_path / "state" / "learners", "reach"))
    policies = {}
    for step, version in ((10, 3), (20, 5)):  # two kept checkpoints, as a learner leaves them
        policies[version] = trained(build_policy(cfg, obs_spec, ACT, 4))
        folder = root / f"checkpoint_{step:010d}_{step}"
        folder.mkdir(parents=True)
        torch.save(
            {"policy": policies[version].state_dict(), "step": step, "version": version},
            folder / "learner.pt",
        )
    export = ["policy", "export", str(cfg_file), "--task", "reach"]
    assert main([*export, "--version", "3", "--out", str(tmp_path / "v3")]) == 0
    assert "exported reach version 3 (step 10)" in capsys.readouterr().out
    loaded = load_policy(tmp_path / "v3")
    assert_same_weights(policies[3], loaded)
    assert main([*export, "--out", str(tmp_path / "new")]) == 0
    assert json.loads((tmp_path / "new" / POLICY_FILE).read_text())["source"]["version"] == 5  # newest
    assert main([*export, "--version", "4", "--out", str(tmp_path / "x")]) == 2
    assert "version 4 of 'reach' is not among the kept checkpoints [3, 5]" in capsys.readouterr().err
