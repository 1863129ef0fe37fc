"""``fleetrl config check``: validate a platform YAML without starting anything."""

from __future__ import annotations

import argparse
from typing import Any

from fleetrl.cli.common import add_command_group, load_platform_config


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_platform_config(args.config)
    print(f"{args.config}: ok — {len(cfg.tasks)} task(s): {', '.join(t.name for t in cfg.tasks)}")
    return 0


def add_config_parser(subparsers: Any) -> None:
    """Add ``config`` (with its ``check`` subcommand) to the ``fleetrl`` subcommands."""
    csub = add_command_group(subparsers, "config", "configuration tools")
    check = csub.add_parser("check", help="validate a platform YAML")
    check.add_argument("config")
    check.set_defaults(func=cmd_config_check)
