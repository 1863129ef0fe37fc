"""The shipped Ray cluster YAMLs pass Ray's own cluster-config validation and agree with the platform
config they start: the head serves it, and every custom resource an actor asks for is offered by a node."""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections import Counter
from pathlib import Path

import pytest
import tomllib
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from fleetrl.platform.config import load_config

ROOT = Path(__file__).resolve().parents[3]
CLUSTER_YAMLS = sorted(
    p for p in (ROOT / "configs").glob("cluster*.yaml") if "provider" in yaml.safe_load(p.read_text())
)


def ray_validate(config: dict) -> dict:
    """What `ray up` does before touching a machine: fill in the provider's defaults, check the schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def served_platform(config: dict) -> tuple[list[str], Path]:
    """The `fleetrl serve` command among the head's start commands, and the platform YAML it names."""
    serve = [c for c in config["head_start_ray_commands"] if "fleetrl serve" in c]
    assert len(serve) == 1, "the head must start the platform exactly once"
    argv = shlex.split(serve[0].split("fleetrl serve", 1)[1].split(">")[0])
    return argv, ROOT / argv[0]


def offered_resources(config: dict) -> set[str]:
    """Custom resources of every node: node types' `resources`, plus `ray start --resources` (local provider)."""
    offered = {r for t in config.get("available_node_types", {}).values() for r in t.get("resources", {})}
    for cmd in config.get("head_start_ray_commands", []) + config.get("worker_start_ray_commands", []):
        for match in re.finditer(r"--resources='([^']*)'", cmd):
            offered |= set(json.loads(match.group(1)))
    return offered


def requested_resources(platform) -> set[str]:
    return set(requested_counts(platform))


def requested_counts(platform) -> Counter:
    """Custom resources the platform holds once every actor runs: per gateway, shard, replica, learner worker."""
    parts = [(platform.gateway, platform.gateway.replicas), (platform.data, platform.data.shards)]
    parts += [(platform.critic, 1)] + [(t.inference, t.inference.replicas) for t in platform.tasks]
    parts += [(t.learner, t.learner.num_workers) for t in platform.tasks if t.learner]
    need: Counter = Counter()
    for part, count in parts:
        need.update({r: amount * count for r, amount in part.resources.items()})
    return need


def offered_counts(config: dict) -> Counter:
    """Custom resources of the whole cluster at its largest: the head, plus each worker node type times its
    ``max_workers`` (aws), or the worker ``ray start`` times the listed machines (local provider)."""
    offered: Counter = Counter()
    head_type = config.get("head_node_type")
    for name, node in config.get("available_node_types", {}).items():
        count = 1 if name == head_type else node.get("max_workers", 0)
        offered.update({r: n * count for r, n in node.get("resources", {}).items()})
    workers = len(config["provider"].get("worker_ips", []))
    for key, count in (("head_start_ray_commands", 1), ("worker_start_ray_commands", workers)):
        for cmd in config.get(key, []):
            for match in re.finditer(r"--resources='([^']*)'", cmd):
                offered.update({r: n * count for r, n in json.loads(match.group(1)).items()})
    return offered


def test_there_is_an_aws_and_a_local_cluster_yaml():
    providers = {yaml.safe_load(p.read_text())["provider"]["type"] for p in CLUSTER_YAMLS}
    assert {"aws", "local"} <= providers


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_cluster_yaml_passes_ray_validation(path):
    ray_validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["docker"].__setitem__("imagee", "x"),  # misspelt key
        lambda c: c.__setitem__("head_start_ray_command", []),  # misspelt top-level key
        lambda c: c.__setitem__("max_workers", "ten"),  # wrong type
    ],
)
def test_a_broken_key_fails_validation(break_it):
    config = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    break_it(config)
    with pytest.raises(Exception, match="not allowed|is not of type"):
        ray_validate(config)


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_head_serves_a_valid_platform_whose_resources_the_nodes_offer(path):
    config = yaml.safe_load(path.read_text())
    argv, platform_yaml = served_platform(config)
    assert "--address" in argv and argv[argv.index("--address") + 1] == "auto"
    platform = load_config(platform_yaml)  # raises ConfigError naming the bad key
    missing = requested_resources(platform) - offered_resources(config)
    assert not missing, f"{path.name}: no node offers {sorted(missing)} that {platform_yaml.name} asks for"
    short = {r: (n, offered_counts(config)[r]) for r, n in requested_counts(platform).items()
             if n > offered_counts(config)[r]}  # fmt: skip
    assert not short, f"{path.name}: (needed, offered) at most: {short}: some actors would never be placed"


def test_the_cluster_is_sized_for_200_robots_on_4_gateways_and_a_4_gpu_learner():
    platform = load_config(ROOT / "configs" / "cluster-platform.yaml")
    assert platform.gateway.replicas == 4 and platform.gateway.resources == {"robot_gateway": 1}
    assert platform.data.shards == 2
    assert max(t.learner.num_workers for t in platform.tasks if t.learner) == 4
    config = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    gateway_nodes = config["available_node_types"]["gateway"]
    assert gateway_nodes["min_workers"] == 4 and gateway_nodes["resources"]["robot_gateway"] == 1
    learner_node = config["available_node_types"]["gpu_learner"]["resources"]
    assert learner_node["GPU"] == learner_node["learner_gpu"] == 4  # the 4 DDP workers fit one node


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_cluster_yaml_runs_our_images_at_the_package_version(path):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    text = path.read_text()
    images = set(re.findall(r"ghcr\.io/fleetrl/fleetrl:(\S+)", text))
    assert images, f"{path.name} names no fleetrl image"
    for tag in images:
        assert tag in (f"{version}-cpu", f"{version}-cuda"), f"{path.name}: image tag {tag} is not {version}"
        assert (ROOT / "docker" / f"Dockerfile.{tag.rsplit('-', 1)[1]}").exists()


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_nodes_start_ray_with_the_environment_a_local_platform_gives_it(path):
    from fleetrl.platform.platform import RAY_ENV

    config = yaml.safe_load(path.read_text())
    env = " ".join(f"{key}={value}" for key, value in RAY_ENV.items())
    for nodes in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[nodes] if "ray start" in c]
        assert starts and all(f"{env} ray start" in c for c in starts), f"{path.name} {nodes}: not {env}"
