"""``fleetrl run``, ``fleetrl serve`` and ``fleetrl robot``: the commands that start a platform or robots.

``run`` is the local all-in-one (a platform, the config's simulated robots as their own processes, its
oracle demos and a live view); ``serve`` the platform alone, as a service; ``robot`` simulated robots that
register over REST like real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fleetrl.cli.common import add_api_arguments, admin_token, install_stop_handlers, load_platform_config

START_TIMEOUT_S = 120.0  # Platform.start's own default


def sim_robot_args(sim, index: int, api: str, token_env: str) -> list[str]:
    """The ``fleetrl robot`` arguments that run config entry ``sim_robots[index]`` against ``api``."""
    cmd = ["robot", "--sim", sim.env, "--n", str(sim.count), "--task", sim.task, "--api", api]
    cmd += ["--seed", str(sim.seed), "--name", f"{sim.task}-{index}", "--token-env", token_env]
    if sim.control_hz:
        cmd += ["--hz", str(sim.control_hz)]
    if sim.lockstep:
        cmd += ["--lockstep"]
    if sim.success:
        cmd += ["--success", sim.success]
    if sim.env_kwargs:
        cmd += ["--env-kwargs", json.dumps(sim.env_kwargs)]
    for wrapper in sim.wrappers:
        cmd += ["--wrapper", wrapper]
    return cmd


def _start_sim_robots(cfg, platform, log_dir: Path, wait_s: float) -> list[subprocess.Popen]:
    """Start each sim fleet as its own process; the robots register over REST like real ones. They start
    with the platform, not after it: a process imports its simulator and builds its first robot (seconds of
    CPU) while Ray Serve comes up, then registration waits (up to ``wait_s``) until REST answers."""
    procs = []
    env = {
        **os.environ,
        cfg.rest.admin_token_env: platform.admin_token,
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    for i, sim in enumerate(cfg.sim_robots):
        if sim.count == 0:
            continue
        cmd = [
            sys.executable,
            "-m",
            "fleetrl.cli",
            *sim_robot_args(sim, i, cfg.rest.url, cfg.rest.admin_token_env),
            "--wait",
            str(wait_s),
        ]
        out = open(log_dir / f"robots-{i}-{sim.task}.log", "w")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def _collect_oracle_demos(cfg, platform) -> None:
    """Fill offline replay with the config's oracle demonstrations unless the store already holds them."""
    import ray

    from fleetrl.cli.demos import demos_progress
    from fleetrl.cli.progress import progress_bar
    from fleetrl.robots.demos import collect_oracle_demos

    for demos in cfg.oracle_demos:
        # the store's count, not the replay's: after a restart the replay may still be refilling
        have = ray.get(platform.data.stats.remote(demos.task))["store"]["offline"]
        if have >= demos.n:
            print(
                f"{demos.task}: {have} offline episodes in the store; no oracle demos collected", flush=True
            )
            continue
        with progress_bar(f"{demos.task}: collecting {demos.oracle}-oracle demos", demos.n) as update:
            episodes = collect_oracle_demos(
                demos.env, n=demos.n, oracle=demos.oracle, noise=demos.noise, seed=demos.seed, task=demos.task,
                on_episode=demos_progress(update), log_every=0,
            )  # fmt: skip
        stored = sum(r["stored"] for r in ray.get([platform.data.ingest.remote(e) for e in episodes]))
        successes = sum(e.success for e in episodes)
        print(f"{demos.task}: {stored} demos stored ({successes}/{len(episodes)} successful)", flush=True)


