"""``fleetrl policy export``: a task's trained policy out of the platform, as a folder torch alone loads
(``fleetrl.models.export``). Reads the learner's checkpoints on disk, so the platform need not run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fleetrl.cli.common import add_command_group, load_platform_config


def cmd_policy_export(args: argparse.Namespace) -> int:
    from fleetrl.models.export import export_policy, load_checkpoint
    from fleetrl.models.policies import build_policy
    from fleetrl.workers.learning.paths import learner_checkpoint_root, read_bytes, saved_checkpoints

    cfg = load_platform_config(args.config)
    task = next((t for t in cfg.tasks if t.name == args.task), None)
    if task is None:
        print(
            f"error: no task {args.task!r} in {args.config} (tasks: {[t.name for t in cfg.tasks]})",
            file=sys.stderr,
        )
        return 2
    root = learner_checkpoint_root(cfg.learner_storage_path, task.name)
    files = saved_checkpoints(root)
    if not files:
        print(
            f"error: no learner checkpoints of {task.name!r} under {root} (has its learner run?)",
            file=sys.stderr,
        )
        return 2
    # newest first, read one at a time: a learner.pt carries every algorithm's optimiser state
    saved = ((f, load_checkpoint(read_bytes(f))) for f in reversed(files))
    match = next(((f, s) for f, s in saved if args.version in (None, s["version"])), None)
    if match is None:
        kept = sorted({load_checkpoint(read_bytes(f))["version"] for f in files})
        print(
            f"error: version {args.version} of {task.name!r} is not among the kept checkpoints {kept}",
            file=sys.stderr,
        )
        return 2
    path, state = match
    policy = build_policy(task.policy, task.observation_spec, task.action_spec, task.chunk_len)
    policy.load_state_dict(state["policy"])
    source = {"task": task.name, "version": state["version"], "step": state["step"], "checkpoint": str(path)}
    try:
        out = export_policy(
            policy, task.policy, task.observation_spec, task.action_spec, task.chunk_len, args.out, source
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {task.name} version {state['version']} (step {state['step']}) to {out}")
    return 0


def add_policy_parser(subparsers: Any) -> None:
    """Add ``policy`` (with ``export``) to the ``fleetrl`` subcommands."""
    psub = add_command_group(subparsers, "policy", "trained policies out of the platform")
    exp = psub.add_parser(
        "export", help="write a task's policy as safetensors + config, loadable with torch alone"
    )
    exp.add_argument("config", help="the platform config the task's learner ran with")
    exp.add_argument("--task", required=True)
    exp.add_argument(
        "--version", type=int, default=None, help="weight version (default: the newest checkpoint)"
    )
    exp.add_argument("--out", required=True, help="new or empty folder")
    exp.set_defaults(func=cmd_policy_export)
