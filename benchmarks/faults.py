"""Fault and fuzz campaign: does any ack ever lie, and how long does each actor kind take to come back?

A platform with one Reacher task (2 replicas, a PPO learner) serves sim robots through the real gateway
(CURVE links), data server and learner. Then, with the fleet running:

1. **Hostile frames**, from a separate process (an attacker is another machine, not a thread sharing the
   robots' interpreter): a flood of hellos with wrong tokens from a registered robot's connection, a
   captured hello replayed from 60 connections with unregistered CURVE keys (opened for each flood window,
   closed after it: ZeroMQ re-tries a refused handshake for as long as the socket lives), and a fuzzer
   speaking random frames with valid keys. Quiet and flood windows alternate (three of each) so the
   learner's load falls on both alike; ``healthy_robot_p99_ms_during_flood`` is the healthy robots'
   observation-to-action round trip in the flood windows, beside the quiet windows' figure;
   ``hostile.cores_busy`` is the gateway's and the attacker's CPU use in each kind of window (cores; on
   one machine the attacker's is taken from the robots' cores too).
2. **Kills**: ``ray.kill`` (SIGKILL, Ray restarts the actor) of every actor kind, several times each, in
   rounds — gateway, data server, inference replica, learner, registry, metrics server, weight board,
   task manager. ``recovery_s`` is the time from the kill until Ray's restarted process answers and
   (gateway, data server) a robot episode ended after the kill is acked, (task manager) the task's REST
   route answers 200. A REST poller records every answer of ``GET /v1/tasks/{task}`` meanwhile
   (``rest_during_kills``: status counts, answers that were not JSON).
3. **Audit**: every episode a robot had acked must be in the store (``acked_not_stored``) exactly as it
   was sent (``stored_differs_from_sent``: rows, outcome, actions, observations), stored once
   (``duplicates``).

``--quick``: 8 robots, one kill per kind, 3 s windows (about four minutes). Full: 32 robots, 3 kills per
kind, 10 s windows (about six minutes here). Writes ``benchmarks/results/faults.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ray
from common import REACHER_SPECS, percentiles, run_header, tasks_config, write_json

from fleetrl.platform.platform import Platform
from fleetrl.robots import protocol as P
from fleetrl.robots.client import ClientConfig
from fleetrl.robots.sim import run_sim_fleet
from fleetrl.testing.gateway_fuzz import GatewayFuzzer
from fleetrl.testing.net import RawRobotSocket, unregistered_socket
from fleetrl.testing.restarts import actor_pid, kill_and_await_restart

TASK = "reach"
KINDS = ("gateway", "data_server", "replica", "learner", "registry", "metrics_server", "weight_board",
         "task_manager")  # fmt: skip
BUDGETS = {"robots": (8, 32), "kills_per_kind": (1, 3), "settle_s": (10, 20), "window_s": (3, 10)}


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


def kill_and_time(platform: Platform, kind: str, clients: list, api: httpx.Client) -> float | None:
    actor, probe = handle_of(platform, kind)
    t_kill = time.monotonic()

    def served() -> bool:
        if kind in ("gateway", "data_server"):
            return acked_after(clients, t_kill)
        if kind == "task_manager":
            return api.get(f"/v1/tasks/{TASK}").status_code == 200
        return True

    took = kill_and_await_restart(actor, probe, timeout=120.0, then=served)
    return None if took is None else round(took, 2)


class RestPoller(threading.Thread):
    """``GET /v1/tasks/{task}`` five times a second: what a REST client sees while actors die."""

    def __init__(self, api: httpx.Client):
        super().__init__(daemon=True)
        self.api, self.stop = api, threading.Event()
        self.statuses: dict[str, int] = {}
        self.not_json = 0

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                r = self.api.get(f"/v1/tasks/{TASK}")
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            else:
                key = str(r.status_code)
                self.not_json += not r.headers.get("content-type", "").startswith("application/json")
            self.statuses[key] = self.statuses.get(key, 0) + 1


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``; 0 where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_trips_ms(clients: list, t0: float, t1: float) -> list[float]:
    """Healthy robots' observation-to-action round trips answered between ``t0`` and ``t1``."""
    out = []
    for c in clients:
        for (rtt, _), t in zip(list(c.replies), list(c.reply_times), strict=False):
            if t0 <= t <= t1:
                out.append(rtt)
    return out


def hostile_peers(endpoint: str, flooder: dict, fuzzed: dict, flooding: Any, done: Any, out: Any) -> None:
    """The attacker's process: while ``flooding`` is set, 60 stranger connections are open and it floods and
    fuzzes; between windows they are closed, so the quiet windows are quiet. Until ``done``; what the
    hostile peers got back goes to ``out``."""
    flood = RawRobotSocket(endpoint, flooder["curve"])
    fuzzer = GatewayFuzzer(endpoint, fuzzed["robot_id"], fuzzed["token"], 7, fuzzed["curve"])
    hello = P.Hello(robot_id=flooder["robot_id"], token=flooder["token"])  # captured, replayed
    wrong = P.Hello(robot_id=flooder["robot_id"], token="wrong")
    codes: dict[str, int] = {}
    sent = answered = windows = 0
    while not done.is_set():
        if not flooding.wait(0.05):
            continue
        strangers = [unregistered_socket(endpoint, flooder["curve"]) for _ in range(60)]
        windows += 1
        while flooding.is_set():
            for _ in range(50):
                flood.try_send(wrong)
                strangers[sent % 60].try_send(hello)  # their handshake is refused: never block on them
                sent += 1
            for _ in range(10):
                fuzzer.send_one()
            while flood.sock.poll(0):
                code = P.decode(flood.sock.recv()).code
                codes[code] = codes.get(code, 0) + 1
            time.sleep(0.02)
        answered += sum(1 for s in strangers if s.sock.poll(0))
        for s in strangers:
            s.close()
    flood.close()
    fuzzer.close()
    out.put({"hellos_sent": sent * 2, "flood_answers": codes, "stranger_connections_answered": answered,
             "stranger_connections": 60 * windows, "fuzz_frames": fuzzer.frames,
             "fuzz_answers": dict(fuzzer.codes)})  # fmt: skip


