"""Fuzz the robot gateway over a real ZeroMQ socket with well-typed frames of hostile content.

Why: the wire decoder checks types; what the values mean (shapes, steps, episode ids, outcomes, metadata,
non-finite numbers) is checked by the gateway, the episode assembly and the data server. A gap there shows
as an exception the gateway's catch-all turns into an ``internal`` refusal, as a gateway restart, or as an
episode stored that later breaks replay sampling. ``fuzz`` drives an authenticated session through
episodes, mutating one or two fields of otherwise valid frames, and reports what came back.

    python -m fleetrl.testing.gateway_fuzz --frames 3000 --seed 0   # a local platform (the test config)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections import Counter
from typing import Any

import numpy as np

from fleetrl.robots import protocol as P
from fleetrl.robots.episode import empty_columns
from fleetrl.testing.net import RawRobotSocket

INTS = [0, 1, -1, 3, 49, 2**31, -(2**31), 2**62, -(2**63), 2**64 - 1]
FLOATS = [0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324]
STRINGS = ["", "ep-x", "x" * 5000, "é\x00\u2028", "../../etc/passwd", "success", "failure", "aborted",
           "timeout", "human", "robot", "critic", "online", "demo", "offline", "autonomous"]  # fmt: skip
ROBOT_KINDS = ("obs", "obs", "obs", "steps", "steps", "episode_end", "control", "ping", "server_kind")


class GatewayFuzzer:
    """One authenticated raw session of a robot whose task observes ``state`` (float32) and acts in float32."""

    def __init__(self, endpoint: str, robot_id: str, token: str, seed: int = 0, curve: dict | None = None):
        self.rng = np.random.default_rng(seed)
        self.raw = RawRobotSocket(endpoint, curve)
        self.robot_id, self.token = robot_id, token
        welcome = self.raw.request(P.Hello(robot_id=robot_id, token=token))
        if not isinstance(welcome, P.Welcome):
            raise RuntimeError(f"hello refused: {welcome}")
        self.obs_shape = tuple(welcome.observation_spec["state"]["shape"])
        self.act_shape = tuple(welcome.action_spec["shape"])
        self.episode, self.step, self.rows = "fz-0", 0, 0
        self.codes: Counter[str] = Counter()
        self.frames = 0

    # -- hostile values ------------------------------------------------------------------------------
    def _pick(self, pool: list) -> Any:
        return pool[int(self.rng.integers(len(pool)))]

    def hostile_array(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        choice = int(self.rng.integers(10))
        if choice == 0:
            return np.full(shape, self._pick([math.nan, math.inf, -math.inf]), np.float32)
        if choice == 1:
            return np.zeros((*shape, 1), dtype)
        if choice == 2:
            return np.zeros(shape[1:] if shape else (1,), dtype)
        if choice == 3:
            return np.zeros(shape, self._pick(["float64", "int32", "uint8", "bool", "float16"]))
        if choice == 4:
            return np.zeros((0, *shape[1:]), dtype)
        if choice == 5:
            return np.array(3.0, dtype)
        if choice == 6:
            return self._pick([1, "a", [1.0, 2.0], {"x": 1}, None, True, b"\x00\x01"])
        if choice == 7:
            return np.full(shape, 1e30, np.float32)
        return np.zeros(shape, dtype)  # valid

    def hostile_value(self, like: Any) -> Any:
        """A value of ``like``'s wire type most of the time, another type sometimes."""
        if self.rng.random() < 0.2:
            return self._pick([None, "s", 1, 1.5, [1], {"k": "v"}, True])
        if isinstance(like, bool):
            return not like
        if isinstance(like, int):
            return self._pick(INTS)
        if isinstance(like, float):
            return self._pick(FLOATS)
        if isinstance(like, str):
            return self._pick(STRINGS)
        if isinstance(like, np.ndarray):
            return self.hostile_array(like.shape, like.dtype.name)
        if isinstance(like, dict):
            return self.hostile_dict(like)
        return self._pick([None, 1, "x"])

    def hostile_dict(self, like: dict) -> dict:
        out = dict(like)
        r = int(self.rng.integers(4))
        if r == 0 and out:
            out.pop(self._pick(sorted(out)))
        elif r == 1:
            out[self._pick(["extra", "", "x" * 300, "state2"])] = self._pick([1, "v", np.zeros(3, "float32")])
        elif out:
            key = self._pick(sorted(out))
            out[key] = self.hostile_value(out[key])
        return out

    # -- valid frames, then mutated ------------------------------------------------------------------
    def valid(self, kind: str) -> P.Message:
        rid, ep = self.robot_id, self.episode
        if kind == "obs":
            return P.Obs(robot_id=rid, episode_id=ep, step=self.step, t_robot=time.monotonic(),
                         observation={"state": np.zeros(self.obs_shape, np.float32)})  # fmt: skip
        if kind == "steps":
            n = int(self.rng.integers(1, 5))
            cols = empty_columns(n)
            cols["obs_step"] += self.rows
            return P.Steps(robot_id=rid, episode_id=ep, first_step=self.rows,
                           observations={"state": np.zeros((n, *self.obs_shape), np.float32)},
                           actions=np.zeros((n, *self.act_shape), np.float32), columns=cols)  # fmt: skip
        if kind == "episode_end":
            return P.EpisodeEnd(robot_id=rid, episode_id=ep, outcome=self._pick(["success", "failure"]),
                                steps=self.rows, total_reward=1.0,
                                final_observation={"state": np.ones(self.obs_shape, np.float32)},
                                meta={"seed": 3})  # fmt: skip
        if kind == "control":
            return P.Control(robot_id=rid, episode_id=ep, step=self.step,
                             mode=self._pick(["human", "autonomous"]), operator="op")  # fmt: skip
        if kind == "ping":
            return P.Ping(robot_id=rid)
        cls = self._pick([P.Action, P.Welcome, P.Reset, P.Ack, P.Pong, P.Error])
        return cls(robot_id=rid)

    def mutate(self, msg: P.Message) -> dict[str, Any]:
        wire = msg.to_wire()
        fields = [k for k in wire if k not in ("v", "kind")]
        for _ in range(int(self.rng.integers(1, 3))):
            key = self._pick(fields)
            if key == "robot_id" and self.rng.random() < 0.7:
                continue  # mostly keep the session, or every frame is just unknown_session
            wire[key] = self.hostile_value(wire[key])
        if key == "columns" and isinstance(wire.get("columns"), dict) and self.rng.random() < 0.5:
            wire["columns"] = {k: self.hostile_value(v) for k, v in wire["columns"].items()}
        return wire

    def send_one(self) -> str:
        kind = self._pick(list(ROBOT_KINDS))
        msg = self.valid(kind)
        mutated = self.rng.random() < 0.6
        try:
            frame = P.pack(self.mutate(msg) if mutated else msg.to_wire())
        except (TypeError, ValueError, OverflowError):
            return "unencodable"  # e.g. an int msgpack cannot carry: nothing to send
        self.raw.send_raw(frame)
        self.frames += 1
        if not mutated:  # keep the episode moving so deeper paths are reached
            if kind == "obs":
                self.step += 1
            elif kind == "steps":
                self.rows += len(msg.actions)
            elif kind == "episode_end":
                self.episode, self.step, self.rows = f"fz-{self.frames}", 0, 0
        return self.drain(0.02)

    def drain(self, timeout_s: float) -> str:
        """Read every reply that came within ``timeout_s``; each must decode. Returns the last code."""
        last = "none"
        while self.raw.sock.poll(int(timeout_s * 1000)):
            reply = P.decode(self.raw.sock.recv())  # a reply that does not decode raises: a finding
            last = reply.code if isinstance(reply, P.Error) else reply.KIND
            self.codes[last] += 1
            timeout_s = 0.0
        return last

    def close(self) -> None:
        self.raw.close()


