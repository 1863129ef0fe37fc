"""The registry's robot keys: a CURVE key pair issued at registration (secret returned once, not stored),
or the robot's own public key; each key is one robot's; registries from before keys are migrated."""

from __future__ import annotations

import sqlite3

import pytest
import zmq

from fleetrl.platform.registry import Registry
from fleetrl.workers.gateway.curve import is_curve_key, server_keys

SPEC = ({"state": {"shape": [3], "dtype": "float32"}}, {"shape": [2], "dtype": "float32"})


def test_issued_and_brought_keys(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    reg.upsert_task("reach", {})
    issued = reg.register_robot("a", "reach", *SPEC)
    assert is_curve_key(issued["curve_public_key"]) and is_curve_key(issued["curve_secret_key"])
    assert reg.robot_for_curve_key(issued["curve_public_key"]) == issued["robot_id"]
    stored = sqlite3.connect(tmp_path / "r.sqlite").execute("SELECT * FROM robots").fetchall()
    assert issued["curve_secret_key"] not in repr(stored)  # the secret is never kept
    public, _ = (k.decode() for k in zmq.curve_keypair())
    own = reg.register_robot("b", "reach", *SPEC, curve_public_key=public)
    assert "curve_secret_key" not in own and reg.robot_for_curve_key(public) == own["robot_id"]
    with pytest.raises(ValueError, match="another robot"):
        reg.register_robot("c", "reach", *SPEC, curve_public_key=public)
    assert reg.robot_for_curve_key("x" * 40) is None
    reg.delete_robot(own["robot_id"])
    assert reg.robot_for_curve_key(public) is None


def test_registering_a_name_again_keeps_the_robot_and_rotates_its_credentials(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    reg.upsert_task("reach", {})
    reg.upsert_task("other", {})
    first = reg.register_robot("arm-1", "reach", *SPEC)
    assert first["reregistered"] is False
    again = reg.register_robot("arm-1", "reach", {"state": {"shape": [4], "dtype": "float32"}}, SPEC[1])
    assert (
        again["reregistered"] is True and again["robot_id"] == first["robot_id"]
    )  # one robot, its history kept
    assert again["token"] != first["token"] and again["curve_public_key"] != first["curve_public_key"]
    assert reg.verify(first["robot_id"], first["token"]) is None  # the old token no longer speaks for it
    assert reg.verify(first["robot_id"], again["token"])["observation_spec"]["state"]["shape"] == [4]
    assert reg.robot_for_curve_key(first["curve_public_key"]) is None
    assert [r["robot_id"] for r in reg.list_robots("reach")] == [first["robot_id"]]
    with pytest.raises(ValueError, match="'arm-1' is registered for task 'reach'.*delete that robot first"):
        reg.register_robot("arm-1", "other", *SPEC)


def test_a_registry_from_before_keys_opens_with_its_robots(tmp_path):
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.executescript(
        "CREATE TABLE tasks (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL NOT NULL, config TEXT);"
        "CREATE TABLE robots (robot_id TEXT PRIMARY KEY, name TEXT NOT NULL, task TEXT NOT NULL,"
        " token_sha256 TEXT NOT NULL, observation_spec TEXT NOT NULL, action_spec TEXT NOT NULL,"
        " created REAL NOT NULL);"
        "INSERT INTO tasks VALUES ('reach', '{}', 0, NULL);"
        "INSERT INTO robots VALUES ('rbt_old', 'old', 'reach', 'h', '{}', '{}', 0);"
    )
    db.commit()
    db.close()
    reg = Registry(tmp_path / "old.sqlite")
    assert reg.get_robot("rbt_old")["curve_public_key"] is None  # re-register it for a CURVE gateway
    assert is_curve_key(reg.register_robot("new", "reach", *SPEC)["curve_public_key"])


def test_the_gateway_key_pair_is_made_once_and_kept_private(tmp_path):
    public, secret = server_keys(tmp_path)
    assert is_curve_key(public) and is_curve_key(secret) and server_keys(tmp_path) == (public, secret)
    assert (tmp_path / "keys" / "gateway.curve").stat().st_mode & 0o777 == 0o600


def test_robots_go_to_the_least_loaded_answering_gateway_unless_pinned_and_keep_their_own(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    reg.upsert_task("reach", {})
    placed = [reg.register_robot(f"r{i}", "reach", *SPEC, gateways=[0, 1])["gateway"] for i in range(4)]
    assert placed == [0, 1, 0, 1]
    assert reg.register_robot("pinned", "reach", *SPEC, gateways=[0, 1], gateway=1)["gateway"] == 1
    assert reg.register_robot("r5", "reach", *SPEC, gateways=[0, 1])["gateway"] == 0  # 2 vs 3
    assert reg.register_robot("r0", "reach", *SPEC, gateways=[0, 1])["gateway"] == 0  # again: its own
    assert reg.register_robot("r0", "reach", *SPEC, gateways=[1])["gateway"] == 1  # its own is down
    robot = reg.register_robot("r9", "reach", *SPEC, gateways=[0, 1])
    reg.assign_gateway(robot["robot_id"], 1)  # another gateway welcomed it
    assert reg.verify(robot["robot_id"], robot["token"])["gateway"] == 1
    assert reg.robot_gateways([robot["robot_id"], "rbt_unknown"]) == {robot["robot_id"]: 1}
