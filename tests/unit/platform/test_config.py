"""platform/config.py: the YAML loader is strict, frozen, self-documenting and says what to fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import get_args

import pydantic
import pytest
import yaml

from fleetrl.platform.config import ConfigError, PlatformConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[3]
LOCAL_YAML = REPO_ROOT / "configs" / "local.yaml"

BASE = {
    "tasks": [
        {
            "name": "reach",
            "observation": {"state": {"shape": [10], "dtype": "float32"}},
            "action": {"shape": [2], "low": -1.0, "high": 1.0},
            "chunk_len": 4,
            "inference": {"replicas": 2, "max_batch": 32},
        }
    ],
    "sim_robots": [{"env": "Reacher-v5", "task": "reach", "count": 2}],
}


def write(tmp_path: Path, data, name: str = "platform.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def with_change(change) -> dict:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def test_local_yaml_loads():
    cfg = load_config(LOCAL_YAML)
    assert isinstance(cfg, PlatformConfig)
    names = [t.name for t in cfg.tasks]
    assert names and len(set(names)) == len(names)
    assert {s.task for s in cfg.sim_robots} <= set(names)


def test_minimal_file_loads_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.name == "local"
    assert cfg.tasks[0].inference.replicas == 2
    assert cfg.tasks[0].observation_spec["state"].shape == (10,)
    assert cfg.sim_robots[0].count == 2


def test_unknown_nested_key_names_file_key_path_and_allowed_keys(tmp_path):
    path = write(tmp_path, with_change(lambda d: d["tasks"][0]["inference"].update(replica=2)))
    msg = config_error(path)
    assert str(path) in msg
    assert "tasks[0].inference.replica" in msg
    line = next(line for line in msg.splitlines() if "tasks[0].inference.replica" in line)
    assert "replicas" in line and "max_batch" in line


def test_unknown_key_inside_an_observation_entry_lists_array_spec_keys(tmp_path):
    path = write(
        tmp_path, with_change(lambda d: d["tasks"][0]["observation"]["state"].update(dtyp="float32"))
    )
    msg = config_error(path)
    line = next(line for line in msg.splitlines() if "tasks[0].observation.state.dtyp" in line)
    assert "dtype" in line and "shape" in line


@pytest.mark.parametrize(
    ("change", "key_path", "allowed"),
    [
        (lambda d: d.update(stat_dir="/tmp"), "stat_dir", "state_dir"),
        (lambda d: d.update(gateway={"bnd": "tcp://*:5555"}), "gateway.bnd", "bind"),
        (lambda d: d["sim_robots"][0].update(cnt=3), "sim_robots[0].cnt", "count"),
    ],
    ids=["top", "gateway", "sim_robots"],
)
def test_unknown_keys_elsewhere_list_their_allowed_keys(tmp_path, change, key_path, allowed):
    msg = config_error(write(tmp_path, with_change(change)))
    line = next(line for line in msg.splitlines() if key_path in line)
    assert allowed in line


def test_bad_value_names_the_key_and_the_constraint(tmp_path):
    path = write(tmp_path, with_change(lambda d: d["tasks"][0].update(chunk_len=0)))
    msg = config_error(path)
    assert str(path) in msg
    line = next(line for line in msg.splitlines() if "tasks[0].chunk_len" in line)
    assert "greater than or equal to 1" in line
    assert "0" in line.split("tasks[0].chunk_len", 1)[1]


def test_every_problem_is_reported_at_once(tmp_path):
    def change(d):
        d["tasks"][0]["chunk_len"] = 0
        d["tasks"][0]["inference"]["replica"] = 2

    msg = config_error(write(tmp_path, with_change(change)))
    assert "tasks[0].chunk_len" in msg and "tasks[0].inference.replica" in msg


def test_sim_robots_for_an_unknown_task_name_the_task(tmp_path):
    path = write(tmp_path, with_change(lambda d: d["sim_robots"][0].update(task="stack")))
    msg = config_error(path)
    assert str(path) in msg
    assert "'stack'" in msg
    assert "sim_robots[0]" in msg
    assert "reach" in msg  # the tasks that do exist


def test_duplicate_task_names_are_refused(tmp_path):
    msg = config_error(
        write(tmp_path, with_change(lambda d: d["tasks"].append(copy.deepcopy(d["tasks"][0]))))
    )
    assert "unique" in msg


def test_invalid_yaml_is_one_readable_error(tmp_path):
    path = write(tmp_path, "tasks:\n  - name: reach\n    observation: {state: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:")
    assert "YAML" in msg
    assert "line" in msg  # where to look
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_file_is_one_readable_error(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:")
    assert "No such file" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"], ids=["empty", "list", "scalar"])
def test_non_mapping_top_level_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    msg = config_error(path)
    assert str(path) in msg and "mapping" in msg


def test_parsed_config_is_frozen():
    cfg = load_config(LOCAL_YAML)
    with pytest.raises(pydantic.ValidationError):
        cfg.name = "other"
    with pytest.raises(pydantic.ValidationError):
        cfg.tasks[0].chunk_len = 99
    with pytest.raises(pydantic.ValidationError):
        cfg.gateway.bind = "tcp://0.0.0.0:1"
    with pytest.raises(TypeError):
        cfg.tasks[0] = cfg.tasks[0]  # a tuple, not a list


def _models_reachable_from(root: type[pydantic.BaseModel]) -> set[type[pydantic.BaseModel]]:
    seen: set[type[pydantic.BaseModel]] = set()
    stack: list = [root]
    while stack:
        ann = stack.pop()
        if isinstance(ann, type) and issubclass(ann, pydantic.BaseModel):
            if ann in seen:
                continue
            seen.add(ann)
            stack.extend(f.annotation for f in ann.model_fields.values())
        else:
            stack.extend(get_args(ann))  # tuple[X, ...], dict[str, X], X | None, Literal[...]
    return seen


def test_every_config_field_has_a_description():
    models = _models_reachable_from(PlatformConfig)
    # the walk must actually reach the nested parts (rest, gateway, tasks and what tasks contain)
    names = {m.__name__ for m in models}
    assert {"PlatformConfig", "RestConfig", "GatewayConfig", "TaskConfig", "SimFleetConfig"} <= names
    assert {"ArraySpecConfig", "InferencePoolConfig"} <= names
    missing = [
        f"{m.__name__}.{name}"
        for m in models
        for name, f in m.model_fields.items()
        if not (f.description and f.description.strip())
    ]
    assert not missing, f"fields without a description: {missing}"
