"""Evaluations on sim robots the platform starts itself (``POST /v1/tasks/{task}/evaluations`` with
``sim``): real Reacher-v5 robots in a Ray actor register through the REST layer's own registration, run
the evaluation's episodes (and, once those are handed out, uncounted extra ones, stored as evaluation
episodes too: they never feed the learner), and leave when it is done; a robot the
task's specs refuse is a 422 that leaves nothing registered."""

from __future__ import annotations

import ray

from tests.conftest import delete_task, reacher_task
from tests.integration.helpers import wait_until

TASK = "sim-eval"


def test_an_evaluation_on_its_own_sim_robots_measures_the_version_and_removes_them(api, platform):
    assert api.post("/v1/tasks", json=reacher_task(TASK), timeout=120).status_code == 201
    try:
        sim = {"env": "Reacher-v5", "count": 2, "control_hz": 100, "num_cpus": 0}
        r = api.post(f"/v1/tasks/{TASK}/evaluations", json={"episodes": 4, "sim": sim}, timeout=120)
        assert r.status_code == 202, r.text
        started = r.json()
        assert started["version"] == 0 and len(started["robots"]) == 2
        sim_robots = set(started["robots"])
        registered = {row["robot_id"] for row in api.get("/v1/robots", params={"task": TASK}).json()}
        assert sim_robots <= registered  # they registered like any robot, for this task

        url = f"/v1/tasks/{TASK}/evaluations/{started['evaluation_id']}"
        done = wait_until(lambda: (lambda e: e if e["status"] == "done" else None)(api.get(url).json()), 90,
                    "the evaluation to finish")  # fmt: skip
        assert done["episodes_done"] == 4 and set(done["per_robot"]) <= sim_robots
        assert done["outcomes"]["timeout"] + done["outcomes"]["success"] == 4
        assert done["return_mean"] < 0  # Reacher's return: minus distance and effort, every step

        # the robots leave once it is done, and their episodes are stored flagged as this evaluation
        wait_until(lambda: not sim_robots & {row["robot_id"] for row in api.get("/v1/robots", params={"task": TASK}).json()},
             30, "the sim robots to deregister")  # fmt: skip
        stats = ray.get(platform.data.stats.remote(TASK))
        # every episode they ran is an evaluation episode (the extras too): none reached the replay
        assert stats["store"]["episodes"] >= 4 and stats["replay"]["online_episodes"] == 0, stats

        # refusals: a robot whose specs the task does not accept, and robots and sim at once
        wrong = api.post(
            f"/v1/tasks/{TASK}/evaluations", json={"episodes": 1, "sim": {**sim, "env": "Pendulum-v1"}}
        )
        assert wrong.status_code == 422 and "observation" in wrong.json()["detail"], wrong.text
        both = api.post(f"/v1/tasks/{TASK}/evaluations", json={"episodes": 1, "sim": sim, "robots": ["x"]})
        assert both.status_code == 422
        unknown = api.post(
            f"/v1/tasks/{TASK}/evaluations", json={"episodes": 1, "sim": {**sim, "env": "NoSuchEnv-v0"}}
        )
        assert unknown.status_code == 422 and "NoSuchEnv" in unknown.json()["detail"], unknown.text
        assert api.get("/v1/robots", params={"task": TASK}).json() == []
    finally:
        delete_task(api, TASK)
