"""The ``fleetrl`` command.

fleetrl run configs/local.yaml        local Ray + platform + REST + the config's simulated robots, live view
fleetrl serve configs/local.yaml      the platform only (attach robots yourself), until Ctrl-C
fleetrl serve configs/cluster-platform.yaml --address auto    the same, on a running Ray cluster's head
fleetrl robot --sim Reacher-v5 --n 8 --task reach --api http://127.0.0.1:8000
fleetrl config check configs/local.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("fleetrl")


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum, frame):  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _admin_token(args: argparse.Namespace) -> str | None:
    """--token, else the environment variable named by --token-env; says what to do when neither is set."""
    token = args.token or os.environ.get(args.token_env)
    if not token:
        print(f"error: no admin token: pass --token or set {args.token_env}", file=sys.stderr)
    return token


def _load(path: str):
    from fleetrl.platform.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(f"{args.config}: ok — {len(cfg.tasks)} task(s): {', '.join(t.name for t in cfg.tasks)}")
    return 0


def _start_sim_robots(cfg, platform, log_dir: Path) -> list[subprocess.Popen]:
    """Start each sim fleet as its own process; the robots register over REST like real ones."""
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
        cmd = [sys.executable, "-m", "fleetrl.cli", "robot", "--sim", sim.env, "--n", str(sim.count)]
        cmd += [
            "--task",
            sim.task,
            "--api",
            platform.rest_url,
            "--seed",
            str(sim.seed),
            "--name",
            f"{sim.task}-{i}",
        ]
        cmd += ["--token-env", cfg.rest.admin_token_env]
        if sim.control_hz:
            cmd += ["--hz", str(sim.control_hz)]
        out = open(log_dir / f"robots-{i}-{sim.task}.log", "w")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def _collect_oracle_demos(cfg, platform) -> None:
    """Fill offline replay with the config's oracle demonstrations unless the store already holds them."""
    import ray

    from fleetrl.robots.demos import collect_oracle_demos

    for demos in cfg.oracle_demos:
        have = ray.get(platform.data.stats.remote(demos.task))["replay"]["offline_episodes"]
        if have >= demos.n:
            print(
                f"{demos.task}: {have} offline episodes in the store; no oracle demos collected", flush=True
            )
            continue
        print(f"{demos.task}: collecting {demos.n} {demos.oracle}-oracle demos on {demos.env} …", flush=True)
        episodes = collect_oracle_demos(
            demos.env, n=demos.n, oracle=demos.oracle, noise=demos.noise, seed=demos.seed, task=demos.task
        )
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

    from fleetrl.platform.live_view import render, summary_line

    start = time.monotonic()
    console = Console()
    seen: dict[str, dict] = {}  # the newest learner statuses, for --until-version

    def frame():
        gw, snap, learners = ray.get(
            [
                platform.gateway.stats.remote(),
                platform.metrics.snapshot.remote(),
                platform.tasks.learners_status.remote(),
            ],
            timeout=10,
        )
        seen.update(learners)
        return gw, snap, time.monotonic() - start, learners

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
    else:
        last = 0.0
        while not done():
            stop.wait(1.0)
            if time.monotonic() - last >= 5.0:
                last = time.monotonic()
                print(summary_line(*frame()), flush=True)
    print(summary_line(*frame()), flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from fleetrl.platform.platform import Platform

    cfg = _load(args.config)
    stop = threading.Event()
    _install_stop_handlers(stop)
    print(f"starting fleetrl '{cfg.name}' from {args.config} …", flush=True)
    platform = Platform(cfg)
    procs: list[subprocess.Popen] = []
    try:
        platform.start()
        print(
            f"REST {platform.public_rest_url} (docs {platform.public_rest_url}/docs) · "
            f"robots connect to {platform.endpoint}"
        )
        print(f"admin token: {cfg.rest.admin_token_env} or {cfg.state_path / 'admin_token'}", flush=True)
        _collect_oracle_demos(cfg, platform)
        if not args.no_robots:
            procs = _start_sim_robots(cfg, platform, cfg.state_path / "logs")
            print(
                f"started {sum(s.count for s in cfg.sim_robots)} simulated robots (logs in {cfg.state_path / 'logs'})"
            )
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

    cfg = _load(args.config)
    if args.address:
        cfg = cfg.model_copy(update={"ray_address": args.address})
    stop = threading.Event()
    _install_stop_handlers(stop)
    platform = Platform(cfg)
    where = cfg.ray_address or os.environ.get("RAY_ADDRESS") or "a local Ray"
    print(f"starting fleetrl '{cfg.name}' from {args.config} on {where} …", flush=True)
    try:
        platform.start()
        print(f"REST {platform.public_rest_url} (docs {platform.public_rest_url}/docs)", flush=True)
        print(f"robots connect to {platform.endpoint} (gateway bound to {cfg.gateway.bind})", flush=True)
        print(f"admin token: {cfg.rest.admin_token_env} or {cfg.state_path / 'admin_token'}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        print("shutting down …", flush=True)
        platform.stop()
    print("stopped.", flush=True)
    return 0


def cmd_robot(args: argparse.Namespace) -> int:
    from fleetrl.robots.sim import run_sim_fleet

    token = _admin_token(args)
    if not token:
        return 2
    stop = threading.Event()
    _install_stop_handlers(stop)
    clients = run_sim_fleet(
        args.sim,
        args.n,
        args.api,
        token,
        args.task,
        name_prefix=args.name or args.task,
        seed=args.seed,
        control_hz=args.hz,
        duration=args.duration,
        stop=stop,
    )
    total = {k: sum(c.counters[k] for c in clients) for k in clients[0].counters} if clients else {}
    print(f"{len(clients)} robots stopped: {total}", flush=True)
    return 0


def cmd_demos_collect(args: argparse.Namespace) -> int:
    """Record demonstrations (OGBench scripted oracles, or a scripted policy on any sim robot) to a store."""
    from fleetrl.robots import demos
    from fleetrl.robots.sim import SimRobot
    from fleetrl.workers.data.store import EpisodeStore

    every = max(1, args.n // 10)
    if args.policy == "oracle":
        episodes = demos.collect_oracle_demos(
            args.env,
            n=args.n,
            oracle=args.oracle,
            noise=args.noise,
            seed=args.seed,
            task=args.task,
            log_every=every,
        )
    else:
        policy = (
            demos.reacher_reach_policy
            if args.policy == "reacher"
            else demos.RandomPolicy(SimRobot(args.env).action_spec, seed=args.seed)
        )
        episodes = demos.collect_scripted_demos(
            args.env, policy, n=args.n, seed=args.seed, task=args.task, log_every=every
        )
    with EpisodeStore(args.out) as store:
        stored = sum(store.put(ep)[0] for ep in episodes)
    successes = sum(ep.success for ep in episodes)
    print(
        f"{stored} episodes ({successes} successful, {sum(map(len, episodes))} steps) written to {args.out}"
    )
    return 0


def cmd_demos_import(args: argparse.Namespace) -> int:
    """Ask a running platform to import a folder of demonstrations (read by its data server)."""
    import httpx

    token = _admin_token(args)
    if not token:
        return 2
    body = {"path": str(Path(args.path).resolve()), "format": args.format}
    r = httpx.post(
        f"{args.api.rstrip('/')}/v1/tasks/{args.task}/demos",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=600,
    )
    if r.status_code != 201:
        print(f"error: import refused ({r.status_code}): {r.json().get('detail', r.text)}", file=sys.stderr)
        return 1
    print(f"imported into {args.task}: {r.json()}")
    return 0


def cmd_critic_train(args: argparse.Namespace) -> int:
    """Train a pairwise progress critic on stored episodes; report VOC metrics on a held-out split."""
    import numpy as np
    import torch

    from fleetrl.scoring.critic_metrics import critic_report
    from fleetrl.scoring.progress import ProgressTrainConfig, train_progress_critic
    from fleetrl.workers.data.store import load_store_episodes

    episodes = load_store_episodes(args.episodes)
    if args.failed:
        episodes += load_store_episodes(args.failed)
    if not any(ep.success for ep in episodes):
        print(f"error: no successful episodes in {args.episodes}", file=sys.stderr)
        return 2
    order = np.random.default_rng(args.seed).permutation(len(episodes))
    n_eval = max(1, int(len(episodes) * args.holdout)) if args.holdout > 0 else 0
    held = [episodes[i] for i in order[:n_eval]]
    train = [episodes[i] for i in order[n_eval:]]

    def show(step: int, entry: dict) -> None:
        print(f"  step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in entry.items()), flush=True)

    print(
        f"training on {len(train)} episodes ({sum(e.success for e in train)} successful), {args.steps} steps"
    )
    model, _ = train_progress_critic(
        train, ProgressTrainConfig(), steps=args.steps, seed=args.seed, callback=show
    )
    torch.save(model.checkpoint(), args.out)
    print(f"checkpoint written to {args.out}")
    if held:
        report = critic_report(model, held)
        print(f"held-out ({len(held)} episodes): {report}")
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
        result = export_lerobot(episodes, args.out, fps=args.fps)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {result['episodes']} episodes ({result['frames']} frames) to {result['path']}")
    return 0


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a running platform's REST API is, and the admin token for it (read by ``_admin_token``)."""
    parser.add_argument("--api", required=True, help="REST base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", default=None, help="admin token (default: from --token-env)")
    parser.add_argument("--token-env", default="FLEETRL_ADMIN_TOKEN", help="env var holding the admin token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetrl", description="Asynchronous real-world RL across a robot fleet."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a local platform with its simulated robots and a live view")
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

    serve = sub.add_parser("serve", help="start the platform only (e.g. on a Ray cluster head)")
    serve.add_argument("config")
    serve.add_argument("--address", default=None, help="Ray address to attach to, e.g. 'auto'")
    serve.set_defaults(func=cmd_serve)

    robot = sub.add_parser("robot", help="run simulated robots against a running platform")
    robot.add_argument("--sim", required=True, help="gymnasium env id, e.g. Reacher-v5")
    robot.add_argument("--n", type=int, default=1, help="number of robots (one process)")
    robot.add_argument("--task", required=True, help="task to register for")
    add_api_arguments(robot)
    robot.add_argument("--hz", type=float, default=None, help="control rate (default: the preset's)")
    robot.add_argument("--seed", type=int, default=0)
    robot.add_argument("--name", default=None, help="robot name prefix")
    robot.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    robot.set_defaults(func=cmd_robot)

    demos = sub.add_parser("demos", help="demonstration data")
    dsub = demos.add_subparsers(dest="demos_command", required=True)
    collect = dsub.add_parser("collect", help="record demos from OGBench scripted oracles")
    collect.add_argument("--env", default="cube-single-singletask-task1-v0", help="OGBench env id")
    collect.add_argument("--n", type=int, default=20, help="episodes")
    collect.add_argument(
        "--policy",
        choices=["oracle", "reacher", "random"],
        default="oracle",
        help="OGBench oracle, the Reacher scripted controller, or random actions (failed episodes)",
    )
    collect.add_argument(
        "--oracle", choices=["plan", "markov"], default="plan", help="clean demos or noisy play"
    )
    collect.add_argument("--noise", type=float, default=0.1, help="action noise of the markov oracle")
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--task", default="cube-single", help="task name stored with the episodes")
    collect.add_argument("--out", required=True, help="episode store folder to write")
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
    exp.set_defaults(func=cmd_demos_export)

    critic = sub.add_parser("critic", help="reward critics")
    crsub = critic.add_subparsers(dest="critic_command", required=True)
    ctrain = crsub.add_parser("train", help="train a VLAC-style progress critic on stored episodes")
    ctrain.add_argument("--episodes", required=True, help="episode store folder (e.g. from `demos collect`)")
    ctrain.add_argument("--failed", default=None, help="optional folder of failed episodes (negatives)")
    ctrain.add_argument("--steps", type=int, default=1000, help="training steps")
    ctrain.add_argument(
        "--holdout", type=float, default=0.2, help="share of episodes held out for the report"
    )
    ctrain.add_argument("--seed", type=int, default=0)
    ctrain.add_argument("--out", required=True, help="checkpoint path (use it in config critic.tasks)")
    ctrain.set_defaults(func=cmd_critic_train)

    from fleetrl.cli.value_report import add_value_parser

    add_value_parser(sub)

    config = sub.add_parser("config", help="configuration tools")
    csub = config.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a platform YAML")
    check.add_argument("config")
    check.set_defaults(func=cmd_config_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
