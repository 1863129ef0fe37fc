"""A robot shaped like LeRobot's ``Robot`` (``connect``, ``get_observation``, ``send_action``,
``disconnect``, ``observation_features``, ``action_features``, ``is_connected``) for tests of
``fleetrl.robots.lerobot_adapter``: a two-joint arm whose joints move halfway to each command per step
(clipped to [-1, 1] as a follower arm's safety limits would) and a camera that sees its tip as a bright dot.
No LeRobot import: the adapter must work from the interface alone."""

from __future__ import annotations

import numpy as np

JOINTS = ("shoulder_pan.pos", "elbow_flex.pos")


class LeRobotLikeArm:
    def __init__(self, side: int = 32, seed: int = 0):
        self.side = side
        self.q = np.random.default_rng(seed).uniform(-0.5, 0.5, len(JOINTS))
        self.connected, self.sent = False, []

    @property
    def observation_features(self) -> dict:
        return {**{j: float for j in JOINTS}, "front": (self.side, self.side, 3)}

    @property
    def action_features(self) -> dict:
        return {j: float for j in JOINTS}

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self, calibrate: bool = True) -> None:
        if self.connected:
            raise RuntimeError("already connected")  # as LeRobot's check_if_already_connected
        self.connected = True

    def disconnect(self) -> None:
        if not self.connected:
            raise RuntimeError("not connected")
        self.connected = False

    def get_observation(self) -> dict:
        if not self.connected:
            raise RuntimeError("not connected")
        frame = np.zeros((self.side, self.side, 3), np.uint8)
        row, col = ((np.clip(self.q, -1, 1) + 1) / 2 * (self.side - 1)).astype(int)
        frame[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = 255
        return {**{j: float(v) for j, v in zip(JOINTS, self.q, strict=True)}, "front": frame}

    def send_action(self, action: dict) -> dict:
        if not self.connected:
            raise RuntimeError("not connected")
        target = np.clip([float(action[j]) for j in JOINTS], -1.0, 1.0)
        self.q = self.q + 0.5 * (target - self.q)
        sent = dict(zip(JOINTS, target.tolist(), strict=True))
        self.sent.append(sent)
        return sent
