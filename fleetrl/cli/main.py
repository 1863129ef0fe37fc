"""The ``fleetrl`` command.

fleetrl run configs/local.yaml        local Ray + platform + REST + the config's simulated robots, live view
fleetrl serve configs/local.yaml      the platform only (attach robots yourself), until Ctrl-C
fleetrl serve configs/cluster-platform.yaml --address auto    the same, on a running Ray cluster's head
fleetrl robot --sim Reacher-v5 --n 8 --task reach --api http://127.0.0.1:8000
fleetrl config check configs/local.yaml
fleetrl rollout show reach            (rollback, release, evaluate: which version the robots run)

Each command group lives in its own module and adds its own subparsers (``run.py``: run, serve, robot;
``demos.py``, ``critic.py``, ``value_report.py``, ``policy.py``, ``rollout.py``, ``config.py``); this one builds the top-level parser.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import httpx

from fleetrl.cli.config import add_config_parser
from fleetrl.cli.critic import add_critic_parser
from fleetrl.cli.demos import add_demos_parser
from fleetrl.cli.policy import add_policy_parser
from fleetrl.cli.rollout import add_rollout_parser
from fleetrl.cli.run import add_run_parsers
from fleetrl.cli.value_report import add_value_parser
from fleetrl.extras import missing_extra_message


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("fleetrl")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help, unless it is None, a flag's bool or already said."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or isinstance(default, bool) or default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)".strip()


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's help lists its options' defaults (subparsers are made of the parent's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``fleetrl`` parser: each command module adds its own subcommands, in the order help lists them."""
    parser = _Parser(prog="fleetrl", description="Asynchronous real-world RL across a robot fleet.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_parsers(sub)
    add_demos_parser(sub)
    add_critic_parser(sub)
    add_value_parser(sub)
    add_policy_parser(sub)
    add_rollout_parser(sub)
    add_config_parser(sub)
    return parser


# Chatter a user cannot act on, gone unless -v: gymnasium's notes on its own spaces' dtypes, Ray's notice that
# token authentication is on (it is: we keep it), Ray Serve's INFO lines about starting and deleting apps.
QUIET_WARNINGS = (r".*precision lowered by casting to float32.*",)


def quiet_third_party() -> None:
    import warnings

    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    os.environ.setdefault("FLEETRL_RAY_LOGGING_LEVEL", "ERROR")  # read by the platform's ray.init
    # Serve sets its logger's level and handlers when it starts; a filter on the logger itself stays.
    logging.getLogger("ray.serve").addFilter(lambda record: record.levelno >= logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # our INFO lines; other libraries only from WARNING (their INFO chatter comes back with -v)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("fleetrl").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        quiet_third_party()
    try:
        return args.func(args)
    except httpx.TransportError as exc:  # the platform is not there (or not yet): what to check, in one line
        try:
            url = exc.request.url
        except RuntimeError:  # raised without a request
            url = getattr(args, "api", "?")
        print(f"error: cannot reach the platform at {url} ({type(exc).__name__}: {exc}); is it running "
              "(fleetrl serve CONFIG) and is --api its REST URL?", file=sys.stderr)  # fmt: skip
        return 3
    except ImportError as exc:  # an optional part that is not installed: say which extra, in one line
        message = missing_extra_message(exc, f"fleetrl {args.command}")
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
