"""Fault and fuzz campaign: does any ack ever lie, and how long does each actor kind take to come back?

A platform with one Reacher task (2 replicas, a PPO learner) serves sim robots through the real gateway
(CURVE links), data server and learner. Then, with the fleet running:

1. **Kills**: ``ray.kill`` (SIGKILL, Ray restarts the actor) of every restartable actor kind, several
   times each, in rounds — gateway, data server, inference replica, learner, registry, metrics server.
   ``recovery_s`` is the time until the killed actor answers again and (gateway, data server) a robot
   episode ended after the kill is acked. The task manager and the weight board are killed last, once:
   they do not restart with their state yet, so the run records what the REST API answers then.
2. **Hostile frames**: a flood of hellos with wrong tokens from a registered robot's connection, 60
   connections with unregistered CURVE keys and a fuzzer speaking random frames with valid keys, while the
   healthy robots' observation-to-action round trip is measured (``healthy_robot_p99_ms_during_flood``
   beside the same figure before the flood).
3. **Audit**: every episode a robot had acked must be in the store (``acked_not_stored``) exactly as it
   was sent (``stored_differs_from_sent``: rows, outcome, actions, observations), stored once
   (``duplicates``).

``--quick``: 8 robots, one kill per kind, a short flood (a minute or two). Full: 32 robots, 3 kills per
kind, ~10 minutes. Writes ``benchmarks/results/faults.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ray
import zmq
from common import REACHER_SPECS, percentiles, run_header, tasks_config, write_json

from fleetrl.platform.platform import Platform
from fleetrl.robots import protocol as P
from fleetrl.robots.client import ClientConfig
from fleetrl.robots.sim import run_sim_fleet
from fleetrl.testing.gateway_fuzz import GatewayFuzzer
from fleetrl.testing.net import RawRobotSocket

TASK = "reach"
RESTARTABLE = ("gateway", "data_server", "replica", "learner", "registry", "metrics_server")
BUDGETS = {"robots": (8, 32), "kills_per_kind": (1, 3), "settle_s": (10, 20), "flood_s": (10, 30)}


def task_config() -> dict:
    learner = {"algorithm": "ppo", "config": {"steps_per_update": 1024, "epochs": 2}, "publish_every": 1,
               "checkpoint_every": 2, "max_updates_per_s": 2}  # fmt: skip
    inference = {"replicas": 2, "max_batch": 32, "max_restarts": -1}
    return {"name": TASK, "chunk_len": 4, **REACHER_SPECS, "inference": inference, "learner": learner}


def handle_of(platform: Platform, kind: str) -> tuple[Any, Any]:
    """(the actor, a cheap call that answers once it is back) for an actor kind."""
    if kind == "gateway":
        return platform.gateway, lambda a: a.ready.remote()
    if kind == "data_server":
        return platform.data, lambda a: a.ready.remote()
    if kind == "replica":
        return platform.replicas[TASK][0], lambda a: a.ready.remote()
    if kind == "learner":
        return platform.learner(TASK), lambda a: a.status.remote()
    if kind == "registry":
        return platform.registry, lambda a: a.list_tasks.remote()
    if kind == "metrics_server":
        return platform.metrics, lambda a: a.ready.remote()
    if kind == "task_manager":
        return platform.tasks, lambda a: a.ready.remote()
    if kind == "weight_board":
        return platform.weights, lambda a: a.pools.remote()
    raise ValueError(kind)


def acked_after(clients: list, t: float) -> bool:
    """Some robot has an episode that ended after ``t`` (robot clock = this process's monotonic) acked."""
    return any(
        ep.acked and ep.steps and ep.steps[-1].action_start > t for c in clients for ep in list(c.episodes)
    )


def kill_and_time(platform: Platform, kind: str, clients: list, limit_s: float = 120.0) -> float | None:
    actor, probe = handle_of(platform, kind)
    ray.kill(actor, no_restart=False)
    t_kill = time.monotonic()
    answered = False
    while time.monotonic() - t_kill < limit_s:
        if not answered:
            try:
                ray.get(probe(actor), timeout=2)
                answered = True
            except Exception:  # noqa: BLE001 - still restarting
                time.sleep(0.2)
                continue
        if kind not in ("gateway", "data_server") or acked_after(clients, t_kill):
            return round(time.monotonic() - t_kill, 2)
        time.sleep(0.2)
    return None


def round_trips_ms(clients: list, t0: float, t1: float) -> list[float]:
    """Healthy robots' observation-to-action round trips answered between ``t0`` and ``t1``."""
    out = []
    for c in clients:
        for (rtt, _), t in zip(list(c.replies), list(c.reply_times), strict=False):
            if t0 <= t <= t1:
                out.append(rtt)
    return out


def hostile_phase(platform: Platform, seconds: float) -> dict[str, Any]:
    """Flood and fuzz for ``seconds``; what the hostile peers got back."""
    api = httpx.Client(
        base_url=platform.rest_url, headers={"Authorization": f"Bearer {platform.admin_token}"}
    )
    body = {"task": TASK, "observation_spec": REACHER_SPECS["observation"],
            "action_spec": {"shape": [2], "dtype": "float32"}}  # fmt: skip
    flooder = api.post("/v1/robots", json={"name": "flooder", **body}).json()
    fuzzed = api.post("/v1/robots", json={"name": "fuzzer", **body}).json()
    codes: dict[str, int] = {}
    stop = time.monotonic() + seconds
    flood = RawRobotSocket(platform.endpoint, flooder["curve"])
    strangers = []
    for _ in range(60):
        public, secret = (k.decode() for k in zmq.curve_keypair())
        strangers.append(RawRobotSocket(platform.endpoint, {**flooder["curve"], "public_key": public,
                                                            "secret_key": secret}))  # fmt: skip
    fuzzer = GatewayFuzzer(fuzzed["endpoint"], fuzzed["robot_id"], fuzzed["token"], 7, fuzzed["curve"])
    hello = P.Hello(robot_id=flooder["robot_id"], token=flooder["token"])  # a captured hello, replayed
    sent = 0
    while time.monotonic() < stop:
        for _ in range(50):
            try:
                flood.sock.send(P.encode(P.Hello(robot_id=flooder["robot_id"], token="wrong")), zmq.NOBLOCK)
            except zmq.Again:
                pass
            try:  # their handshake is refused, so there is no peer to queue for: never block on them
                strangers[sent % 60].sock.send(P.encode(hello), zmq.NOBLOCK)
            except zmq.Again:
                pass
            sent += 1
        for _ in range(10):
            fuzzer.send_one()
        while flood.sock.poll(0):
            code = P.decode(flood.sock.recv()).code
            codes[code] = codes.get(code, 0) + 1
        time.sleep(0.02)
    stranger_answers = sum(1 for s in strangers if s.sock.poll(0))
    for s in [flood, *strangers]:
        s.close()
    fuzzer.close()
    api.delete(f"/v1/robots/{flooder['robot_id']}")
    api.delete(f"/v1/robots/{fuzzed['robot_id']}")
    return {"hellos_sent": sent * 2, "flood_answers": codes, "stranger_connections_answered": stranger_answers,
            "fuzz_frames": fuzzer.frames, "fuzz_answers": dict(fuzzer.codes)}  # fmt: skip


def audit(platform: Platform, clients: list) -> dict[str, Any]:
    keys = ray.get(platform.data.episode_keys.remote(TASK), timeout=60)
    stored = set(keys)
    acked = [(c.robot_id, ep) for c in clients for ep in list(c.episodes) if ep.acked]
    missing, differs = [], []
    for robot_id, ep in acked:
        if (robot_id, ep.episode_id) not in stored:
            missing.append(ep.episode_id)
            continue
        got = ray.get(platform.data.get_episode.remote(ep.episode_id, robot_id), timeout=30)
        same = (
            len(got) == len(ep.steps)
            and got.outcome == ep.outcome
            and np.array_equal(got.actions, np.stack(ep.actions))
            and np.array_equal(got.observations["state"], np.stack([o["state"] for o in ep.observations]))
            and np.array_equal(got.final_observation["state"], ep.final_observation["state"])
        )
        if not same:
            differs.append(ep.episode_id)
    return {
        "episodes_acked": len(acked),
        "episodes_stored": len(keys),
        "acked_not_stored": len(missing),
        "stored_differs_from_sent": len(differs),
        "duplicates": len(keys) - len(stored),
        "refused_for_good": sum(1 for c in clients for ep in list(c.episodes) if ep.refused),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 robots, one kill per kind (a few minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hz", type=float, default=20.0, help="sim robots' control rate")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/faults.json)")
    args = ap.parse_args(argv)
    b = {k: v[0] if args.quick else v[1] for k, v in BUDGETS.items()}
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("fleetrl.robots.client").setLevel(logging.ERROR)
    result: dict[str, Any] = {**run_header(args), "budgets": b | {"control_hz": args.hz}}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleetrl-faults-") as state_dir:
        platform = Platform(tasks_config(state_dir, [task_config()])).start()
        stop, clients = threading.Event(), []
        fleet = threading.Thread(
            target=run_sim_fleet, args=("Reacher-v5", b["robots"], platform.rest_url, platform.admin_token, TASK),
            kwargs={"control_hz": args.hz, "seed": args.seed, "stop": stop, "on_start": clients.extend,
                    "config": ClientConfig(keep_episodes=100_000, keep_replies=100_000, ack_timeout_s=1.0)},
            daemon=True,
        )  # fmt: skip
        fleet.start()
        try:
            deadline = time.monotonic() + 120
            while not acked_after(clients, 0.0) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(b["settle_s"])
            t0 = time.monotonic()
            time.sleep(b["flood_s"])
            before_ms = round_trips_ms(clients, t0, time.monotonic())
            print(f"  {len(clients)} robots up; round trip p99 before the flood "
                  f"{percentiles(before_ms)['p99']} ms", flush=True)  # fmt: skip
            t_flood = time.monotonic()
            hostile = hostile_phase(platform, b["flood_s"])
            during_ms = round_trips_ms(clients, t_flood, time.monotonic())
            print(f"  flood: {hostile['hellos_sent']} hellos, {hostile['fuzz_frames']} fuzz frames; round trip "
                  f"p99 {percentiles(during_ms)['p99']} ms", flush=True)  # fmt: skip
            recovery: dict[str, list[float | None]] = {k: [] for k in RESTARTABLE}
            for round_ in range(b["kills_per_kind"]):
                for kind in RESTARTABLE:
                    recovery[kind].append(kill_and_time(platform, kind, clients))
                    print(f"  round {round_ + 1}: {kind} back in {recovery[kind][-1]} s", flush=True)
                    time.sleep(2.0)
            time.sleep(b["settle_s"])  # robots re-send what the kills left unacked
            stop.set()
            fleet.join(60)
            time.sleep(3.0)
            found = audit(platform, clients)
            unrestartable = {}
            for kind in ("weight_board", "task_manager"):
                actor, probe = handle_of(platform, kind)
                ray.kill(actor, no_restart=False)
                time.sleep(5.0)
                try:
                    ray.get(probe(actor), timeout=5)
                    back = True
                except Exception:  # noqa: BLE001
                    back = False
                r = httpx.get(f"{platform.rest_url}/v1/tasks/{TASK}",
                              headers={"Authorization": f"Bearer {platform.admin_token}"}, timeout=10)  # fmt: skip
                unrestartable[kind] = {"answers_after_5s": back, "rest_status": r.status_code,
                                       "rest_is_json": r.headers.get("content-type", "").startswith("application/json")}  # fmt: skip
        finally:
            stop.set()
            try:
                platform.stop()
            except Exception:  # noqa: BLE001 - the task manager may be dead by design
                ray.shutdown()
    result.update(found)
    result["kills"] = {k: len(v) for k, v in recovery.items()}
    result["recovery_s"] = {
        k: {"p50": float(np.median([x for x in v if x is not None])) if any(x is not None for x in v) else None,
            "max": max((x for x in v if x is not None), default=None), "not_back": sum(x is None for x in v)}
        for k, v in recovery.items()
    }  # fmt: skip
    result["healthy_robot_p99_ms_before_flood"] = percentiles(before_ms)["p99"]
    result["healthy_robot_p99_ms_during_flood"] = percentiles(during_ms)["p99"]
    result["round_trip_ms"] = {"before_flood": percentiles(before_ms), "during_flood": percentiles(during_ms)}
    result["hostile"] = hostile
    result["not_restartable_yet"] = unrestartable
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    out = write_json(result, args.out or Path(__file__).parent / "results" / "faults.json")
    print(f"faults: {result['episodes_acked']} acked, {result['acked_not_stored']} acked-not-stored, "
          f"{result['stored_differs_from_sent']} stored-differs, {result['duplicates']} duplicates; "
          f"p99 {result['healthy_robot_p99_ms_before_flood']} -> {result['healthy_robot_p99_ms_during_flood']} ms "
          f"under the flood; recovery p50 {({k: v['p50'] for k, v in result['recovery_s'].items()})}; -> {out}")  # fmt: skip


if __name__ == "__main__":
    main()
