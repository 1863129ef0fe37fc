"""Scheduler latency: our gateway + scheduler vs. Ray Serve's router, same load, same replicas, same run.

N simulated Reacher robots at 10 Hz with chunk_len = 1 (every control step is one inference request)
against 2 inference replicas of one task. Two routers, run one after the other for each N:

* ours: the platform as it is (ZeroMQ gateway → our scheduler → replica actors, batching up to max_batch);
* baseline: a ``ServeRoutedGateway`` (the same gateway, subclassed here) whose ``_submit`` sends each
  observation through a Ray Serve ``DeploymentHandle`` to a deployment wrapping the same
  ``InferenceReplica`` (2 replicas, same policy, same CPU reservation), so Ray's own router picks the
  replica and Serve's ``@serve.batch`` batches.

Per N and router: queue wait = ``to_replica_ms`` (arrival at the gateway → start of the forward pass in
the replica, the same definition for both), end-to-end overhead = robot-measured round trip − compute,
and frames lost = requests − replies. The first second of each run is warm-up and is not measured.

    MUJOCO_GL=egl .venv/bin/python benchmarks/scheduler_latency.py [--quick]

Writes ``benchmarks/results/scheduler_latency.json`` and prints a table and a one-line summary.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import ray
import zmq
from common import percentiles, reach_config, run_header, write_json
from ray import serve

from fleetrl.platform.platform import Platform
from fleetrl.robots import protocol as P
from fleetrl.robots.client import FleetRunner, RobotClient, deregister, register
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.net import free_port
from fleetrl.workers.gateway.actor import Gateway
from fleetrl.workers.gateway.dispatch import stack_observations
from fleetrl.workers.gateway.session import GatewayConfig
from fleetrl.workers.inference.replica import InferenceReplica
from fleetrl.workers.task import TaskConfig

ROOT = Path(__file__).resolve().parent.parent
TASK = "reach"
ENV_ID = "Reacher-v5"
CONTROL_HZ = 10.0
WARMUP_S = 1.0
DRAIN_S = 0.5
REST_THREADS = 8
SERVE_APP = "bench-serve-baseline"
TARGETS = {"product_p99_queue_wait_ms": 100, "goal_p99_queue_wait_ms": 5}


# -- the baseline: Ray Serve's router behind the same gateway ------------------------------------------
class ServeInference:
    """Serve deployment around the same ``InferenceReplica`` our pool uses.

    ``@serve.batch`` gathers the single observations that arrive while a forward pass runs into one batch
    (up to ``max_batch``, no extra wait), the closest Serve analogue of our scheduler's batching.
    """

    def __init__(self, task: TaskConfig):
        self.replica = InferenceReplica(task, serve.get_replica_context().rank.rank)
        self.infer.set_max_batch_size(task.inference.max_batch)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # size set from the task in __init__
    async def infer(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        result = self.replica.infer(stacked)
        return [
            {**result, "actions": result["actions"][i : i + 1], "log_probs": result["log_probs"][i : i + 1]}
            for i in range(len(batches))
        ]


class ServeRoutedGateway(Gateway):
    """The platform's gateway with one change: observations go through a Serve ``DeploymentHandle``."""

    def __init__(
        self,
        config: GatewayConfig,
        tasks: list[TaskConfig],
        registry: Any,
        metrics: Any,
        handle: Any,
        curve_keys: tuple[str, str] | None,
    ):
        super().__init__(config, tasks, {}, registry, metrics, curve_keys=curve_keys)
        self.handle = handle

    def _submit(self, task: TaskConfig, robot_id: str, ident: bytes, msg: P.Obs) -> None:
        self._loop.create_task(self._serve_one(task, ident, msg, time.time()))

    async def _serve_one(self, task: TaskConfig, ident: bytes, msg: P.Obs, arrived: float) -> None:
        batch = stack_observations([msg], task)
        try:
            result = await self.handle.infer.remote(batch)
        except Exception as exc:  # noqa: BLE001 - like the gateway: refuse the frame, keep serving
            self._refuse(ident, "inference_failed", type(exc).__name__, msg.robot_id, msg.step)
            return
        self.dispatch.observe_result(task.name, result, 1)
        self.dispatch.reply(ident, msg, result, 0, arrived, {})


