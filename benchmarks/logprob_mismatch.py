"""Log-prob mismatch: PPO on a token-action policy served by a cheaper backend, anchored on the backend's
log-probs ('bypass') versus on log-probs recomputed in fp32 torch ('recompute').

The token policy (``token_lm``: a small Llama writing Reacher-v5 action chunks into the VLAC template) acts
through an inference backend (``--backend``: ``torch-fast`` with int8 (default) or bf16 numerics here;
``vllm`` on a GPU with vLLM installed), loaded with each published version, so every reported log-prob carries that backend's
numerics. The same PPO then trains twice, same seeds and env steps, once per anchor. Reported per anchor,
as means over updates: the PPO ratio spread (P1/P50/P99) and clip fraction over each update's first
epoch, the backend-vs-recomputed importance ratio spread, the mean/max |reported - recomputed|, and the
learning curve (mean return of each update's training episodes) with the final return (last 3 updates).
Then (unless ``--no-platform``) the recompute run once more through the platform, for its learning curve.

    MUJOCO_GL=egl .venv/bin/python benchmarks/logprob_mismatch.py [--quick] [--numerics int8|bf16]
    MUJOCO_GL=egl .venv/bin/python benchmarks/logprob_mismatch.py --backend vllm   # GPU + vLLM
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time

import numpy as np
import ray
import torch
from common import REACHER_SPECS, ROOT, run_header, tasks_config, write_json

from fleetrl.algorithms.ppo import PPOConfig
from fleetrl.models.token_policy import TokenLMConfig
from fleetrl.platform.platform import Platform
from fleetrl.robots.sim import SimRobot, run_sim_fleet
from fleetrl.testing.plain_ppo import train_plain_ppo

os.environ.setdefault("MUJOCO_GL", "egl")

POLICY = TokenLMConfig(number_range=20)
PPO = {"lr": 3e-4, "epochs": 4, "batch_size": 128, "gae_lambda": 0.9, "steps_per_update": 1024}
BUDGETS = {"env_steps": (3 * 1024, 20 * 1024)}  # quick / full
PER_UPDATE = (
    "ratio_p01", "ratio_p50", "ratio_p99", "clip_fraction_first_epoch", "clip_fraction",
    "mismatch_ratio_p01", "mismatch_ratio_p50", "mismatch_ratio_p99", "logprob_gap", "logprob_gap_max",
    "approx_kl",
)  # fmt: skip


def run(anchor: str, args: argparse.Namespace) -> dict:
    robots = [SimRobot("Reacher-v5", seed=args.seed + i) for i in range(args.robots)]
    # the ratio clipped around the anchor itself (what this benchmark measures); PPO's default clips around
    # the current weights, where an anchor's error shows in the row weights instead
    ppo = PPOConfig(**PPO, anchor=anchor, seed=args.seed, proximal="producing")
    print(
        f"  {anchor}: PPO anchored on {'backend' if anchor == 'bypass' else 'recomputed'} log-probs",
        flush=True,
    )
    result = train_plain_ppo(robots, POLICY, ppo, args.budget["env_steps"], seed=args.seed,
                             backend=args.backend, fast_numerics=args.numerics, progress=True)  # fmt: skip
    its = result.iterations
    out = {k: round(float(np.nanmean([it.metrics[k] for it in its])), 4) for k in PER_UPDATE}
    out["curve"] = [{"env_steps": it.env_steps, "return": round(it.mean_return, 3)} for it in its]
    out["first_return"] = round(its[0].mean_return, 3)
    out["final_return"] = round(float(np.mean([it.mean_return for it in its[-3:]])), 3)
    out["env_steps"], out["wall_s"] = its[-1].env_steps, round(its[-1].wall_s, 1)
    print(f"  {anchor}: { ({k: v for k, v in out.items() if k != 'curve'}) }", flush=True)
    return out


def platform_run(args: argparse.Namespace) -> dict:
    """The same token policy and PPO (recompute anchor) through the platform: sim robots over REST and
    ZeroMQ, torch-fast replicas, the learner on Ray Train. Curve: mean return of the last 20 episodes."""
    task = {
        "name": "reach-token", "chunk_len": 4, **REACHER_SPECS, "policy": POLICY.model_dump(),
        "inference": {"replicas": 2, "max_batch": 32, "backend": args.backend, "fast_numerics": args.numerics},
        "learner": {"algorithm": "ppo", "config": {**PPO, "seed": args.seed}, "publish_every": 1},
    }  # fmt: skip
    budget = args.budget["env_steps"]
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-") as state_dir:
        platform = Platform(tasks_config(state_dir, [task])).start()
        try:
            while ray.get(platform.weights.latest.remote("reach-token")) is None:
                time.sleep(0.5)
            stop = threading.Event()
            fleet = threading.Thread(
                target=run_sim_fleet,
                args=("Reacher-v5", args.robots, platform.rest_url, platform.admin_token, "reach-token"),
                kwargs={"seed": args.seed, "control_hz": 100.0, "stop": stop},
                daemon=True,
            )
            t0, curve = time.monotonic(), []
            fleet.start()
            while True:
                time.sleep(10)
                steps = ray.get(platform.data.stats.remote("reach-token"))["replay"]["online_transitions"]
                rollout = ray.get(platform.data.rollout_stats.remote("reach-token", 20))
                status = ray.get(platform.learner("reach-token").status.remote())
                if rollout.get("episodes"):
                    curve.append({"env_steps": steps, "return": round(rollout["mean_return"], 3),
                                  "version": status["version"]})  # fmt: skip
                    print(
                        f"    platform: {steps} env steps, v{status['version']}, return {curve[-1]['return']}"
                    )
                if steps >= budget:
                    break
            stop.set()
            fleet.join(30)
            losses = status["losses"]
            return {
                "curve": curve,
                "first_return": curve[0]["return"],
                "final_return": curve[-1]["return"],
                "updates": status["step"],
                "env_steps": steps,
                "wall_s": round(time.monotonic() - t0, 1),
                "last_update": {k: round(losses[k], 4) for k in PER_UPDATE if k in losses},
            }
        finally:
            platform.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="three updates per anchor (about two minutes)")
    ap.add_argument("--backend", default="torch-fast", choices=("torch-fast", "vllm"))
    ap.add_argument("--numerics", default="int8", choices=("bf16", "int8"), help="torch-fast's numeric path")
    ap.add_argument("--robots", type=int, default=4)
    ap.add_argument("--no-platform", dest="platform", action="store_false", help="skip the platform run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/logprob_mismatch[_vllm].json")
    args = ap.parse_args(argv)
    args.budget = {k: v[0] if args.quick else v[1] for k, v in BUDGETS.items()}
    suffix = {"torch-fast": "" if args.numerics == "int8" else "_bf16"}.get(args.backend, f"_{args.backend}")
    out_path = args.out or ROOT / "benchmarks" / "results" / f"logprob_mismatch{suffix}.json"
    torch.set_num_threads(1)
    logging.getLogger("fleetrl.robots.client").setLevel(logging.ERROR)
    t0 = time.monotonic()
    result = {
        **run_header(args),
        "backend": args.backend,
        "numerics": args.numerics if args.backend == "torch-fast" else args.backend,
        "env": "Reacher-v5",
        "budgets": args.budget | {"robots": args.robots},
        "policy": POLICY.model_dump(),
        "ppo_config": PPO,
        "definitions": {
            "ratio_pXX / clip_fraction_first_epoch": "PPO ratio pi_new/pi_anchor over each update's first "
            "epoch (clip at 0.2), mean over updates",
            "mismatch_ratio_pXX": "pi_fp32_recomputed / mu_backend for the same executed chunks",
            "final_return": "mean return of the training episodes of the last 3 updates",
        },
    }
    for anchor in ("bypass", "recompute"):
        result[anchor] = run(anchor, args)
    if args.platform:
        print("  platform: recompute anchor through the platform ...", flush=True)
        result["platform"] = platform_run(args)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    path = write_json(result, out_path)
    print(f"wrote {path} ({result['wall_s']} s)")
    b, r = result["bypass"], result["recompute"]
    print(
        f"logprob_mismatch ({result['numerics']}): first-epoch clip fraction bypass {b['clip_fraction_first_epoch']:.3f}"
        f" vs recompute {r['clip_fraction_first_epoch']:.3f}; ratio P1/P99 bypass "
        f"{b['ratio_p01']:.3f}/{b['ratio_p99']:.3f} vs recompute {r['ratio_p01']:.3f}/{r['ratio_p99']:.3f}; "
        f"backend/fp32 ratio P1/P99 {r['mismatch_ratio_p01']:.3f}/{r['mismatch_ratio_p99']:.3f}; "
        f"final return bypass {b['final_return']:.2f} vs recompute {r['final_return']:.2f}"
        + (
            f"; platform return {result['platform']['first_return']:.2f} -> {result['platform']['final_return']:.2f}"
            if "platform" in result
            else ""
        )
    )


if __name__ == "__main__":
    main()
