"""Camera frames on the wire (robots/protocol/images.py): specs that declare an encoding, the JPEG/PNG codec
round trip, compressed frames through the msgpack codec, every refusal of a bad frame, byte-bounded step
uploads, and the frame-size check a task gets when it is configured."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fleetrl.platform.config import ConfigError, parse_config
from fleetrl.robots import protocol as P
from fleetrl.robots.recorder import EpisodeLog, StepRecord
from fleetrl.workers.task import TaskConfig, frame_fit_problem

CAMERA = P.ArraySpec((64, 64, 3), "uint8", encoding="jpeg", quality=90)


def scene(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth RGB image with a few shapes (camera-like: compresses as a real scene does)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, np.full((h, w), 90)], axis=-1).astype(np.uint8)
    for _ in range(3):
        cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(3, 8)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    return img


def test_specs_declare_an_encoding_only_for_uint8_images():
    assert P.ArraySpec.from_dict(CAMERA.to_dict()) == CAMERA
    assert "encoding" not in P.ArraySpec((3,)).to_dict()  # raw specs read as before
    grey = P.ArraySpec((32, 48), "uint8", encoding="png")
    assert grey.to_dict() == {"shape": [32, 48], "dtype": "uint8", "encoding": "png", "quality": 90}
    for bad, why in (
        (dict(shape=(64, 64, 3), dtype="float32", encoding="jpeg"), "needs dtype uint8"),
        (dict(shape=(64, 64, 4), dtype="uint8", encoding="jpeg"), "C in"),
        (dict(shape=(64,), dtype="uint8", encoding="png"), r"shape \[H, W\]"),
        (dict(shape=(8, 8), dtype="uint8", encoding="webp"), "encoding must be one of"),
        (dict(shape=(8, 8), dtype="uint8", encoding="jpeg", quality=0), "quality"),
    ):
        with pytest.raises(ValueError, match=why):
            P.ArraySpec(**bad)


def test_jpeg_is_close_and_small_png_is_exact():
    img = scene()
    jpeg = P.encode_frame(img, "jpeg", 90)
    assert jpeg.nbytes < img.nbytes / 4  # a camera-like 64x64 scene
    back = P.decode_frame(jpeg, CAMERA, "cam")
    assert back.shape == img.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - img.astype(int)).mean() < 3.0
    png = P.encode_frame(img, "png")
    assert np.array_equal(P.decode_frame(png, P.ArraySpec((64, 64, 3), "uint8", encoding="png"), "cam"), img)
    grey = scene()[:, :, 0]
    spec = P.ArraySpec((64, 64), "uint8", encoding="png")
    assert np.array_equal(P.decode_frame(P.encode_frame(grey, "png"), spec, "depth"), grey)


def test_compressed_frames_travel_through_the_codec_and_decode_against_the_spec():
    specs = {"cam": CAMERA, "state": P.ArraySpec((4,))}
    obs = {"cam": scene(), "state": np.arange(4, dtype=np.float32)}
    wire = P.encode_observation(specs, obs)
    assert isinstance(wire["cam"], P.EncodedFrame) and isinstance(wire["state"], np.ndarray)
    msg = P.decode(P.encode(P.Obs(robot_id="r", episode_id="e", observation=wire)))
    assert msg.observation["cam"] == wire["cam"]  # the same bytes arrive, still compressed
    decoded = P.decode_observation(specs, msg.observation)
    assert decoded["cam"].shape == (64, 64, 3) and np.array_equal(decoded["state"], obs["state"])
    assert np.array_equal(P.decode_observation(specs, obs)["cam"], obs["cam"])  # raw is accepted too


@pytest.mark.parametrize(
    "frame, why",
    [
        (P.EncodedFrame("jpeg", b"not a jpeg at all"), "not a valid jpeg image"),
        (P.EncodedFrame("jpeg", b""), "not a valid jpeg image"),
        (P.EncodedFrame("png", b"\x89PNG\r\n\x1a\n broken"), "the spec says jpeg"),
    ],
)
def test_a_corrupt_or_mislabelled_frame_is_a_bad_observation(frame, why):
    with pytest.raises(P.ProtocolError, match=why) as info:
        P.decode_observation({"cam": CAMERA}, {"cam": frame})
    assert info.value.code == "bad_observation"


def test_a_frame_that_decodes_to_another_shape_or_goes_to_a_raw_key_is_refused():
    other = P.encode_frame(scene(32, 48), "jpeg")
    with pytest.raises(P.ProtocolError, match=r"decoded to shape \[32, 48, 3\]"):
        P.decode_observation({"cam": CAMERA}, {"cam": other})
    raw_key = {"cam": P.ArraySpec((64, 64, 3), "uint8")}
    with pytest.raises(P.ProtocolError, match="key declared raw"):
        P.decode_observation(raw_key, {"cam": P.encode_frame(scene(), "jpeg")})


def test_a_malformed_frame_header_is_a_bad_frame():
    for payload in (b"\xc1", msgpack.packb(["gif"]) + b"xx", msgpack.packb([3]) + b"xx"):
        frame = msgpack.packb(
            {
                "v": P.PROTOCOL_VERSION,
                "kind": "obs",
                "robot_id": "r",
                "observation": {"cam": msgpack.ExtType(P.FRAME_EXT, payload)},
            },
            use_bin_type=True,
        )
        with pytest.raises(P.ProtocolError) as info:
            P.decode(frame)
        assert info.value.code == "bad_frame"


def _log(rows: int) -> EpisodeLog:
    ep = EpisodeLog("ep")
    for t in range(rows):
        rec = StepRecord(t, t, 0.0, 0.0, 1, "rep")
        ep.record(rec, {"cam": scene(seed=t), "state": np.zeros(4, np.float32)}, np.zeros(2, np.float32))
    return ep


def test_step_uploads_are_bounded_by_bytes_and_carry_compressed_frames():
    raw = _log(10).steps_messages("r", max_rows=64, max_bytes=40_000)
    assert [len(f.actions) for f in raw] == [3, 3, 3, 1]  # 12 KiB raw frames: 3 per 40 kB
    assert all(P.decode(P.encode(f)).observations["cam"].shape[1:] == (64, 64, 3) for f in raw)
    specs = {"cam": CAMERA, "state": P.ArraySpec((4,))}
    ep = _log(10)
    compressed = ep.steps_messages("r", max_rows=64, max_bytes=40_000, specs=specs)
    assert len(compressed) == 1 and len(compressed[0].observations["cam"]) == 10  # all fit compressed
    frames = P.decode(P.encode(compressed[0])).observations["cam"]
    rows = P.decode_rows(CAMERA, frames, 10, "cam")
    assert rows.shape == (10, 64, 64, 3)
    assert np.abs(rows.astype(int) - np.stack([o["cam"] for o in ep.observations]).astype(int)).mean() < 3
    one = _log(2).steps_messages("r", max_rows=64, max_bytes=10)  # a row over the budget still goes alone
    assert [len(f.actions) for f in one] == [1, 1]


def _camera_task(side: int, encoding: str = "jpeg") -> dict:
    return {
        "name": "cams",
        "observation": {"cam": {"shape": [side, side, 3], "dtype": "uint8", "encoding": encoding}},
        "action": {"shape": [2], "low": -1, "high": 1},
    }


def test_a_task_whose_step_can_never_fit_a_frame_is_refused_when_configured():
    ok = TaskConfig(**_camera_task(224))
    assert frame_fit_problem(ok, 4 * 1024 * 1024) is None
    big = TaskConfig(**_camera_task(1280))  # 4.9 MB raw: a noisy frame may not compress below that
    problem = frame_fit_problem(big, 4 * 1024 * 1024)
    assert problem and "gateway.max_frame_bytes" in problem and "4,194,304" in problem
    with pytest.raises(ConfigError, match=r"tasks\[0\].observation: one step of task 'cams'"):
        parse_config({"tasks": [_camera_task(1280)]})
    parse_config({"tasks": [_camera_task(1280)], "gateway": {"max_frame_bytes": 8 * 1024 * 1024}})
    with pytest.raises(ConfigError, match="needs dtype uint8"):
        parse_config(
            {
                "tasks": [
                    {**_camera_task(64), "observation": {"cam": {"shape": [64, 64, 3], "encoding": "jpeg"}}}
                ]
            }
        )


def test_the_gateway_assembles_compressed_uploads_into_decoded_episodes_and_refuses_a_corrupt_one():
    from fleetrl.workers.gateway.assembly import EpisodeAssembly

    task = TaskConfig(
        name="cams",
        observation={"cam": CAMERA.to_dict(), "state": {"shape": [4]}},
        action={"shape": [2], "low": -1, "high": 1},
    )
    specs = task.observation_spec
    ep = _log(6)
    ep.outcome, ep.final_observation = "success", {"cam": scene(seed=9), "state": np.ones(4, np.float32)}
    frames = [P.decode(P.encode(f)) for f in ep.steps_messages("r", 4, specs=specs)]
    assembly = EpisodeAssembly(task, "r", "ep")
    bad = P.decode(P.encode(frames[0]))
    bad.observations["cam"][1] = P.EncodedFrame("jpeg", b"\xff\xd8 truncated")
    with pytest.raises(P.ProtocolError, match=r"observations\['cam'\]\[1\]: not a valid jpeg") as info:
        assembly.add(bad)
    assert info.value.code == "bad_observation" and assembly.expected == 0  # nothing kept
    for frame in frames:
        assembly.add(frame)
    end = P.decode(P.encode(ep.end_message("r", specs)))
    assert isinstance(end.final_observation["cam"], P.EncodedFrame)
    episode = assembly.finish(end)
    assert (
        episode.observations["cam"].shape == (6, 64, 64, 3) and episode.observations["cam"].dtype == np.uint8
    )
    assert episode.final_observation["cam"].shape == (64, 64, 3)


def camera_episode(episode_id: str, n: int = 6, side: int = 64):
    from fleetrl.testing.episodes import synthetic_episode

    ep = synthetic_episode(n, episode_id=episode_id, obs_spec={"state": ((4,), "float32")})
    frames = np.stack([scene(side, side, seed=t) for t in range(n + 1)])
    return ep.__class__(**{**ep.__dict__, "observations": {**ep.observations, "cam": frames[:n]},
                           "final_observation": {**ep.final_observation, "cam": frames[n]}})  # fmt: skip


def test_the_store_keeps_camera_frames_compressed_and_reads_them_back(tmp_path):
    import pyarrow.parquet as pq

    from fleetrl.workers.data.store import EpisodeStore

    spec = P.ArraySpec((64, 64, 3), "uint8", encoding="png")  # lossless: read back exactly
    ep = camera_episode("ep-cam")
    with EpisodeStore(str(tmp_path / "raw")) as raw, EpisodeStore(str(tmp_path / "png")) as png:
        raw.put(ep)
        assert png.put(ep, frames={"cam": spec}) == (True, 1)
        back = png.get("ep-cam")
        assert np.array_equal(back.observations["cam"], ep.observations["cam"])
        assert np.array_equal(back.final_observation["cam"], ep.final_observation["cam"])
        files = {name: next((tmp_path / name).rglob("*.parquet")) for name in ("raw", "png")}
        assert pq.read_table(files["png"]).schema.field("obs/cam").type == "binary"
        assert files["png"].stat().st_size < files["raw"].stat().st_size / 2
        jpeg = EpisodeStore(str(tmp_path / "jpeg"))
        jpeg.put(ep, frames={"cam": CAMERA})
        lossy = jpeg.get("ep-cam").observations["cam"].astype(int)
        assert 0 < np.abs(lossy - ep.observations["cam"].astype(int)).mean() < 3
        jpeg.close()


def test_the_replay_holds_camera_frames_compressed_and_decodes_sampled_chunks():
    from fleetrl.workers.data.replay import Replay

    replay = Replay(chunk_len=2, gamma=0.9, seed=0, frames={"cam": CAMERA})
    episodes = [camera_episode(f"ep-{i}") for i in range(3)]
    for ep in episodes:
        replay.add(ep)
    assert replay.online.obs["cam"].dtype == object  # bytes per row, not 12 KB arrays
    batch = replay.sample_chunks(32)
    assert batch.obs["cam"].shape == (32, 64, 64, 3) and batch.obs["cam"].dtype == np.uint8
    for i in range(32):  # each sampled frame is (close to) the frame of its episode and step
        ep = next(e for e in episodes if e.episode_id == batch.episode_id[i])
        t = int(batch.step[i])
        assert np.abs(batch.obs["cam"][i].astype(int) - ep.observations["cam"][t].astype(int)).mean() < 3
        h = int(batch.mask[i].sum())
        nxt = ep.observations["cam"][t + h] if t + h < len(ep) else ep.final_observation["cam"]
        assert np.abs(batch.next_obs["cam"][i].astype(int) - nxt.astype(int)).mean() < 3
