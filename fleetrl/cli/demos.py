"""``fleetrl demos collect|import|export``: demonstration data into and out of episode stores.

``collect`` records scripted demos to a store folder, ``import`` asks a running platform's data server to
read a folder into a task, ``export`` writes a store's episodes of one task as a LeRobot dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fleetrl.cli.common import add_api_arguments, add_command_group, admin_token
from fleetrl.cli.progress import progress_bar


def cmd_demos_collect(args: argparse.Namespace) -> int:
    """Record demonstrations (OGBench scripted oracles, or a scripted policy on any sim robot) to a store."""
    from fleetrl.robots import demos
    from fleetrl.robots.sim import SimRobot
    from fleetrl.workers.data.store import EpisodeStore

    with progress_bar(f"collecting {args.policy} demos on {args.env}", args.n) as update:
        shown = demos_progress(update)
        if args.policy == "oracle":
            episodes = demos.collect_oracle_demos(
                args.env, n=args.n, oracle=args.oracle, noise=args.noise, seed=args.seed, task=args.task,
                on_episode=shown, log_every=0, camera=args.camera,
            )  # fmt: skip
        else:
            wrappers = [demos.SERVO_WRAPPER] if args.policy == "reacher-servo" else []
            policy = {"reacher": demos.reacher_reach_policy, "reacher-servo": demos.reacher_servo_policy}.get(
                args.policy
            ) or demos.RandomPolicy(SimRobot(args.env, wrappers=wrappers).action_spec, seed=args.seed)
            episodes = demos.collect_scripted_demos(
                args.env, policy, n=args.n, seed=args.seed, task=args.task, on_episode=shown,
                log_every=0, camera=args.camera, wrappers=wrappers,
            )  # fmt: skip
    with EpisodeStore(args.out) as store:
        stored = sum(store.put(ep)[0] for ep in episodes)
    successes = sum(ep.success for ep in episodes)
    print(
        f"{stored} episodes ({successes} successful, {sum(map(len, episodes))} steps) written to {args.out}"
    )
    if stored < len(episodes):  # demo ids are deterministic: the same seed makes the same episodes
        print(
            f"{len(episodes) - stored} of them were already in {args.out} (the same episodes: collection is "
            f"deterministic per --seed); pass another --seed for new ones"
        )
    return 0


def demos_progress(update: Any) -> Any:
    """A collector's ``on_episode`` that moves the bar and says how many demos succeeded so far."""
    wins = 0

    def on_episode(done: int, total: int, episode: Any) -> None:  # noqa: ARG001 - total: the bar has it
        nonlocal wins
        wins += bool(episode.success)
        update(done, f"{wins} successful")

    return on_episode


def cmd_demos_import(args: argparse.Namespace) -> int:
    """Ask a running platform to import a folder of demonstrations (read by its data server)."""
    import httpx

    token = admin_token(args)
    if not token:
        return 2
    body = {"path": str(Path(args.path).resolve()), "format": args.format}
    with progress_bar(f"the platform imports {args.path}", None, transient=True):
        r = httpx.post(
            f"{args.api.rstrip('/')}/v1/tasks/{args.task}/demos",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        )
    if r.status_code != 201:
        print(f"error: import refused ({r.status_code}): {r.json().get('detail', r.text)}", file=sys.stderr)
        return 1
    result = r.json()
    line = f"imported into {args.task}: {result['stored']} new episodes"
    if result.get("duplicates"):
        line += f", {result['duplicates']} already stored (same episode ids: re-collect with another --seed for new ones)"
    print(line)
    return 0


def cmd_demos_export(args: argparse.Namespace) -> int:
    """Write a store's episodes of one task as a LeRobot v3.0 dataset."""
    from fleetrl.workers.data.exporters import export_lerobot
    from fleetrl.workers.data.store import load_store_episodes

    episodes = load_store_episodes(args.store, args.task)
    if not episodes:
        print(f"error: no episodes of task {args.task!r} in {args.store}", file=sys.stderr)
        return 2
    try:
        result = export_lerobot(episodes, args.out, fps=args.fps, video=args.video)
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {result['episodes']} episodes ({result['frames']} frames) to {result['path']}")
    return 0


def add_demos_parser(subparsers: Any) -> None:
    """Add ``demos`` (with ``collect``, ``import`` and ``export``) to the ``fleetrl`` subcommands."""
    dsub = add_command_group(subparsers, "demos", "demonstration data")
    collect = dsub.add_parser("collect", help="record demos from OGBench scripted oracles")
    collect.add_argument("--env", default="cube-single-singletask-task1-v0", help="OGBench env id")
    collect.add_argument("--n", type=int, default=20, help="episodes")
    collect.add_argument(
        "--policy",
        choices=["oracle", "reacher", "reacher-servo", "random"],
        default="oracle",
        help="OGBench oracle, the Reacher scripted controller (on torques, or on joint steps behind "
        "fleetrl.robots.servo:DampedJointServo), or random actions (failed episodes)",
    )
    collect.add_argument(
        "--oracle", choices=["plan", "markov"], default="plan", help="clean demos or noisy play"
    )
    collect.add_argument("--noise", type=float, default=0.1, help="action noise of the markov oracle")
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--task", default="cube-single", help="task name stored with the episodes")
    collect.add_argument("--out", required=True, help="episode store folder to write")
    collect.add_argument(
        "--camera",
        type=int,
        default=None,
        metavar="SIDE",
        help="also record a rendered SIDE x SIDE RGB frame",
    )
    collect.set_defaults(func=cmd_demos_collect)

    imp = dsub.add_parser("import", help="import a demo folder into a running platform's task")
    imp.add_argument("path", help="folder readable by the data server")
    imp.add_argument("--task", required=True)
    imp.add_argument("--format", choices=["fleetrl", "lerobot"], default="fleetrl")
    add_api_arguments(imp)
    imp.set_defaults(func=cmd_demos_import)

    exp = dsub.add_parser("export", help="write a store's episodes of a task as a LeRobot v3.0 dataset")
    exp.add_argument("--store", required=True, help="episode store folder (e.g. <state_dir>/episodes)")
    exp.add_argument("--task", required=True)
    exp.add_argument("--out", required=True, help="empty or new folder")
    exp.add_argument("--fps", type=float, required=True, help="control rate of the episodes")
    exp.add_argument(
        "--video",
        action="store_true",
        help="cameras as mp4 (AV1) video features, as LeRobot records them (needs PyAV: fleetrl[video]); "
        "default: PNG image features",
    )
    exp.set_defaults(func=cmd_demos_export)
