"""What cameras cost: bytes on the wire per robot, bytes on disk per frame, and replay sampling speed.

A sim Reacher renders real MuJoCo frames (``SimRobot(camera=SIDE)``) for episodes of random actions.

* ``bandwidth``: the robot SDK's own code turns an episode into what goes on the wire: a ``steps`` upload
  of every executed row (``EpisodeLog.steps_messages``, byte-bounded) and an ``obs`` frame per action chunk,
  each packed by the protocol codec (``P.encode``), with the task's specs raw or ``encoding: jpeg``, for 1
  and 3 cameras at ``--side`` (default 224) and ``--hz``. Three cameras are three keys with the same view.
  Also the robot's encode and the gateway's decode time per frame.
* ``storage``: bytes per frame in the episode's Parquet file (``EpisodeStore.put``) raw, PNG and JPEG, at
  64x64 and 224x224.
* ``replay``: ``Replay.sample_chunks(256)`` transitions per second with the frames held raw and held as
  JPEG (decoded per sampled batch), at 64x64 and 224x224, one thread.

    MUJOCO_GL=egl .venv/bin/python benchmarks/cameras.py [--quick] [--side 224] [--hz 10]

Writes ``benchmarks/results/cameras.json`` and prints tables, then a one-line summary last.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import run_header, write_json

from fleetrl.robots import protocol as P
from fleetrl.robots.recorder import EpisodeLog, StepRecord
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.replay import Replay
from fleetrl.workers.data.store import EpisodeStore

ROOT = Path(__file__).resolve().parent.parent
CHUNK_LEN = 4


def record(side: int, steps: int, seed: int) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """``steps`` observations (state + rendered camera frame) and actions of a random-action episode."""
    robot = SimRobot("Reacher-v5", seed=seed, camera=side, max_episode_steps=steps + 1)
    rng = np.random.default_rng(seed)
    obs, observations, actions = robot.reset(), [], []
    for _ in range(steps):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        observations.append(obs)
        actions.append(action)
        obs = robot.act(action).observation
    robot.close()
    return observations, actions


def with_cameras(obs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {"state": obs["state"], **{f"camera{i}": obs["camera"] for i in range(n)}}


def wire_bytes(observations, actions, cameras: int, encoding: str, side: int, hz: float) -> dict[str, Any]:
    """Bytes per second one robot sends at ``hz``: every row once in ``steps`` frames, one ``obs`` frame
    per chunk of ``CHUNK_LEN`` steps."""
    specs = {"state": P.ArraySpec((10,))}
    specs |= {f"camera{i}": P.ArraySpec((side, side, 3), "uint8", encoding=encoding) for i in range(cameras)}
    log = EpisodeLog("bandwidth")
    for t, (obs, action) in enumerate(zip(observations, actions, strict=True)):
        log.record(StepRecord(t, t, 0.0, 0.0, 1, "rep"), with_cameras(obs, cameras), action)
    wire_specs = specs if encoding != "raw" else None
    steps = sum(len(P.encode(f)) for f in log.steps_messages("robot", 64, 1 << 20, wire_specs))
    obs_frames = [
        P.encode(P.Obs(robot_id="robot", episode_id="e", step=t,
                       observation=P.encode_observation(specs, with_cameras(o, cameras)) if wire_specs else with_cameras(o, cameras)))
        for t, o in enumerate(observations) if t % CHUNK_LEN == 0
    ]  # fmt: skip
    per_step = (steps + sum(map(len, obs_frames))) / len(observations)
    return {
        "bytes_per_step": round(per_step),
        "kib_per_s": round(per_step * hz / 1024, 1),
        "mbit_per_s": round(per_step * hz * 8 / 1e6, 2),
        "largest_obs_frame_bytes": max(map(len, obs_frames)),
    }


def codec_times(observations, side: int) -> dict[str, float]:
    frames = [o["camera"] for o in observations]
    spec = P.ArraySpec((side, side, 3), "uint8", encoding="jpeg")
    t0 = time.perf_counter()
    encoded = [P.encode_frame(f, "jpeg", spec.quality) for f in frames]
    t1 = time.perf_counter()
    for e in encoded:
        P.decode_frame(e, spec, "camera")
    t2 = time.perf_counter()
    return {
        "jpeg_encode_ms": round((t1 - t0) / len(frames) * 1e3, 3),
        "jpeg_decode_ms": round((t2 - t1) / len(frames) * 1e3, 3),
        "jpeg_frame_bytes_mean": round(float(np.mean([e.nbytes for e in encoded]))),
        "raw_frame_bytes": int(frames[0].nbytes),
    }


def camera_episodes(side: int, n_episodes: int, steps: int, seed: int) -> list:
    """Episodes whose ``cam`` key holds rendered frames (state and actions synthetic)."""
    out = []
    for i in range(n_episodes):
        observations, _ = record(side, steps + 1, seed + i)
        frames = np.stack([o["camera"] for o in observations])
        ep = synthetic_episode(
            steps, episode_id=f"cam-{side}-{i}", obs_spec={"state": ((10,), "float32")}, seed=i
        )
        out.append(dataclasses.replace(ep, observations={**ep.observations, "cam": frames[:steps]},
                                       final_observation={**ep.final_observation, "cam": frames[steps]}))  # fmt: skip
    return out


def with_sensor_noise(ep, sigma: float = 2.0, seed: int = 0):
    """``ep`` with Gaussian noise of ``sigma`` grey levels on every frame: a rendered scene is flat where a
    real camera's frames carry sensor noise, which generic compression does not remove."""
    rng = np.random.default_rng(seed)

    def noisy(x: np.ndarray) -> np.ndarray:
        return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)

    return dataclasses.replace(ep, observations={**ep.observations, "cam": noisy(ep.observations["cam"])},
                               final_observation={**ep.final_observation, "cam": noisy(ep.final_observation["cam"])})  # fmt: skip


