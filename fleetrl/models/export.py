"""A trained policy as a folder that torch alone can load and run (no Ray, no platform), and that a task can
start from (``policy: {checkpoint: DIR}``).

The folder follows the Hugging Face ``PyTorchModelHubMixin`` convention of weights + a JSON config:
``model.safetensors`` (the policy's state dict) and ``fleetrl_policy.json`` (the policy config, the
observation and action specs, the chunk length, a fingerprint of all four, and where the weights came
from). A token_lm policy is written by its own ``save_pretrained`` (its Llama, tokenizer and extras) beside
the same JSON. Loading::

    from fleetrl.models.export import load_policy
    policy = load_policy("exported/reach")
    actions, log_probs = policy.act({"state": torch.zeros(1, 10)}, deterministic=True)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import torch
from pydantic import TypeAdapter
from torch import nn

from fleetrl.extras import require
from fleetrl.robots.protocol import ArraySpec, specs_from_dict, specs_to_dict

POLICY_FILE = "fleetrl_policy.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = 1


NOT_FIT = ("checkpoint", "seed", "base_checkpoint")  # where weights come from and the initial seed


def fit_facts(cfg: Any, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int) -> dict:
    """What must match for weights to fit a policy: its config (less ``NOT_FIT``), the specs and the chunk
    length, keyed as the exported JSON keys them."""
    return {
        "policy": cfg.model_dump(mode="json", exclude=set(NOT_FIT)),
        "observation_spec": specs_to_dict(obs_spec),
        "action_spec": action_spec.to_dict(),
        "chunk_len": chunk_len,
    }


def fingerprint(cfg: Any, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int) -> str:
    """A short hash of ``fit_facts``."""
    body = fit_facts(cfg, obs_spec, action_spec, chunk_len)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def export_policy(
    policy: nn.Module,
    cfg: Any,
    obs_spec: dict[str, ArraySpec],
    action_spec: ArraySpec,
    chunk_len: int,
    directory: str | Path,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``policy`` (built from ``cfg`` for these specs) to ``directory`` (new, or an empty folder),
    atomically: everything goes to a temporary sibling first. ``source``: where the weights came from
    (task, version, step), kept in the JSON."""
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"export: {out} exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        if cfg.family == "token_lm":
            policy.save_pretrained(tmp)
        else:
            save_file = require("safetensors.torch", "policy export").save_file
            # nn.Module's own state_dict: everything, a residual policy's frozen base included (its
            # state_dict leaves the base out because replicas rebuild it; an export must stand alone)
            state = {k: v.detach().cpu().contiguous() for k, v in nn.Module.state_dict(policy).items()}
            save_file(state, tmp / WEIGHTS_FILE)
        meta = {
            "format": FORMAT,
            "policy": cfg.model_dump(mode="json", exclude={"checkpoint", "base_checkpoint"}),
            "observation_spec": specs_to_dict(obs_spec),
            "action_spec": action_spec.to_dict(),
            "chunk_len": chunk_len,
            "fingerprint": fingerprint(cfg, obs_spec, action_spec, chunk_len),
            "source": source or {},
        }
        (tmp / POLICY_FILE).write_text(json.dumps(meta, indent=2))
        tmp.chmod(0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / POLICY_FILE
    if not path.is_file():
        raise ValueError(f"{directory} is not an exported fleetrl policy ({POLICY_FILE} is missing)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, this fleetrl reads format {FORMAT}")
    return meta


def load_weights(
    policy: nn.Module, cfg: Any, obs_spec, action_spec, chunk_len: int, directory: str | Path
) -> None:
    """Load an exported folder's weights into ``policy`` after checking they fit (``fingerprint``): a
    policy config, spec or chunk length that differs from the export's is a ValueError naming it."""
    meta = read_meta(directory)
    if meta["fingerprint"] != fingerprint(cfg, obs_spec, action_spec, chunk_len):
        mine = fit_facts(cfg, obs_spec, action_spec, chunk_len)
        theirs = {**meta, "policy": {k: v for k, v in meta["policy"].items() if k not in NOT_FIT}}
        diff = sorted(
            k for k in mine if json.dumps(mine[k], sort_keys=True) != json.dumps(theirs[k], sort_keys=True)
        )
        raise ValueError(f"checkpoint {directory} does not fit this task's policy: {', '.join(diff)} differ")
    load_file = require("safetensors.torch", "policy checkpoints").load_file
    policy.load_state_dict(load_file(Path(directory) / WEIGHTS_FILE))  # a residual's base entries load too


def load_policy(directory: str | Path, device: str = "cpu") -> nn.Module:
    """The exported policy, ready to ``act`` (eval mode), built from the folder alone."""
    from fleetrl.models.policies import PolicyConfig, build_policy

    meta = read_meta(directory)
    obs_spec, action_spec = (
        specs_from_dict(meta["observation_spec"]),
        ArraySpec.from_dict(meta["action_spec"]),
    )
    cfg = TypeAdapter(PolicyConfig).validate_python(meta["policy"] | {"checkpoint": str(directory)})
    policy = build_policy(cfg, obs_spec, action_spec, meta["chunk_len"])
    return policy.to(device).eval()


def load_checkpoint(source: str | Path | BinaryIO) -> dict[str, Any]:
    """A learner checkpoint file (``learner.pt``: a path, or its bytes as a file object): its policy
    weights, step and version."""
    return torch.load(source, map_location="cpu", weights_only=False)