def _stop_processes(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def _live_view(
    platform,
    stop: threading.Event,
    duration: float | None,
    interactive: bool,
    procs,
    until_version: int | None = None,
) -> None:
    import ray
    from rich.console import Console
    from rich.live import Live

    from fleetrl.platform.live_view import RunSummary, render, summary_line

    start = time.monotonic()
    console = Console()
    seen: dict[str, dict] = {}  # the newest learner statuses, for --until-version
    summary = RunSummary()

    def frame():
        gw, snap, learners, refill = ray.get(
            [
                platform.gateway.stats.remote(),
                platform.metrics.snapshot.remote(),
                platform.tasks.learners_status.remote(),
                platform.data.refill_status.remote(),
            ],
            timeout=10,
        )
        seen.update(learners)
        summary.observe(learners)
        return gw, snap, time.monotonic() - start, learners, refill

    def done() -> bool:
        if duration is not None and time.monotonic() - start >= duration:
            return True
        if (
            until_version is not None
            and seen
            and all(s.get("version", 0) >= until_version for s in seen.values())
        ):
            console.print(f"every learner has published version {until_version}: stopping")
            return True
        for p in procs:
            if p.poll() not in (None, 0):
                console.print(f"[red]robot process exited with code {p.returncode}; see its log[/red]")
                return True
        return stop.is_set()

    if interactive:
        with Live(render(*frame()), console=console, refresh_per_second=2) as live:
            while not done():
                stop.wait(1.0)
                live.update(render(*frame()))
    else:  # a line every 5 s; in between, only the learner statuses --until-version checks
        last = 0.0
        while not done():
            stop.wait(1.0)
            if time.monotonic() - last >= 5.0:
                last = time.monotonic()
                print(summary_line(*frame()), flush=True)
            elif until_version is not None:
                seen.update(ray.get(platform.tasks.learners_status.remote(), timeout=10))
    print(summary_line(*frame()), flush=True)
    if summary.last:
        console.print(summary.table(time.monotonic() - start))


def earlier_state(cfg) -> str | None:
    """What an earlier run left in the state dir that this one goes on from (learner checkpoints, stored
    episodes), as a sentence, or None for a fresh start. A second ``make demo`` resumes the first one's
    learners and store by design (the platform is restartable), so its "start" figures are that run's end."""
    from fleetrl.workers.data.server import default_root
    from fleetrl.workers.locations import is_url

    def non_empty(path: Path) -> bool:
        return path.is_dir() and any(path.iterdir())

    found = []
    if not is_url(cfg.learner_storage_path) and non_empty(Path(cfg.learner_storage_path)):
        found.append("learner checkpoints")
    root = default_root(cfg.state_path, cfg.data)
    if not is_url(root) and non_empty(Path(root)):
        found.append("stored episodes")
    if not found:
        return None
    return (
        f"resuming the earlier run's {' and '.join(found)} in {cfg.state_path}: this run starts where that "
        f"one ended (delete the folder, or set state_dir, to start fresh)"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from fleetrl.platform.platform import Platform

    cfg = load_platform_config(args.config)
    stop = threading.Event()
    install_stop_handlers(stop)
    print(f"starting fleetrl '{cfg.name}' from {args.config} …", flush=True)
    resumed = earlier_state(cfg)
    if resumed:
        print(resumed, flush=True)
    platform = Platform(cfg)
    procs: list[subprocess.Popen] = []
    try:
        if not args.no_robots:  # with the platform: they are ready to work when it answers, and work
            # while the demos are recorded
            procs = _start_sim_robots(cfg, platform, cfg.state_path / "logs", START_TIMEOUT_S + 60)
        platform.start(timeout=START_TIMEOUT_S)
        print(
            f"REST {platform.public_rest_url} (docs {platform.public_rest_url}/docs) · "
            f"robots connect to {', '.join(platform.endpoints)}"
        )
        print(f"admin token: {cfg.rest.admin_token_env} or {cfg.state_path / 'admin_token'}", flush=True)
        if procs:
            print(
                f"started {sum(s.count for s in cfg.sim_robots)} simulated robots (logs in {cfg.state_path / 'logs'})"
            )
        _collect_oracle_demos(cfg, platform)
        interactive = sys.stdout.isatty() and not args.plain
        _live_view(platform, stop, args.duration, interactive, procs, args.until_version)
    except KeyboardInterrupt:
        pass
    finally:
        print("shutting down …", flush=True)
        _stop_processes(procs)
        platform.stop()
    print("stopped.")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The platform as a long-running service: on a cluster head (``--address auto``, or inside
    ``ray job submit``, which sets RAY_ADDRESS) it attaches to the running Ray instead of starting one."""
    from fleetrl.platform.platform import Platform

    cfg = load_platform_config(args.config)
    if args.address:
        cfg = cfg.model_copy(update={"ray_address": args.address})
    stop = threading.Event()
    install_stop_handlers(stop)
    platform = Platform(cfg)
    where = cfg.ray_address or os.environ.get("RAY_ADDRESS") or "a local Ray"
    print(f"starting fleetrl '{cfg.name}' from {args.config} on {where} …", flush=True)
    try:
        platform.start()
        print(f"REST {platform.public_rest_url} (docs {platform.public_rest_url}/docs)", flush=True)
        binds = ", ".join(cfg.gateway.bind_of(k) for k in range(cfg.gateway.replicas))
        print(f"robots connect to {', '.join(platform.endpoints)} (gateways bound to {binds})", flush=True)
        print(f"admin token: {cfg.rest.admin_token_env} or {cfg.state_path / 'admin_token'}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        print("shutting down …", flush=True)
        platform.stop()
    print("stopped.", flush=True)
    return 0


def json_object(text: str) -> dict:
    """``--env-kwargs``: a JSON object, or argparse's error naming what is wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, got {type(value).__name__}")
    return value


def fleet_totals(clients: list) -> dict[str, int]:
    """Every counter summed over the fleet's robots."""
    return {k: sum(c.counters[k] for c in clients) for k in clients[0].counters} if clients else {}


def fleet_line(counters: dict[str, int], robots: int, elapsed_s: float) -> str:
    """One line on a sim fleet: steps, episodes, success, held steps, errors."""
    steps, episodes, wins = (
        counters.get("steps", 0),
        counters.get("episodes", 0),
        counters.get("successes", 0),
    )
    success = f"{wins} successful ({100 * wins / episodes:.0f} %)" if episodes else "none finished"
    held = counters.get("holds", 0)
    return (
        f"{robots} robots, {elapsed_s:.0f} s: {steps:,} steps, {episodes:,} episodes, {success}, "
        f"{held:,} held steps ({100 * held / max(1, steps):.1f} %), {counters.get('errors', 0)} errors"
    )


def _report_fleet(clients: list, stop: threading.Event, t0: float, every_s: float) -> None:
    """While the fleet runs: the line every ``every_s`` (overwritten in place on a terminal)."""
    tty = sys.stderr.isatty()
    while not stop.wait(every_s):
        line = fleet_line(fleet_totals(clients), len(clients), time.monotonic() - t0)
        sys.stderr.write(f"\r{line}\033[K" if tty else f"{line}\n")
        sys.stderr.flush()


def cmd_robot(args: argparse.Namespace) -> int:
    from fleetrl.robots.client.credentials import credentials_path
    from fleetrl.robots.client.registration import RegistrationError
    from fleetrl.robots.sim import run_sim_fleet

    prefix = args.name or args.task
    saved = args.credentials and all(
        credentials_path(args.credentials, f"{prefix}-{i}").exists() for i in range(args.n)
    )
    token = None if saved else admin_token(args)  # robots with saved credentials renew them with their own
    if not saved and not token:
        return 2
    stop, done, running = threading.Event(), threading.Event(), []
    install_stop_handlers(stop)
    t0 = time.monotonic()
    reporter = threading.Thread(
        target=_report_fleet, args=(running, done, t0, 2.0 if sys.stderr.isatty() else 30.0), daemon=True
    )
    reporter.start()
    try:
        clients = run_sim_fleet(
            args.sim,
            args.n,
            args.api,
            token,
            args.task,
            name_prefix=prefix,
            seed=args.seed,
            control_hz=args.hz,
            duration=args.duration,
            stop=stop,
            on_start=running.extend,
            lockstep=args.lockstep,
            camera=args.camera,
            state=args.state,
            success=args.success,
            env_kwargs=args.env_kwargs,
            wrappers=args.wrapper,
            register_wait_s=args.wait,
            credentials_dir=args.credentials,
            gateway=args.gateway,
        )
    except RegistrationError as exc:  # refused, or the platform never came: the reason is the message
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        done.set()
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(f"stopped: {fleet_line(fleet_totals(clients), len(clients), time.monotonic() - t0)}", flush=True)
    return 0


def add_run_parsers(subparsers: Any) -> None:
    """Add ``run``, ``serve`` and ``robot`` to the ``fleetrl`` subcommands."""
    run = subparsers.add_parser(
        "run", help="start a local platform with its simulated robots and a live view"
    )
    run.add_argument("config", help="platform YAML, e.g. configs/local.yaml")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.add_argument(
        "--until-version",
        type=int,
        default=None,
        help="stop once every learner has published this weight version (a smoke test; with --duration as a cap)",
    )
    run.add_argument("--no-robots", action="store_true", help="do not start the config's simulated robots")
    run.add_argument("--plain", action="store_true", help="print summary lines instead of the live table")
    run.set_defaults(func=cmd_run)

    serve = subparsers.add_parser("serve", help="start the platform only (e.g. on a Ray cluster head)")
    serve.add_argument("config")
    serve.add_argument("--address", default=None, help="Ray address to attach to, e.g. 'auto'")
    serve.set_defaults(func=cmd_serve)

    robot = subparsers.add_parser("robot", help="run simulated robots against a running platform")
    robot.add_argument("--sim", required=True, help="gymnasium env id, e.g. Reacher-v5")
    robot.add_argument("--n", type=int, default=1, help="number of robots (one process)")
    robot.add_argument("--task", required=True, help="task to register for")
    add_api_arguments(robot)
    robot.add_argument("--hz", type=float, default=None, help="control rate (default: the preset's)")
    robot.add_argument("--seed", type=int, default=0)
    robot.add_argument("--name", default=None, help="robot name prefix")
    robot.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    robot.add_argument(
        "--lockstep",
        action="store_true",
        help="simulated time waits for each chunk instead of holding (learning benchmarks; default off)",
    )
    robot.add_argument(
        "--camera",
        type=int,
        default=None,
        metavar="SIDE",
        help="also send an RGB camera frame of SIDE x SIDE pixels rendered by MuJoCo (observation 'camera')",
    )
    robot.add_argument(
        "--no-state",
        dest="state",
        action="store_false",
        help="with --camera: send the camera frame only (a task that acts from pixels)",
    )
    robot.add_argument(
        "--success",
        default=None,
        help="success rule: reacher_2cm, info_success, never, 'info:KEY', 'obs_norm[A:B]<T' or 'module:function' "
        "(default: the env's preset, else never)",
    )
    robot.add_argument(
        "--gateway",
        type=int,
        default=None,
        metavar="K",
        help="pin the robots to gateway K of a platform with several (default: the least loaded)",
    )
    robot.add_argument(
        "--credentials",
        metavar="DIR",
        default=None,
        help="keep each robot's credentials in DIR/<name>.json and renew them at the next start with its own "
        "token (same robot id, no admin token needed then); such robots stay registered when they stop",
    )
    robot.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds registration waits for an unreachable or starting platform",
    )
    robot.add_argument(
        "--env-kwargs", type=json_object, default=None, help="gym.make keyword arguments (JSON)"
    )
    robot.add_argument(
        "--wrapper", action="append", default=[], metavar="MODULE:CALLABLE", help="wrap the env (repeatable)"
    )
    robot.set_defaults(func=cmd_robot)
