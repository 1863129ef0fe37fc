"""What several ``fleetrl`` commands share: loading the platform YAML, the admin token and where the REST
API is, stopping on Ctrl-C, and command groups (``fleetrl demos …``, ``fleetrl critic …``).

Only the standard library at import time: ``fleetrl --help`` must not pay for Ray or torch.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM/SIGHUP (a closed terminal or dropped SSH session) set ``stop`` (a graceful shutdown:
    robots deregistered, actors stopped); a second one raises KeyboardInterrupt."""

    def handler(signum, frame):  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if hasattr(signal, "SIGHUP"):  # not on Windows
        signal.signal(signal.SIGHUP, handler)


DEFAULT_STATE_DIR = "~/.fleetrl/local"  # PlatformConfig.state_dir's default


def admin_token(args: argparse.Namespace) -> str | None:
    """--token, else the environment variable named by --token-env, else ``<state-dir>/admin_token`` (the
    file a platform on this machine writes when no token is set); says what to do when none has one."""
    token = args.token or os.environ.get(args.token_env)
    path = Path(args.state_dir).expanduser() / "admin_token"
    if not token and path.is_file():
        token = path.read_text().strip() or None
    if not token:
        print(
            f"error: no admin token: pass --token, set {args.token_env}, or point --state-dir at the platform's "
            f"state folder (no {path} here)",
            file=sys.stderr,
        )
    return token


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a running platform's REST API is, and the admin token for it (read by ``admin_token``)."""
    parser.add_argument("--api", required=True, help="REST base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", default=None, help="admin token (default: from --token-env)")
    parser.add_argument("--token-env", default="FLEETRL_ADMIN_TOKEN", help="env var holding the admin token")
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="a platform's state folder on this machine: its admin_token file is the last fallback",
    )


def load_platform_config(path: str):
    """The platform YAML at ``path``; exits with status 2 and the config error on stderr when invalid."""
    from fleetrl.platform.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def add_command_group(subparsers: Any, name: str, help_text: str) -> Any:
    """Add command ``name`` whose subcommands (required, in ``args.<name>_command``) go on the returned
    subparsers."""
    group = subparsers.add_parser(name, help=help_text)
    return group.add_subparsers(dest=f"{name}_command", required=True)