def start_serve_baseline(platform: Platform, task: TaskConfig) -> tuple[Any, str]:
    """Deploy the Serve inference app and start a ``ServeRoutedGateway`` on its own free port."""
    pool = task.inference
    # Tuned for latency: max_ongoing_requests = max_batch lets a replica hold a full batch of single-row
    # requests (which @serve.batch merges) while the rest wait at the router, like our scheduler's FIFO;
    # no per-request access log line on the hot path. Everything else is Serve's default.
    deployment = serve.deployment(
        ServeInference,
        name="serve-inference",
        num_replicas=pool.replicas,
        max_ongoing_requests=pool.max_batch,
        ray_actor_options={"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus},
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    handle = serve.run(deployment.bind(task), name=SERVE_APP, route_prefix=None)
    cfg = platform.cfg.gateway.model_copy(update={"bind": f"tcp://127.0.0.1:{free_port()}"})
    gateway = (
        ray.remote(ServeRoutedGateway)
        .options(num_cpus=cfg.num_cpus)
        .remote(cfg, [task], platform.registry, platform.metrics, handle, platform.curve_keys)
    )
    endpoint = ray.get(gateway.ready.remote(), timeout=60)["endpoint"]
    return gateway, endpoint


# -- setup ---------------------------------------------------------------------------------------------
def register_fleet(platform: Platform, endpoint: str, n: int, label: str, seed: int) -> list[RobotClient]:
    """Register ``n`` fresh sim robots over REST (a few at a time) and connect them to ``endpoint``."""

    def make(i: int) -> tuple[SimRobot, dict[str, Any]]:
        robot = SimRobot(ENV_ID, seed=seed + i, control_hz=CONTROL_HZ)
        return robot, register(platform.rest_url, platform.admin_token, f"bench-{label}-{n}-{i}", TASK, robot)

    with ThreadPoolExecutor(REST_THREADS) as pool:
        made = list(pool.map(make, range(n)))
    # Sockets are made here, in the thread that will use them (ZeroMQ sockets are not thread-safe).
    return [RobotClient.from_registration(robot, info | {"endpoint": endpoint}) for robot, info in made]


def drain(clients: list[RobotClient], seconds: float) -> None:
    """Receive in-flight replies for ``seconds`` without ticking (no new requests)."""
    poller = zmq.Poller()
    by_socket = {}
    for c in clients:
        poller.register(c.socket, zmq.POLLIN)
        by_socket[c.socket] = c
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        for sock, _ in poller.poll(left * 1e3):
            by_socket[sock].on_readable()


def run_fleet(clients: list[RobotClient], duration: float) -> dict[str, list[int]]:
    """Drive the fleet for ``duration`` s, then drain. Returns per client the reply count at the end of
    warm-up (``warm``) and the request count one second before the end (``late``)."""
    marks: dict[str, list[int]] = {"warm": [0] * len(clients), "late": [0] * len(clients)}

    def mark_at(delay: float, key: str, count: Callable[[RobotClient], int]) -> threading.Timer:
        timer = threading.Timer(delay, lambda: marks.update({key: [count(c) for c in clients]}))
        timer.start()
        return timer

    timers = [
        mark_at(WARMUP_S, "warm", lambda c: len(c.replies)),
        mark_at(duration - 1.0, "late", lambda c: c.counters["requests"]),
    ]
    FleetRunner(clients).run(duration=duration)
    for t in timers:
        t.cancel()
    drain(clients, DRAIN_S)
    return marks


def close_fleet(platform: Platform, clients: list[RobotClient], gateway: Any) -> None:
    """Close sockets and envs, deregister over REST, and drop the sessions from the gateway used."""
    for c in clients:
        c.close()
        c.robot.close()
    ids = [c.robot_id for c in clients]
    with ThreadPoolExecutor(REST_THREADS) as pool:
        list(pool.map(lambda i: deregister(platform.rest_url, platform.admin_token, [i]), ids))
    ray.get([gateway.revoke.remote(i) for i in ids])  # the REST delete only reaches the platform's gateway


def measure(platform: Platform, gateway: Any, endpoint: str, n: int, label: str, args: argparse.Namespace):
    """One run of ``n`` robots against one router; returns the measured statistics."""
    t0 = time.monotonic()
    clients = register_fleet(platform, endpoint, n, label, args.seed)
    print(
        f"  {n} robots registered in {time.monotonic() - t0:.1f} s; running {args.duration:.0f} s", flush=True
    )
    try:
        marks = run_fleet(clients, args.duration)
    finally:
        close_fleet(platform, clients, gateway)
    return summarize(clients, marks)


# -- statistics ----------------------------------------------------------------------------------------
def summarize(clients: list[RobotClient], marks: dict[str, list[int]]) -> dict[str, Any]:
    """Latency percentiles over the replies after warm-up; frame counts over the whole run. A robot that
    sent no request in the last second of the run counts as stalled."""
    to_replica, overhead, sched = [], [], []
    for c, mark in zip(clients, marks["warm"], strict=True):
        for rtt_ms, timings in list(c.replies)[mark:]:
            to_replica.append(timings["to_replica_ms"])
            overhead.append(rtt_ms - timings["compute_ms"])
            if "queue_ms" in timings:
                sched.append(timings["queue_ms"])
    counters = ("requests", "replies", "watchdog_trips", "holds", "errors")
    total = {k: sum(c.counters[k] for c in clients) for k in counters}
    stalled = sum(c.counters["requests"] == late for c, late in zip(clients, marks["late"], strict=True))
    served = Counter(s.replica for c in clients for ep in c.episodes for s in ep.steps if not s.held)
    return {
        "queue_wait_ms": percentiles(to_replica),
        "e2e_overhead_ms": percentiles(overhead),
        "scheduler_queue_ms": percentiles(sched),
        "frames_lost": total["requests"] - total["replies"],
        **total,
        "stalled_robots": stalled,
        # which replica computed the executed actions (finished episodes): how evenly the router spreads load
        "replica_share": {r: round(k / max(1, served.total()), 3) for r, k in sorted(served.items())},
    }


def print_table(runs: list[dict[str, Any]]) -> None:
    def fmt(d: dict[str, float | None]) -> str:
        return "/".join("-" if d[k] is None else f"{d[k]:.1f}" for k in ("p50", "p99", "max"))

    head = f"{'N':>4} {'router':<6} {'queue wait ms p50/p99/max':>26} {'e2e overhead ms p50/p99/max':>28}"
    print(
        head
        + f" {'sched queue ms':>18} {'requests':>8} {'lost':>5} {'holds':>6} {'errors':>6} {'stalled':>7}"
    )
    for run in runs:
        for name, r in (("ours", run), ("serve", run["baseline"])):
            sched = fmt(r["scheduler_queue_ms"]) if name == "ours" else ""
            print(
                f"{run['robots']:>4} {name:<6} {fmt(r['queue_wait_ms']):>26} {fmt(r['e2e_overhead_ms']):>28}"
                f" {sched:>18} {r['requests']:>8} {r['frames_lost']:>5} {r['holds']:>6} {r['errors']:>6}"
                f" {r['stalled_robots']:>7}"
            )


def summary_line(runs: list[dict[str, Any]]) -> str:
    def p99s(key: str, base: bool) -> str:
        return "/".join(f"{(r['baseline'] if base else r)[key]['p99']:.1f}" for r in runs)

    ns = "/".join(str(r["robots"]) for r in runs)
    lost = sum(r["frames_lost"] for r in runs)
    lost_serve = sum(r["baseline"]["frames_lost"] for r in runs)
    return (
        f"scheduler_latency: P99 queue wait ours {p99s('queue_wait_ms', False)} ms vs Serve "
        f"{p99s('queue_wait_ms', True)} ms at N={ns}; P99 e2e overhead ours {p99s('e2e_overhead_ms', False)}"
        f" ms vs Serve {p99s('e2e_overhead_ms', True)} ms; frames lost ours {lost}, Serve {lost_serve}"
    )


# -- main ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (8 s per N), about two minutes in all")
    ap.add_argument("--robots", default="8,32,128", help="comma-separated fleet sizes N")
    ap.add_argument("--duration", type=float, default=None, help="seconds per run (default 30, quick 8)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first robot; robot i uses seed + i")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scheduler_latency.json"))
    args = ap.parse_args(argv)
    args.robots = [int(n) for n in args.robots.split(",")]
    args.duration = args.duration or (8.0 if args.quick else 30.0)
    if args.duration <= WARMUP_S:
        ap.error(f"--duration must exceed the {WARMUP_S} s warm-up")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # One warning per refused request would flood the output; refusals are counted in ``errors``.
    logging.getLogger("fleetrl.robots.client").setLevel(logging.ERROR)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-") as state_dir:
        cfg = reach_config(state_dir, 1)
        print(f"starting the platform (REST {cfg.rest.url}, gateway {cfg.gateway.endpoint}) ...", flush=True)
        platform = Platform(cfg).start()
        try:
            base_gateway, base_endpoint = start_serve_baseline(platform, cfg.tasks[0])
            print(
                f"up in {time.monotonic() - t0:.1f} s; Serve baseline gateway at {base_endpoint}", flush=True
            )
            runs = []
            for n in args.robots:
                print(f"N={n}: ours ...", flush=True)
                ours = measure(platform, platform.gateway, platform.endpoint, n, "ours", args)
                print(f"N={n}: Serve baseline ...", flush=True)
                base = measure(platform, base_gateway, base_endpoint, n, "serve", args)
                base.pop("scheduler_queue_ms")
                runs.append({"robots": n, **ours, "baseline": base})
            ray.kill(base_gateway, no_restart=True)
            serve.delete(SERVE_APP)
        finally:
            platform.stop()
    result = {
        **run_header(args),
        "duration_s": args.duration,
        "warmup_s": WARMUP_S,
        "control_hz": CONTROL_HZ,
        "chunk_len": 1,
        "replicas": cfg.tasks[0].inference.replicas,
        "max_batch": cfg.tasks[0].inference.max_batch,
        "wall_s": round(time.monotonic() - t0, 1),
        "targets": TARGETS,
        "runs": runs,
    }
    out = write_json(result, args.out)
    print_table(runs)
    print(f"wrote {out} ({result['wall_s']} s)")
    print(summary_line(runs))


if __name__ == "__main__":
    main()
