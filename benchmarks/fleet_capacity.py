"""Fleet capacity: the largest fleet this machine serves within the product promise (P99 queue wait under
100 ms), for chunk length 1 and 4, robots on the same cores as the platform.

The rule, fixed before any run: Reacher robots at 10 Hz against the shipped ``reach`` task (2 replicas,
max_batch 32, every episode stored), one run of ``--duration`` seconds per fleet size N, measured as
``scheduler_latency.py`` measures "ours" (same ``measure``: queue wait = arrival at the gateway -> start of
the forward pass, after a 1 s warm-up). A size *holds* when P99 queue wait <= 100 ms, no frame is lost
(the promise), and the fleet really ran at its rate: at least 95 % of the N x 10 Hz / chunk length
requests it should have sent in the measured run (which starts once every robot has its session: since
2026-12-06 the gateway admits a fleet's handshakes at the hello budget's rate, ~3 s for 128 robots, where
before it refused the surplus for good and those robots counted as stalled) (the robots are simulated in this process on the same cores; once the
machine's CPU runs out they fall behind their rate, the offered load drops and the queue wait with it, so
without this check a saturated machine would read as a platform that keeps up). N
doubles from 32 while it holds (up to ``--max-robots``), then two bisection steps between the last size
that held and the first that did not; the answer is the largest size that held. Robots that sent no
request in the run's last second ("stalled") are reported beside it.

    MUJOCO_GL=egl .venv/bin/python benchmarks/fleet_capacity.py [--quick]

Writes ``benchmarks/results/fleet_capacity.json`` (``capacity.chunk_<L>.{largest_robots, observations_per_s,
runs}``) and prints a table and a one-line summary.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from typing import Any

from common import reach_config, run_header, write_json
from scheduler_latency import CONTROL_HZ, TARGETS, measure

from fleetrl.platform.platform import Platform

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
PROMISE_MS = TARGETS["product_p99_queue_wait_ms"]
START_ROBOTS = 32


MIN_DELIVERED = 0.95  # share of the requests the fleet should have sent at its rate


def holds(run: dict[str, Any]) -> bool:
    return (
        run["queue_wait_ms"]["p99"] is not None
        and run["queue_wait_ms"]["p99"] <= PROMISE_MS
        and run["frames_lost"] == 0
        and run["delivered"] >= MIN_DELIVERED
    )


def search(try_size, max_robots: int, bisections: int = 2) -> tuple[int | None, list[dict[str, Any]]]:
    """Doubling from START_ROBOTS while a size holds, then ``bisections`` steps; (largest held, runs)."""
    runs, good, bad, n = [], None, None, START_ROBOTS
    while n <= max_robots:
        run = try_size(n)
        runs.append(run)
        if not run["holds"]:
            bad = n
            break
        good, n = n, 2 * n
    for _ in range(bisections if good is not None and bad is not None else 0):
        mid = (good + bad) // 2
        if mid in (good, bad):
            break
        run = try_size(mid)
        runs.append(run)
        good, bad = (mid, bad) if run["holds"] else (good, mid)
    return good, runs


def capacity(chunk_len: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleetrl-capacity-") as state_dir:
        platform = Platform(reach_config(state_dir, chunk_len)).start()
        try:

            def try_size(n: int) -> dict[str, Any]:
                print(f"chunk {chunk_len}, N={n} ...", flush=True)
                stats = measure(platform, platform.gateways[0], platform.endpoint, n, f"cap{chunk_len}", args)
                run = {
                    "robots": n,
                    "holds": False,
                    "queue_wait_ms": stats["queue_wait_ms"],
                    "e2e_overhead_ms": stats["e2e_overhead_ms"],
                    "frames_lost": stats["frames_lost"],
                    "stalled_robots": stats["stalled_robots"],
                    "holds_steps": stats["holds"],
                    "requests": stats["requests_measured"],
                    "connect_s": stats["connect_s"],
                    # of the requests N robots at CONTROL_HZ send in the run with one every chunk_len steps
                    "delivered": round(
                        stats["requests_measured"] / (n * CONTROL_HZ * args.duration / chunk_len), 3
                    ),
                }
                run["holds"] = holds(run)
                print(f"  P99 queue wait {run['queue_wait_ms']['p99']} ms, lost {run['frames_lost']}, delivered "
                      f"{run['delivered']:.0%}, stalled {run['stalled_robots']}: {'holds' if run['holds'] else 'does not hold'}", flush=True)  # fmt: skip
                return run

            largest, runs = search(try_size, args.max_robots)
        finally:
            platform.stop()
    return {
        "largest_robots": largest,
        "observations_per_s": None if largest is None else round(largest * CONTROL_HZ / chunk_len, 1),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 s per size, chunk length 4 up to 128 robots")
    ap.add_argument("--duration", type=float, default=None, help="seconds per size (default 20, quick 8)")
    ap.add_argument(
        "--max-robots", type=int, default=None, help="largest size tried (default 1024, quick 128)"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the first robot; robot i uses seed + i")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fleet_capacity.json"))
    args = ap.parse_args(argv)
    args.duration = args.duration or (8.0 if args.quick else 20.0)
    args.max_robots = args.max_robots or (128 if args.quick else 1024)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("fleetrl.robots.client").setLevel(logging.ERROR)
    t0 = time.monotonic()
    chunks = (4,) if args.quick else (1, 4)
    found = {f"chunk_{c}": capacity(c, args) for c in chunks}
    result = {
        **run_header(args),
        "rule": f"largest N with P99 queue wait <= {PROMISE_MS} ms, 0 frames lost and >= {MIN_DELIVERED:.0%} of "
        f"its requests sent at the rate; N doubles "
        f"from {START_ROBOTS}, then 2 bisections",
        "control_hz": CONTROL_HZ,
        "duration_s": args.duration,
        "wall_s": round(time.monotonic() - t0, 1),
        "capacity": found,
    }
    out = write_json(result, args.out)
    for key, c in found.items():
        for r in c["runs"]:
            q = r["queue_wait_ms"]
            print(f"{key:8} N={r['robots']:>5}  queue wait p50/p99 {q['p50']:.1f}/{q['p99']:.1f} ms  "
                  f"lost {r['frames_lost']:>4}  delivered {r['delivered']:>4.0%}  stalled {r['stalled_robots']:>3}  "
                  f"{'holds' if r['holds'] else '-'}")  # fmt: skip
    print(f"wrote {out} ({result['wall_s']} s)")
    print(
        "fleet_capacity: "
        + "; ".join(
            f"{key.replace('_', ' length ')}: {c['largest_robots']} robots x {CONTROL_HZ:.0f} Hz "
            f"({c['observations_per_s']} observations/s) within P99 {PROMISE_MS} ms"
            for key, c in found.items()
        )
    )


if __name__ == "__main__":
    main()