def storage(episodes: list, side: int) -> dict[str, int]:
    """Parquet bytes per frame of the camera key (whole files / frames), raw / PNG / JPEG, for the rendered
    frames and for the same frames with sensor noise."""
    out = {}
    for label, eps in (
        ("rendered", episodes),
        ("sensor_noise", [with_sensor_noise(e, seed=i) for i, e in enumerate(episodes)]),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            for enc in ("raw", "png", "jpeg"):
                frames = (
                    None if enc == "raw" else {"cam": P.ArraySpec((side, side, 3), "uint8", encoding=enc)}
                )
                with EpisodeStore(f"{tmp}/{enc}") as store:
                    for ep in eps:
                        store.put(ep, frames=frames)
                size = sum(f.stat().st_size for f in Path(f"{tmp}/{enc}").rglob("*.parquet"))
                out[f"{label}_{enc}_bytes_per_frame"] = round(size / sum(len(e) + 1 for e in eps))
    return out


def video_storage(episodes: list, side: int, samples: int) -> dict[str, float]:
    """The alternative to a file per frame: every episode's frames in one AV1 mp4 (LeRobot's video
    features, ``fleetrl/workers/data/video.py``). Bytes per frame, and the time to get one frame at a
    random index as replay sampling would (seek to its keyframe, decode up to it) against decoding one
    stored JPEG frame."""
    import av

    from fleetrl.robots.protocol import decode_frame, encode_frame
    from fleetrl.workers.data.video import encode_video

    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for label, eps in (
        ("rendered", episodes),
        ("sensor_noise", [with_sensor_noise(e, seed=i) for i, e in enumerate(episodes)]),
    ):
        frames = np.concatenate([e.observations["cam"] for e in eps])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cam.mp4"
            encode_video(frames, path, fps=10)
            out[f"{label}_av1_video_bytes_per_frame"] = round(path.stat().st_size / len(frames))
            if label == "sensor_noise":
                continue
            times = []
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                for index in rng.integers(0, len(frames), samples):
                    t0 = time.perf_counter()
                    container.seek(int(index), stream=stream, backward=True)  # pts = frame index
                    frame = next(f for f in container.decode(stream) if f.pts >= index)
                    frame.to_ndarray(format="rgb24")
                    times.append(time.perf_counter() - t0)
            out["video_random_frame_ms"] = round(1000 * float(np.median(times)), 3)
        spec = P.ArraySpec((side, side, 3), "uint8", encoding="jpeg")
        jpegs = [encode_frame(f, "jpeg", spec.quality) for f in frames[:samples]]
        t0 = time.perf_counter()
        for j in jpegs:
            decode_frame(j, spec, "cam")
        out["jpeg_frame_decode_ms"] = round(1000 * (time.perf_counter() - t0) / len(jpegs), 3)
    return out


def replay_speed(episodes: list, side: int, seconds: float) -> dict[str, float]:
    """Transitions per second of ``sample_chunks(256)``, frames held raw vs as JPEG."""
    out = {}
    for enc in ("raw", "jpeg"):
        frames = None if enc == "raw" else {"cam": P.ArraySpec((side, side, 3), "uint8", encoding=enc)}
        replay = Replay(CHUNK_LEN, 0.99, offline_fraction=0.0, seed=0, frames=frames)
        for ep in episodes:
            replay.add(ep)
        replay.sample_chunks(256)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            replay.sample_chunks(256)
            n += 256
        out[f"{enc}_transitions_per_s"] = round(n / (time.perf_counter() - t0))
        held = replay.online.obs["cam"][: replay.online.rows]
        out[f"{enc}_memory_bytes_per_frame"] = round(
            held.nbytes / len(held) if held.dtype != object else np.mean([len(b) for b in held])
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 steps instead of 100")
    ap.add_argument("--side", type=int, default=224, help="camera frame side in pixels")
    ap.add_argument("--hz", type=float, default=10.0, help="control rate the bandwidth is given at")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cameras.json"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.monotonic()
    observations, actions = record(args.side, 20 if args.quick else 100, args.seed)
    table = {
        f"cameras_{n}": {enc: wire_bytes(observations, actions, n, enc, args.side, args.hz) for enc in ("raw", "jpeg")}
        for n in (1, 3)
    }  # fmt: skip
    result = {
        **run_header(args),
        "wall_s": round(time.monotonic() - t0, 1),
        "env": "Reacher-v5",
        "side": args.side,
        "control_hz": args.hz,
        "chunk_len": CHUNK_LEN,
        "steps": len(observations),
        "bandwidth": table,
        "codec": codec_times(observations, args.side),
        "storage": {},
        "replay": {},
    }
    for side in (64, 224):
        episodes = camera_episodes(side, 2 if args.quick else 4, 50, args.seed)
        result["storage"][f"{side}px"] = storage(episodes, side) | video_storage(episodes, side, 50)
        result["replay"][f"{side}px"] = replay_speed(episodes, side, 1.0 if args.quick else 3.0)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    out = write_json(result, args.out)
    print(f"one robot at {args.hz:g} Hz, {args.side}x{args.side} RGB, chunk length {CHUNK_LEN}:")
    for cams, row in table.items():
        print(f"  {cams}: raw {row['raw']['kib_per_s']} KiB/s ({row['raw']['mbit_per_s']} Mbit/s), "
              f"jpeg {row['jpeg']['kib_per_s']} KiB/s ({row['jpeg']['mbit_per_s']} Mbit/s)")  # fmt: skip
    print(f"  codec: {result['codec']}")
    for side in result["storage"]:
        print(f"  {side}: bytes per stored frame {result['storage'][side]}; replay {result['replay'][side]}")
    print(out)
    print(summary_line(result))


def summary_line(r: dict[str, Any]) -> str:
    b = r["bandwidth"]
    return (
        f"cameras: {r['side']}px at {r['control_hz']:g} Hz, 1 camera raw {b['cameras_1']['raw']['kib_per_s']} "
        f"vs jpeg {b['cameras_1']['jpeg']['kib_per_s']} KiB/s, 3 cameras {b['cameras_3']['raw']['kib_per_s']} vs "
        f"{b['cameras_3']['jpeg']['kib_per_s']} KiB/s; replay 64px jpeg "
        f"{r['replay']['64px']['jpeg_transitions_per_s']} transitions/s"
    )


if __name__ == "__main__":
    main()