def hostile_phase(platform: Platform, api: httpx.Client, clients: list, window_s: float) -> dict[str, Any]:
    """Three quiet and three flood windows, alternating; the healthy robots' round trips in each kind."""
    body = {"task": TASK, "observation_spec": REACHER_SPECS["observation"],
            "action_spec": {"shape": [2], "dtype": "float32"}}  # fmt: skip
    flooder = api.post("/v1/robots", json={"name": "flooder", **body}).json()
    fuzzed = api.post("/v1/robots", json={"name": "fuzzer", **body}).json()
    ctx = mp.get_context("spawn")
    flooding, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
    attacker = ctx.Process(
        target=hostile_peers, args=(platform.endpoint, flooder, fuzzed, flooding, done, out)
    )
    attacker.start()
    time.sleep(3.0)  # its sockets connect before the first window
    quiet_ms: list[float] = []
    flood_ms: list[float] = []
    pids = {"gateway": actor_pid(platform.gateways[0]), "attacker": attacker.pid}
    cores: dict[str, dict[str, list[float]]] = {w: {p: [] for p in pids} for w in ("quiet", "flood")}
    for _ in range(3):
        for samples, flood in ((quiet_ms, False), (flood_ms, True)):
            (flooding.set if flood else flooding.clear)()
            t0, cpu0 = time.monotonic(), {p: process_cpu_s(pid) for p, pid in pids.items()}
            time.sleep(window_s)
            samples += round_trips_ms(clients, t0 + 0.5, time.monotonic())  # the switch settles first
            for p, pid in pids.items():
                cores["flood" if flood else "quiet"][p].append((process_cpu_s(pid) - cpu0[p]) / window_s)
    flooding.clear()
    done.set()
    hostile = out.get(timeout=60)
    attacker.join(30)
    api.delete(f"/v1/robots/{flooder['robot_id']}")
    api.delete(f"/v1/robots/{fuzzed['robot_id']}")
    cpu = {w: {p: round(float(np.mean(v)), 3) for p, v in per.items()} for w, per in cores.items()}
    return {**hostile, "cores_busy": cpu, "quiet_ms": quiet_ms, "flood_ms": flood_ms}


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
        api = httpx.Client(base_url=platform.rest_url, timeout=10,
                           headers={"Authorization": f"Bearer {platform.admin_token}"})  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not acked_after(clients, 0.0) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(b["settle_s"])
            print(f"  {len(clients)} robots up; hostile phase: 3 x ({b['window_s']} s quiet, "
                  f"{b['window_s']} s flood)", flush=True)  # fmt: skip
            hostile = hostile_phase(platform, api, clients, b["window_s"])
            quiet_ms, flood_ms = hostile.pop("quiet_ms"), hostile.pop("flood_ms")
            print(f"  flood: {hostile['hellos_sent']} hellos, {hostile['fuzz_frames']} fuzz frames; round trip "
                  f"p99 {percentiles(quiet_ms)['p99']} ms quiet, {percentiles(flood_ms)['p99']} ms flooded",
                  flush=True)  # fmt: skip
            poller = RestPoller(api)
            poller.start()
            recovery: dict[str, list[float | None]] = {k: [] for k in KINDS}
            for round_ in range(b["kills_per_kind"]):
                for kind in KINDS:
                    recovery[kind].append(kill_and_time(platform, kind, clients, api))
                    print(f"  round {round_ + 1}: {kind} back in {recovery[kind][-1]} s", flush=True)
                    time.sleep(2.0)
            time.sleep(b["settle_s"])  # robots re-send what the kills left unacked
            poller.stop.set()
            poller.join(5)
            stop.set()
            fleet.join(60)
            time.sleep(3.0)
            found = audit(platform, clients)
        finally:
            stop.set()
            platform.stop()
    result.update(found)
    result["kills"] = {k: len(v) for k, v in recovery.items()}
    result["rest_during_kills"] = {"statuses": poller.statuses, "not_json": poller.not_json}
    result["recovery_s"] = {
        k: {"p50": float(np.median([x for x in v if x is not None])) if any(x is not None for x in v) else None,
            "max": max((x for x in v if x is not None), default=None), "not_back": sum(x is None for x in v)}
        for k, v in recovery.items()
    }  # fmt: skip
    result["healthy_robot_p99_ms_quiet"] = percentiles(quiet_ms)["p99"]
    result["healthy_robot_p99_ms_during_flood"] = percentiles(flood_ms)["p99"]
    result["round_trip_ms"] = {"quiet": percentiles(quiet_ms), "during_flood": percentiles(flood_ms)}
    result["hostile"] = hostile
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    out = write_json(result, args.out or Path(__file__).parent / "results" / "faults.json")
    print(f"faults: {result['episodes_acked']} acked, {result['acked_not_stored']} acked-not-stored, "
          f"{result['stored_differs_from_sent']} stored-differs, {result['duplicates']} duplicates; "
          f"p99 {result['healthy_robot_p99_ms_quiet']} -> {result['healthy_robot_p99_ms_during_flood']} ms "
          f"under the flood; recovery p50 {({k: v['p50'] for k, v in result['recovery_s'].items()})}; -> {out}")  # fmt: skip


if __name__ == "__main__":
    main()
