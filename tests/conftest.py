"""One local Ray and one platform per test session (starting Ray is the slow part)."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

ADMIN_TOKEN = "test-admin-token"
# Unit tests first (no Ray), then the e2e scenarios (each starts its own Ray), then the integration tests on
# the session's platform: the platform's actors then never share the two cores with the unit tests.
ORDER = {"unit": 0, "e2e": 1, "integration": 2}


def pytest_collection_modifyitems(config, items):
    from tests.e2e.background import BACKGROUND, start_runs

    def rank(item) -> tuple[int, bool]:
        parts = item.path.relative_to(config.rootpath).parts
        folder = ORDER.get(parts[1], 3) if len(parts) > 2 and parts[0] == "tests" else 3
        return folder, item.path.name not in BACKGROUND

    # stable: the order within each folder is kept, but the tests that read a background run open e2e
    items.sort(key=rank)
    # those runs start now, beside the unit tests (which start no Ray); their tests wait for them
    start_runs(config, {item.path.name for item in items if item.path.parts[-2] == "e2e"})


def pytest_unconfigure(config):
    from tests.e2e.background import stop_runs

    stop_runs(config)


def platform_config_dict(state_dir: str, rest_port: int, zmq_port: int) -> dict:
    return {
        "name": "test",
        "state_dir": state_dir,
        "rest": {"host": "127.0.0.1", "port": rest_port, "admin_token_env": "FLEETRL_TEST_ADMIN_TOKEN"},
        "gateway": {
            "bind": f"tcp://127.0.0.1:{zmq_port}",
            "lease_timeout_s": 1.5,
            "resume_window_s": 2.0,
            "max_episode_steps": 5000,
            "num_cpus": 0.5,
        },
        # two data-server shards, so every integration test goes through the router (workers/data/shards.py);
        # configs/local.yaml and the e2e tests keep the single data server
        "data": {"shards": 2, "shard_of": {"reach": 0, "reach-flow": 1}},
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
                    "segment_steps": 24,  # Reacher's 50-step episodes come in pieces (gateway/segments.py)
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


def reacher_task(name: str, **fields) -> dict:
    """A ``POST /v1/tasks`` body for a task Reacher-v5 robots can join: one replica, no CPU reserved, no
    learner unless ``fields`` give one (``fields`` override any key of the task)."""
    task = {
        "name": name,
        "observation": {"state": {"shape": [10], "dtype": "float32"}},
        "action": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
        "chunk_len": 4,
        "inference": {"replicas": 1, "num_cpus": 0},
    }
    return {"task": {**task, **fields}}


def delete_task(api, name: str) -> dict:
    """Delete a task a test created, its robots first: the rest of the session then does not share the two
    cores with its learner and replicas. Returns the ``DELETE /v1/tasks/{task}`` answer."""
    for robot in api.get("/v1/robots", params={"task": name}).json():
        assert api.delete(f"/v1/robots/{robot['robot_id']}").status_code == 204
    r = api.delete(f"/v1/tasks/{name}", timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from fleetrl.platform.platform import prepare_ray_env
    from fleetrl.testing.s3 import CREDENTIALS

    os.environ.update(CREDENTIALS)  # Ray's workers inherit them: the object-storage tests' local S3 server
    prepare_ray_env()  # as Platform does before a local Ray of its own
    # address "local": never the cluster an e2e scenario started (its address file outlives a failed shutdown)
    ray.init(
        address="local", num_cpus=8, include_dashboard=False, namespace="fleetrl-tests", log_to_driver=False
    )
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
    yield Platform(cfg).start()
    # No graceful Platform.stop() here: the e2e tests check it (`fleetrl run` and `serve` stop cleanly). The
    # session's Ray goes down with every actor in it (ray_session), half a minute sooner than winding down
    # one by one the learners the tests created.


@pytest.fixture(scope="module")
def api(platform):
    """An HTTP client of the test platform's REST API, with the admin token."""
    import httpx

    with httpx.Client(
        base_url=platform.rest_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as c:
        yield c
