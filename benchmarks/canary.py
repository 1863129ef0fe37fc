"""Canary rollout with a deliberately broken version: does the gate catch it, how many episodes does it cost,
and does the fleet's success come back?

A platform with one canary task (``rollout: {mode: canary}``) serves robots with one decision per episode
(``fleetrl/testing/threshold_robot.py``: success iff the policy's last action is above 0.5) through the real
gateway, weight board, replica and data server. The benchmark plays the learner and publishes:

1. version 1, trained to succeed (its trial should promote it over the random initial weights);
2. version 2, the same weights zeroed (mean 0, std 1: about 29 % success when sampling): its trial should
   roll it back and the fleet should return to version 1;
3. version 3, trained again (promoted: the gate does not stick after a rejection).

Then an operator pins version 0 by hand and releases it, and evaluations of versions 2 and 3 (50 episodes,
policy mode) measure them. Reported: each verdict (the two sides' success, seconds from publish to verdict,
episodes run on the candidate), the fleet's success before, during and after the broken version's trial
(``broken_version``: the 9 s before it was published, its trial, the 9 s after its verdict), how much of the fleet ran it (``exposure``), and the fleet's success per window of
time (``timeline``). ``--quick``: 8 robots, trials of 10 episodes per side; full: 16 robots, 20 per side.
Writes ``benchmarks/results/canary.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from typing import Any

import httpx
import ray
from common import ROOT, run_header, tasks_config, wait_for, write_json

from fleetrl.platform.platform import Platform
from fleetrl.robots.client import ClientConfig, FleetRunner, RobotClient, register
from fleetrl.testing.threshold_robot import ThresholdRobot, broken_weights, good_weights, threshold_task

TASK = "canary"
SETTLE_S = 10.0  # after each verdict: how long the fleet runs what it left before the next publish
BUDGETS = {
    "robots": (8, 16),
    "window_episodes": (10, 20),
    "canary_fraction": (0.25, 0.25),
    "eval_episodes": (20, 50),
}


def episodes_of(clients: list[RobotClient]) -> list[dict[str, Any]]:
    """Every finished episode the robots ran: start time (monotonic), version, success."""
    out = []
    for c in clients:
        for ep in list(c.episodes):
            acted = [s for s in ep.steps if s.policy_version >= 0]
            if ep.outcome is not None and acted:
                out.append({"t": acted[0].obs_time, "version": acted[-1].policy_version,
                            "success": ep.outcome == "success", "robot": c.robot_id})  # fmt: skip
    return out


def rate(eps: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(eps)
    return {"success": round(sum(e["success"] for e in eps) / n, 3) if n else None, "episodes": n}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 robots, trials of 10 episodes per side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "canary.json"))
    args = ap.parse_args(argv)
    b = {k: v[0] if args.quick else v[1] for k, v in BUDGETS.items()}
    logging.basicConfig(level=logging.WARNING)
    rollout = {"mode": "canary", "canary_fraction": b["canary_fraction"], "window_episodes": b["window_episodes"],
               "tolerance": 0.1}  # fmt: skip
    result: dict[str, Any] = {**run_header(args), "budgets": b, "rollout": rollout}
    with tempfile.TemporaryDirectory(prefix="fleetrl-canary-") as state_dir:
        platform = Platform(tasks_config(state_dir, [threshold_task(TASK, rollout=rollout)["task"]])).start()
        api = httpx.Client(base_url=platform.rest_url, timeout=180,
                           headers={"Authorization": f"Bearer {platform.admin_token}"})  # fmt: skip
        clients = []
        for i in range(b["robots"]):
            robot = ThresholdRobot(control_hz=10, steps=5)
            info = register(platform.rest_url, platform.admin_token, f"thr-{i}", TASK, robot)
            clients.append(
                RobotClient.from_registration(robot, info, config=ClientConfig(keep_episodes=100_000))
            )
        stop = threading.Event()
        runner = FleetRunner(clients)
        fleet = threading.Thread(target=runner.run, kwargs={"stop": stop}, daemon=True)
        fleet.start()
        state = lambda: api.get(f"/v1/tasks/{TASK}/rollout").json()  # noqa: E731
        try:
            wait_for("first episodes", lambda: len(episodes_of(clients)) >= b["robots"], 60)
            replica = ray.get(platform.weights.pools.remote())[TASK][0]
            template = ray.get(replica.served_state.remote())
            verdicts, published = [], {}
            for version, weights in ((1, good_weights), (2, broken_weights), (3, good_weights)):
                published[version] = time.monotonic()
                ray.get(platform.weights.publish.remote(TASK, version, weights(template)))
                wait_for(f"the verdict on version {version}", lambda v=version: any(
                    x["candidate"] == v for x in state()["verdicts"]), 300)  # fmt: skip
                verdict = next(x for x in state()["verdicts"] if x["candidate"] == version)
                decided = time.monotonic()
                on_candidate = [
                    e for e in episodes_of(clients) if e["version"] == version and e["t"] < decided
                ]
                verdicts.append({**verdict, "publish_to_verdict_s": round(decided - published[version], 2),
                                 "episodes_on_candidate": len(on_candidate)})  # fmt: skip
                print(f"  version {version}: {verdict['decision']} (canary {verdict['canary_success']:.2f} vs "
                      f"stable {verdict['stable_success']:.2f}) {decided - published[version]:.1f} s after "
                      f"publishing, {len(on_candidate)} episodes on it", flush=True)  # fmt: skip
                settled_from = time.monotonic() + 1.0  # episodes that began after the verdict
                time.sleep(SETTLE_S)  # the fleet on what the verdict left, before the next version
                if version == 2:
                    after_from, broken_end = settled_from, time.monotonic()
            eps = episodes_of(clients)
            trial_window = [
                e
                for e in eps
                if published[2] + 1.0 <= e["t"] <= published[2] + verdicts[1]["publish_to_verdict_s"]
            ]
            result["verdicts"] = verdicts
            result["broken_version"] = {
                "before": rate([e for e in eps if published[2] - SETTLE_S + 1.0 <= e["t"] < published[2]]),
                "during_trial": rate(trial_window),
                "after_rollback": rate([e for e in eps if after_from <= e["t"] < broken_end]),
                "exposure": {
                    "episodes_on_broken": sum(e["version"] == 2 for e in eps),
                    "share_of_trial_episodes": round(
                        sum(e["version"] == 2 for e in trial_window) / max(1, len(trial_window)), 3
                    ),
                },  # fmt: skip
            }
            # an operator's pin, then its release
            t_pin = time.monotonic()
            pinned = api.post(f"/v1/tasks/{TASK}/rollback", json={"version": 0}).json()
            pin_answer_s = time.monotonic() - t_pin
            time.sleep(5.0)
            on_pin = [e for e in episodes_of(clients) if e["t"] >= t_pin + 1.0]
            api.delete(f"/v1/tasks/{TASK}/rollback")
            result["manual_rollback"] = {"pinned": pinned["pinned"], "answer_s": round(pin_answer_s, 3),
                                         "episodes_after_1s": len(on_pin),
                                         "share_on_pinned": round(sum(e["version"] == 0 for e in on_pin) / max(1, len(on_pin)), 3)}  # fmt: skip
            evaluations = {}
            for version in (2, 3):
                started = time.monotonic()
                record = api.post(f"/v1/tasks/{TASK}/evaluations",
                                  json={"version": version, "episodes": b["eval_episodes"]}).json()  # fmt: skip
                path = f"/v1/tasks/{TASK}/evaluations/{record['evaluation_id']}"
                wait_for(
                    f"evaluation of {version}", lambda p=path: api.get(p).json()["status"] == "done", 300
                )
                done = api.get(path).json()
                evaluations[str(version)] = {k: done[k] for k in ("success_rate", "success_ci95", "return_mean",
                                                                  "episodes_done", "deterministic")}  # fmt: skip
                evaluations[str(version)]["wall_s"] = round(time.monotonic() - started, 1)
                print(f"  evaluation of version {version}: success {done['success_rate']:.2f} "
                      f"(95 % CI {done['success_ci95'][0]:.2f}-{done['success_ci95'][1]:.2f})", flush=True)  # fmt: skip
            result["evaluations"] = evaluations
            stats = ray.get(platform.data.stats.remote(TASK))
            result["stored"] = {
                "episodes": stats["store"]["episodes"],
                "replayed": stats["replay"]["online_episodes"],
            }
            eps = episodes_of(clients)
            start, end = min(e["t"] for e in eps), max(e["t"] for e in eps)
            result["timeline"] = [
                {"t_s": round(w - start, 1), **rate([e for e in eps if w <= e["t"] < w + 5.0]),
                 "versions": sorted({e["version"] for e in eps if w <= e["t"] < w + 5.0})}
                for w in [start + 5.0 * i for i in range(int((end - start) // 5.0) + 1)]
            ]  # fmt: skip
            result["marks_s"] = {f"publish_{v}": round(t - start, 1) for v, t in published.items()}
        finally:
            stop.set()
            fleet.join(30)
            runner.close()
            platform.stop()
    write_json(result, args.out)
    bv = result["broken_version"]
    print(f"broken version 2: fleet success {bv['before']['success']} before, {bv['during_trial']['success']} "
          f"during its trial, {bv['after_rollback']['success']} after the rollback; "
          f"{bv['exposure']['episodes_on_broken']} episodes ran it -> {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
