"""``fleetrl rollout``: which version a task's robots run, an operator's rollback, and evaluations.

fleetrl rollout show reach                     mode, stable/pinned/newest version, trial, verdicts, robots
fleetrl rollout rollback reach 12              pin new episodes to version 12 (``release`` undoes it)
fleetrl rollout evaluate reach --version 12 --episodes 50    run evaluation episodes, wait, print the result
fleetrl rollout evaluate reach --sim Reacher-v5 --sim-robots 4   ... on sim robots the platform starts for it

Thin clients of the REST API (``/v1/tasks/{task}/rollout``, ``/rollback``, ``/evaluations``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from fleetrl.cli.common import add_api_arguments, add_command_group, admin_token
from fleetrl.cli.progress import progress_bar
from fleetrl.platform.rollout_text import versions_text


def _call(args: argparse.Namespace, method: str, path: str, **kwargs) -> Any:
    """One API call; a refusal is printed as one line and exits with status 1."""
    import httpx

    token = admin_token(args)
    if not token:
        raise SystemExit(2)
    r = httpx.request(method, f"{args.api.rstrip('/')}{path}", headers={"Authorization": f"Bearer {token}"},
                      timeout=180, **kwargs)  # fmt: skip
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        print(f"error: {method} {path} refused ({r.status_code}): {detail}", file=sys.stderr)
        raise SystemExit(1)
    return r.json()


def _print_state(state: dict[str, Any]) -> None:
    print(f"{state['task']}: mode {state['mode']}, newest {state['newest']}; {versions_text(state)}")
    for v in state["verdicts"][-5:]:
        print(f"  {v['candidate']} {v['decision'].replace('_', ' ')}: canary {v['canary_success']:.0%} vs "
              f"stable {v['stable_success']:.0%} on {v['stable']} ({v['episodes']['canary']}/{v['episodes']['stable']} episodes)")  # fmt: skip
    by_version: dict[Any, list[str]] = {}
    for robot, version in sorted(state["robots"].items()):
        by_version.setdefault(version, []).append(robot)
    for version, robots in by_version.items():
        print(f"  version {version if version is not None else '-'}: {len(robots)} robots ({', '.join(robots[:6])}"
              f"{', …' if len(robots) > 6 else ''})")  # fmt: skip


def cmd_show(args: argparse.Namespace) -> int:
    _print_state(_call(args, "GET", f"/v1/tasks/{args.task}/rollout"))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    _print_state(_call(args, "POST", f"/v1/tasks/{args.task}/rollback", json={"version": args.version}))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    _print_state(_call(args, "DELETE", f"/v1/tasks/{args.task}/rollback"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    body = {"episodes": args.episodes, "deterministic": not args.sample, "version": args.version,
            "robots": args.robots or None}  # fmt: skip
    if args.sim:
        body["sim"] = {"env": args.sim, "count": args.sim_robots}
    record = _call(args, "POST", f"/v1/tasks/{args.task}/evaluations", json=body)
    ident = record["evaluation_id"]
    print(f"evaluation {ident}: version {record['version']}, {record['episodes']} episodes "
          f"({'policy mode' if record['deterministic'] else 'sampled'})")  # fmt: skip
    if args.no_wait:
        return 0
    with progress_bar("evaluating", record["episodes"], transient=True) as update:
        while record["status"] == "running":
            time.sleep(1.0)
            record = _call(args, "GET", f"/v1/tasks/{args.task}/evaluations/{ident}")
            update(record["episodes_done"])
    if record["status"] != "done":
        print(
            f"error: evaluation {ident} {record['status']} after {record['episodes_done']} episodes",
            file=sys.stderr,
        )
        return 1
    lo, hi = record["success_ci95"]
    line = f"version {record['version']}: success {record['success_rate']:.0%} (95 % CI {lo:.0%}-{hi:.0%})"
    if record["return_ci95"] is not None:
        line += f", return {record['return_mean']:.2f} (95 % CI {record['return_ci95'][0]:.2f} to {record['return_ci95'][1]:.2f})"
    print(f"{line} over {record['episodes_done']} episodes")
    return 0


def add_rollout_parser(subparsers: Any) -> None:
    """Add ``rollout`` (show, rollback, release, evaluate) to the ``fleetrl`` subcommands."""
    rsub = add_command_group(
        subparsers, "rollout", "which version robots run: canary state, rollback, evaluation"
    )
    show = rsub.add_parser("show", help="mode, versions, the canary trial, verdicts, each robot's version")
    back = rsub.add_parser("rollback", help="pin every new episode of a task to an earlier version")
    back.add_argument("version", type=int, help="the version to pin")
    release = rsub.add_parser("release", help="release a rollback pin")
    ev = rsub.add_parser("evaluate", help="run evaluation episodes of a version and print the result")
    ev.add_argument(
        "--version", type=int, default=None, help="version to evaluate (default: what the fleet runs)"
    )
    ev.add_argument("--episodes", type=int, default=20, help="evaluation episodes")
    ev.add_argument("--robots", nargs="*", default=None, help="robot ids to use (default: any of the task's)")
    ev.add_argument(
        "--sim", metavar="ENV", default=None,
        help="run it on simulated robots of this gymnasium env that the platform starts (and removes after)",
    )  # fmt: skip
    ev.add_argument("--sim-robots", type=int, default=2, help="how many sim robots --sim starts")
    ev.add_argument("--sample", action="store_true", help="sample actions instead of the policy's mode")
    ev.add_argument("--no-wait", action="store_true", help="start it and return (poll with the REST API)")
    for parser, func in ((show, cmd_show), (back, cmd_rollback), (release, cmd_release), (ev, cmd_evaluate)):
        parser.add_argument("task", help="task name")
        add_api_arguments(parser)
        parser.set_defaults(func=func)