def fuzz(
    platform: Any,
    frames: int,
    seed: int = 0,
    admin_token: str | None = None,
    task: str = "reach",
    per_robot: int = 300,
) -> dict[str, Any]:
    """Send ``frames`` fuzzed frames to ``platform``'s gateway, from a fresh robot of ``task`` (observation
    ``state`` [10] float32, action [2] float32) every ``per_robot`` frames (a session soon has its most
    open episodes: then everything is ``overloaded``)."""
    import httpx
    import ray

    token = admin_token or os.environ["FLEETRL_ADMIN_TOKEN"]
    gateway_pid = ray.get(platform.gateways[0].__ray_call__.remote(lambda self: os.getpid()))
    internal_before = ray.get(platform.gateway.stats.remote())["refused"].get("internal", 0)
    codes: Counter[str] = Counter()
    sent, robots = 0, []
    for i in range(math.ceil(frames / per_robot)):
        body = {"name": f"fuzz-{seed}-{i}", "task": task,
                "observation_spec": {"state": {"shape": [10], "dtype": "float32"}},
                "action_spec": {"shape": [2], "dtype": "float32"}}  # fmt: skip
        creds = httpx.post(f"{platform.rest_url}/v1/robots", json=body,
                           headers={"Authorization": f"Bearer {token}"}, timeout=30).json()  # fmt: skip
        fz = GatewayFuzzer(
            creds["endpoint"], creds["robot_id"], creds["token"], seed * 1000 + i, creds.get("curve")
        )
        try:
            for _ in range(min(per_robot, frames - sent)):
                fz.send_one()
            fz.drain(1.0)
        finally:
            fz.close()
        codes.update(fz.codes)
        sent += fz.frames
        robots.append(creds["robot_id"])
    stats = ray.get(platform.gateway.stats.remote())
    return {
        "frames": sent,
        "replies": dict(codes),
        "internal_refusals": stats["refused"].get("internal", 0) - internal_before,
        "gateway_restarted": ray.get(platform.gateways[0].__ray_call__.remote(lambda self: os.getpid()))
        != gateway_pid,
        "robot_ids": robots,
        **stored_episode_report(platform.data, task, set(robots)),
    }


