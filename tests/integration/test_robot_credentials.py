"""A robot that keeps its credentials in a file (``fleetrl.robots.client.credentials``) through the real
REST API and gateway: its first start registers with the admin token, later starts renew with its own token
alone (same robot id, a new token that works at the gateway, the old one refused), and a robot deleted
meanwhile registers anew when an admin token is at hand."""

from __future__ import annotations

import json
import stat

import pytest

from fleetrl.robots.client import RobotClient
from fleetrl.robots.client.credentials import register_or_renew
from fleetrl.robots.client.registration import RegistrationError, renew
from fleetrl.robots.sim import SimRobot
from tests.conftest import ADMIN_TOKEN, delete_task, reacher_task
from tests.integration.helpers import FleetThread

TASK = "kept-identity"


def test_a_robot_with_saved_credentials_keeps_its_id_without_the_admin_token(api, platform, tmp_path):
    assert api.post("/v1/tasks", json=reacher_task(TASK), timeout=120).status_code == 201
    try:
        robot, path, url = SimRobot("Reacher-v5", control_hz=50), tmp_path / "arm-0.json", platform.rest_url
        first = register_or_renew(url, ADMIN_TOKEN, "arm-0", TASK, robot, path)
        assert (
            stat.S_IMODE(path.stat().st_mode) == 0o600
            and json.loads(path.read_text())["token"] == first["token"]
        )

        # a reboot: no admin token on the robot, the saved token renews itself
        second = register_or_renew(url, None, "arm-0", TASK, robot, path)
        assert second["robot_id"] == first["robot_id"] and second["token"] != first["token"]
        assert json.loads(path.read_text())["token"] == second["token"]
        with pytest.raises(RegistrationError) as old:  # the old token is revoked
            renew(url, first["robot_id"], first["token"], wait_s=0)
        assert old.value.status == 403

        # the renewed credentials work at the gateway: steps and an episode go through
        client = RobotClient.from_registration(robot, second)
        with FleetThread([client]) as fleet:
            fleet.wait_for(lambda: fleet.total("episodes") >= 1, timeout=60, what="an episode")
        rows = api.get("/v1/robots", params={"task": TASK}).json()
        assert [r["robot_id"] for r in rows] == [first["robot_id"]]

        # saved credentials for another name are refused; a deleted robot registers anew with the admin token
        with pytest.raises(RegistrationError, match="holds robot 'arm-0'"):
            register_or_renew(url, None, "arm-1", TASK, robot, path)
        assert api.delete(f"/v1/robots/{first['robot_id']}").status_code == 204
        with pytest.raises(RegistrationError) as gone:
            register_or_renew(url, None, "arm-0", TASK, robot, path)
        assert gone.value.status == 403
        third = register_or_renew(url, ADMIN_TOKEN, "arm-0", TASK, robot, path)
        assert third["robot_id"] != first["robot_id"]
        assert json.loads(path.read_text())["robot_id"] == third["robot_id"]
    finally:
        delete_task(api, TASK)
