"""A boolean is not a number, in the YAML config and in REST bodies alike (pydantic's lax mode takes
``true`` for 1)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleetrl.platform.config import ConfigError, parse_config
from fleetrl.serving.models import TaskCreation

TASK = {
    "name": "t",
    "observation": {"state": {"shape": [3], "dtype": "float32"}},
    "action": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
    "inference": {"replicas": 1, "max_batch": 8},
}


def test_a_rest_task_with_a_boolean_for_a_number_is_refused_naming_the_field():
    assert TaskCreation.model_validate({"task": TASK}).task.inference.max_batch == 8
    bad = {**TASK, "inference": {"replicas": 1, "max_batch": True}}
    with pytest.raises(ValidationError, match=r"task\.inference\.max_batch: expected a number, got true"):
        TaskCreation.model_validate({"task": bad})
    with pytest.raises(ValidationError, match=r"task\.chunk_len"):
        TaskCreation.model_validate({"task": {**TASK, "chunk_len": False}})


def test_the_platform_config_refuses_booleans_for_numbers(tmp_path):
    base = {"name": "x", "state_dir": str(tmp_path), "tasks": [TASK]}
    assert parse_config(base).gateway.lease_timeout_s == 5.0
    with pytest.raises(ConfigError, match=r"gateway\.lease_timeout_s: expected a number"):
        parse_config({**base, "gateway": {"lease_timeout_s": True}})
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.inference\.replicas"):
        parse_config({**base, "tasks": [{**TASK, "inference": {"replicas": True}}]})
    parse_config({**base, "gateway": {"allow_token_on_network": True}})  # a real boolean is fine
