"""The robot's credentials file: private, rewritten whole, and a damaged one named in a clear error."""

from __future__ import annotations

import stat

import pytest

from fleetrl.robots.client.credentials import load_credentials, save_credentials
from fleetrl.robots.client.registration import RegistrationError

CREDENTIALS = {"robot_id": "rbt_1", "name": "arm-0", "task": "pick", "token": "t1", "endpoint": "tcp://h:5555",
               "chunk_len": 4, "curve": None, "reregistered": False}  # fmt: skip


def test_saved_credentials_are_private_and_read_back(tmp_path):
    path = tmp_path / "robots" / "arm-0.json"
    assert load_credentials(path) is None
    save_credentials(path, CREDENTIALS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_credentials(path)
    assert loaded == {k: v for k, v in CREDENTIALS.items() if k != "reregistered"}
    save_credentials(path, {**CREDENTIALS, "token": "t2"})
    assert load_credentials(path)["token"] == "t2" and [p.name for p in path.parent.iterdir()] == [
        "arm-0.json"
    ]


@pytest.mark.parametrize("text", ["{not json", '{"robot_id": "rbt_1"}', "[]"])
def test_a_damaged_file_is_refused_naming_it(tmp_path, text):
    path = tmp_path / "arm-0.json"
    path.write_text(text)
    with pytest.raises(RegistrationError, match="arm-0.json"):
        load_credentials(path)
