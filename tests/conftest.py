"""One local Ray and one platform per test session (starting Ray is the slow part)."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

ADMIN_TOKEN = "test-admin-token"


def platform_config_dict(state_dir: str, rest_port: int, zmq_port: int) -> dict:
    return {
        "name": "test",
        "state_dir": state_dir,
        "rest": {"host": "127.0.0.1", "port": rest_port, "admin_token_env": "FLEETRL_TEST_ADMIN_TOKEN"},
        "gateway": {"bind": f"tcp://127.0.0.1:{zmq_port}", "lease_timeout_s": 1.5, "num_cpus": 0.5},
        "tasks": [
            {
                "name": "reach",
                "observation": {"state": {"shape": [10], "dtype": "float32"}},
                "action": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
                "chunk_len": 4,
                "inference": {"replicas": 2, "max_batch": 16, "max_restarts": -1},
                "learner": {
                    "algorithm": "ppo",
                    "config": {"steps_per_update": 400, "epochs": 2},
                    "publish_every": 1,
                    "checkpoint_every": 5,
                },
            },
            {  # a flow policy whose learner the algorithm-switch and recovery tests drive (no robots)
                "name": "reach-flow",
                "observation": {"state": {"shape": [10], "dtype": "float32"}},
                "action": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
                "chunk_len": 4,
                "policy": {"family": "flow_chunk", "hidden": [32, 32], "flow_steps": 4},
                "inference": {"replicas": 1, "max_batch": 16, "reload": "episode"},
                "learner": {
                    "algorithm": "bc",
                    "config": {"batch_size": 32},
                    "publish_every": 2,
                    "checkpoint_every": 5,
                    "max_updates_per_s": 5,  # it trains all session long: leave the 2 cores to the tests
                    "report_every_s": 0.3,
                },
            },
        ],
    }


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=8, include_dashboard=False, namespace="fleetrl-tests", log_to_driver=False)
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def platform(ray_session):
    from fleetrl.platform.config import parse_config
    from fleetrl.platform.platform import Platform
    from fleetrl.testing.net import free_port

    os.environ["FLEETRL_TEST_ADMIN_TOKEN"] = ADMIN_TOKEN
    state_dir = tempfile.mkdtemp(prefix="fleetrl-test-")
    cfg = parse_config(platform_config_dict(state_dir, free_port(), free_port()), "test-config")
    p = Platform(cfg).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def api(platform):
    """An HTTP client of the test platform's REST API, with the admin token."""
    import httpx

    with httpx.Client(
        base_url=platform.rest_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as c:
        yield c
