"""A camera robot through the real platform: a task whose observation has a JPEG camera key, sim Reacher
robots rendering 64x64 frames with MuJoCo, the SDK compressing them, the gateway decoding them for
inference and storing the decoded episode; a corrupt frame is refused as ``bad_observation`` and the robot's
session goes on. The task's learner clones the robots' camera-only episodes through a CNN encoder: its loss
falls and the replicas serve the versions it publishes (the pixel learning path; whether it learns the
task is ``benchmarks/pixels.py``'s question)."""

from __future__ import annotations

import time

import numpy as np
import ray
import simplejpeg

from fleetrl.robots import protocol as P
from fleetrl.robots.client import RobotClient, register
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.net import RawRobotSocket
from tests.conftest import ADMIN_TOKEN, delete_task, reacher_task
from tests.integration.helpers import FleetThread

CAMERA = {"shape": [64, 64, 3], "dtype": "uint8", "encoding": "jpeg", "quality": 90}
TASK = reacher_task("reach-cam", observation={"state": {"shape": [10]}, "camera": CAMERA})
PIXEL_TASK = reacher_task(
    "reach-pixels",
    observation={"camera": CAMERA},
    policy={"family": "flow_chunk", "hidden": [32, 32], "flow_steps": 2,
            "encoder": {"channels": [8, 8], "strides": [2, 2], "feature_dim": 16, "augment": "shift"}},
    learner={"algorithm": "bc", "config": {"batch_size": 64, "lr": 3e-3}, "publish_every": 5, "max_updates_per_s": 50,
             "report_every_s": 0.2},
)  # fmt: skip


def test_camera_frames_go_compressed_are_served_decoded_and_stored(api, platform):
    assert api.post("/v1/tasks", json=TASK, timeout=120).status_code == 201
    try:
        clients = []
        for i in range(2):
            robot = SimRobot("Reacher-v5", seed=80 + i, control_hz=50.0, camera=64)
            clients.append(
                RobotClient.from_registration(
                    robot, register(platform.rest_url, ADMIN_TOKEN, f"cam-{i}", "reach-cam", robot)
                )
            )
        with FleetThread(clients) as fleet:
            fleet.wait_for(
                lambda: any(e.acked for c in clients for e in c.episodes), timeout=60, what="an acked episode"
            )
            # the console's thumbnail: the latest frame a robot sent, as the JPEG it travelled as
            latest = api.get(f"/v1/robots/{clients[0].robot_id}/camera")
            assert latest.status_code == 200 and latest.headers["content-type"] == "image/jpeg", latest.text
            assert latest.headers["x-camera-key"] == "camera" and float(latest.headers["x-frame-time"]) > 0
            assert simplejpeg.decode_jpeg(latest.content).shape == (64, 64, 3)
            assert (
                api.get(f"/v1/robots/{clients[0].robot_id}/camera", params={"key": "state"}).status_code
                == 422
            )
        assert api.get("/v1/robots/nobody/camera").status_code == 404
        fleet.assert_only_recovered_errors()
        assert fleet.total("replies") > 10
        client, log = next((c, e) for c in clients for e in c.episodes if e.acked)
        stored = ray.get(platform.data.get_episode.remote(log.episode_id, client.robot_id))
        camera = stored.observations["camera"]
        assert camera.dtype == np.uint8 and camera.shape == (len(log.steps), 64, 64, 3)
        sent = np.stack([o["camera"] for o in log.observations]).astype(int)
        error = np.abs(camera.astype(int) - sent).mean()
        assert 0 < error < 3, error  # close to what the robot rendered, and not equal: it travelled as JPEG
        assert np.array_equal(stored.observations["state"], np.stack([o["state"] for o in log.observations]))

        # a corrupt frame from a registered robot: refused with the reason, the session goes on
        body = {"name": "cam-raw", "task": "reach-cam", "observation_spec": TASK["task"]["observation"],
                "action_spec": TASK["task"]["action"]}  # fmt: skip
        creds = api.post("/v1/robots", json=body).json()
        raw = RawRobotSocket(creds["endpoint"], creds["curve"])
        try:
            assert isinstance(
                raw.request(P.Hello(robot_id=creds["robot_id"], token=creds["token"])), P.Welcome
            )
            frame = SimRobot("Reacher-v5", seed=90, camera=64).reset()
            good = {"state": frame["state"], "camera": P.encode_frame(frame["camera"], "jpeg")}
            corrupt = {**good, "camera": P.EncodedFrame("jpeg", good["camera"].data[:200])}
            reply = raw.request(
                P.Obs(robot_id=creds["robot_id"], episode_id="e", step=0, observation=corrupt)
            )
            assert reply.code == "bad_observation" and "not a valid jpeg image" in reply.message, reply
            reply = raw.request(P.Obs(robot_id=creds["robot_id"], episode_id="e", step=0, observation=good))
            assert isinstance(reply, P.Action) and reply.actions.shape == (4, 2), reply
        finally:
            raw.close()
    finally:
        delete_task(api, "reach-cam")


def test_a_pixel_policy_learns_from_camera_only_robots_and_its_versions_are_served(api, platform):
    assert api.post("/v1/tasks", json=PIXEL_TASK, timeout=120).status_code == 201
    try:
        robots = [
            SimRobot("Reacher-v5", seed=70 + i, control_hz=50.0, camera=64, state=False) for i in range(2)
        ]
        clients = [
            RobotClient.from_registration(
                r, register(platform.rest_url, ADMIN_TOKEN, f"pix-{i}", "reach-pixels", r)
            )
            for i, r in enumerate(robots)
        ]
        losses: dict[int, float] = {}  # learner step -> its reported BC loss

        def learner_until(predicate, what: str, timeout: float = 90.0) -> dict:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                status = api.get("/v1/tasks/reach-pixels").json().get("learner") or {}
                if "bc_loss" in status.get("losses", {}):
                    losses[status["step"]] = status["losses"]["bc_loss"]
                if predicate(status):
                    return status
                time.sleep(0.2)
            raise AssertionError(f"timed out waiting for {what}; BC losses by step {losses}")

        def recent() -> float:
            return float(np.mean([losses[k] for k in sorted(losses)[-5:]]))

        t0 = time.monotonic()
        with FleetThread(clients) as fleet:
            learner_until(lambda s: len(losses) >= 5, "the learner's first updates")
            started = time.monotonic() - t0
            first = float(np.mean([losses[k] for k in sorted(losses)[:5]]))
            learner_until(
                lambda s: s.get("version", 0) >= 3 and recent() < 0.8 * first,
                f"the BC loss below 0.8 x its start {first:.3f} and 3 published versions",
                timeout=120,
            )
            learned = time.monotonic() - t0
            # the robots act with what the learner published: their latest steps carry version >= 3
            fleet.wait_for(
                lambda: any(s.policy_version >= 3 for c in clients for e in c.episodes for s in e.steps),
                timeout=30,
                what=f"actions from version 3 (learner started after {started:.0f} s, loss fell by {learned:.0f} s)",
            )
        fleet.assert_only_recovered_errors()
    finally:
        delete_task(api, "reach-pixels")
