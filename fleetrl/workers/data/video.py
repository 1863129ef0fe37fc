"""Camera frames <-> an mp4 file, through PyAV (FFmpeg), for LeRobot ``video`` features.

LeRobot v3.0 keeps each camera of many episodes in one mp4 file and finds an episode's frames by time
(``from_timestamp`` + the frame's ``timestamp``); we write and read that layout (``exporters.py``,
``importers/lerobot.py``). The codec is LeRobot's default for new datasets: AV1 (``libsvtav1``, in PyAV's
wheels) with yuv420p, a keyframe every 2 frames and CRF 30, so a sampled frame decodes after at most one
other. Frames are stamped ``pts = index`` in a time base of ``1/fps``, so frame times are exact.

PyAV is an optional dependency (``pip install 'fleetrl[video]'``), imported when a video is touched.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from fleetrl.extras import require

CODEC = "libsvtav1"
PIX_FMT = "yuv420p"
GOP = 2
CRF = 30


def _av() -> Any:
    os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder's banner and warnings (stderr): errors only
    return require("av", "LeRobot video features")


def _fps(fps: float) -> Fraction:
    """The frame rate as the fraction FFmpeg wants (30 -> 30/1, 29.97 -> 2997/100)."""
    return Fraction(fps).limit_denominator(1001)


def encode_video(frames: np.ndarray, path: str | Path, fps: float, crf: int = CRF, gop: int = GOP) -> dict:
    """Write uint8 frames [T, H, W, C] (C 1 or 3; H and W even, as yuv420p needs) as an AV1 mp4 at
    ``path``; frame i has timestamp i / fps. Returns the feature ``info`` LeRobot records for a video."""
    av = _av()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] not in (1, 3) or not len(frames):
        raise ValueError(
            f"encode_video: expected uint8 frames [T>0, H, W, 1|3], got {frames.dtype} {frames.shape}"
        )
    _, h, w, c = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"encode_video: {h}x{w} frames; yuv420p video needs an even height and width")
    rate = _fps(fps)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream(CODEC, rate=rate, options={"g": str(gop), "crf": str(crf), "preset": "12"})
        stream.width, stream.height, stream.pix_fmt = w, h, PIX_FMT
        stream.time_base = 1 / rate
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame if c == 3 else np.repeat(frame, 3, axis=2), format="rgb24")
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    return {
        "video.height": h,
        "video.width": w,
        "video.codec": "av1",
        "video.pix_fmt": PIX_FMT,
        "video.is_depth_map": False,
        "video.fps": float(fps),
        "video.channels": c,
        "has_audio": False,
    }


def decode_video(path: str | Path, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of the mp4 at ``path`` in order: (uint8 frames [N, H, W, channels], timestamps [N] in
    seconds). ``channels`` 1 keeps the luma of a grey camera."""
    av = _av()
    frames, times = [], []
    try:
        with av.open(str(path), "r") as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                img = frame.to_ndarray(format="gray" if channels == 1 else "rgb24")
                frames.append(img.reshape(img.shape[0], img.shape[1], channels))
                times.append(float(frame.pts * stream.time_base))
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"{path}: not a readable video ({e})") from None
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    return np.stack(frames), np.asarray(times)


def frames_at(
    frames: np.ndarray, times: np.ndarray, wanted: np.ndarray, tolerance_s: float, what: str
) -> np.ndarray:
    """The decoded frames whose timestamps match ``wanted`` (seconds) within ``tolerance_s`` (LeRobot's
    rule: an observation's frame is the one stamped at its time); ValueError naming the first miss."""
    order = np.argsort(times, kind="stable")
    t = times[order]
    i = np.searchsorted(t, wanted)
    lo, hi = np.clip(i - 1, 0, len(t) - 1), np.clip(i, 0, len(t) - 1)
    nearest = np.where(np.abs(t[lo] - wanted) <= np.abs(t[hi] - wanted), lo, hi)
    miss = np.flatnonzero(np.abs(t[nearest] - wanted) > tolerance_s)
    if len(miss):
        i = int(miss[0])
        raise ValueError(
            f"{what}: no video frame at {wanted[i]:.4f} s (nearest {t[nearest[i]]:.4f} s, tolerance "
            f"{tolerance_s} s); {len(miss)} of {len(wanted)} frames missing"
        )
    return frames[order[nearest]]