def stored_episode_report(data: Any, task: str, robot_ids: set[str]) -> dict[str, Any]:
    """What the fuzzed robots left in the store: every episode must read back valid and finite (log-probs
    may be NaN by design), and the task's replay must still sample."""
    import ray

    stored, problems = 0, []
    for robot_id, episode_id in ray.get(data.episode_keys.remote(task)):
        if robot_id not in robot_ids:
            continue
        episode = ray.get(data.get_episode.remote(episode_id, robot_id))
        stored += 1
        try:
            episode.validate()
            arrays = [*episode.observations.values(), episode.actions, *episode.final_observation.values()]
            arrays += [c for name, c in episode.columns.items() if name != "log_prob"]
            if not all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f"):
                raise ValueError("non-finite values stored")
        except ValueError as exc:
            problems.append(f"{episode_id}: {exc}")
    batch = ray.get(data.sample_chunks.remote(task, 64))
    sampled = [
        *batch.obs.values(),
        *batch.next_obs.values(),
        batch.actions,
        batch.rewards,
        batch.chunk_reward,
    ]
    return {
        "episodes_stored": stored,
        "bad_episodes": problems,
        "replay_samples": len(batch),
        "replay_finite": bool(all(np.isfinite(a).all() for a in sampled if a.dtype.kind == "f")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import ray

    from fleetrl.platform.config import parse_config
    from fleetrl.platform.platform import Platform
    from fleetrl.testing.net import free_port

    os.environ["FLEETRL_FUZZ_ADMIN_TOKEN"] = token = "fuzz"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    spec = {"observation": {"state": {"shape": [10]}}, "action": {"shape": [2], "low": -1.0, "high": 1.0}}
    cfg = parse_config({
        "name": "fuzz",
        "state_dir": tempfile.mkdtemp(prefix="fleetrl-fuzz-"),
        "rest": {"port": free_port(), "admin_token_env": "FLEETRL_FUZZ_ADMIN_TOKEN"},
        "gateway": {"bind": f"tcp://127.0.0.1:{free_port()}"},
        "tasks": [{"name": "reach", **spec, "chunk_len": 4, "inference": {"replicas": 2}}],
    }, "gateway_fuzz")  # fmt: skip
    with Platform(cfg) as platform:
        print(json.dumps(fuzz(platform, args.frames, args.seed, token), indent=1))


if __name__ == "__main__":
    main()
