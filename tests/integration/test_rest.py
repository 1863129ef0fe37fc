"""The REST API over real HTTP (Ray Serve), backed by the real registry, gateway and metrics actors."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import ray

from fleetrl.testing.restarts import kill_and_await_restart
from tests.conftest import delete_task, reacher_task
from tests.integration.helpers import RunningFleet

REACH_BODY = {
    "name": "arm-1",
    "task": "reach",
    "observation_spec": {"state": {"shape": [10], "dtype": "float32"}},
    "action_spec": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
}


def test_register_list_get_delete(api, platform):
    r = api.post("/v1/robots", json=REACH_BODY)
    assert r.status_code == 201, r.text
    creds = r.json()
    assert creds["robot_id"].startswith("rbt_") and len(creds["token"]) >= 32
    assert creds["endpoint"] == platform.endpoint and creds["chunk_len"] == 4
    assert creds["endpoints"] == [platform.endpoint] and creds["gateway"] == 0  # one gateway
    listed = api.get("/v1/robots").json()
    assert creds["robot_id"] in [x["robot_id"] for x in listed]
    one = api.get(f"/v1/robots/{creds['robot_id']}").json()
    assert one["name"] == "arm-1" and one["task"] == "reach" and one["online"] is False
    assert "token" not in one
    assert api.delete(f"/v1/robots/{creds['robot_id']}").status_code == 204
    assert api.get(f"/v1/robots/{creds['robot_id']}").status_code == 404
    assert api.delete(f"/v1/robots/{creds['robot_id']}").status_code == 404


def test_registering_a_name_again_keeps_the_robot_id_and_revokes_the_old_credentials(api, platform):
    """An arm that reboots and registers again stays one robot: same id (its episodes and statistics),
    new token and CURVE keys; its old session and credentials stop working at once."""
    from fleetrl.robots import protocol as P
    from fleetrl.testing.net import RawRobotSocket

    body = {**REACH_BODY, "name": "arm-reboot"}
    first = api.post("/v1/robots", json=body)
    assert first.status_code == 201 and first.json()["reregistered"] is False
    old = first.json()
    sock = RawRobotSocket(old["endpoint"], old["curve"])
    try:
        assert isinstance(sock.request(P.Hello(robot_id=old["robot_id"], token=old["token"])), P.Welcome)
        again = api.post("/v1/robots", json=body)
        assert again.status_code == 200, again.text
        new = again.json()
        assert (
            new["reregistered"] is True
            and new["robot_id"] == old["robot_id"]
            and new["token"] != old["token"]
        )
        obs = {"state": np.zeros(10, np.float32)}
        stale = P.Obs(robot_id=old["robot_id"], episode_id="e", step=0, observation=obs)
        sock.send(stale)  # the old session was revoked: refused, or (its key revoked too) no answer at all
        try:
            reply = sock.recv(timeout_s=2)
            assert isinstance(reply, P.Error), reply
        except TimeoutError:
            pass
    finally:
        sock.close()
    fresh = RawRobotSocket(new["endpoint"], new["curve"])
    try:
        assert isinstance(fresh.request(P.Hello(robot_id=new["robot_id"], token=new["token"])), P.Welcome)
    finally:
        fresh.close()
    moved = api.post("/v1/robots", json={**body, "task": "reach-flow"})  # same specs, another task
    assert moved.status_code == 409 and "registered for task 'reach'" in moved.json()["detail"]
    assert [r["robot_id"] for r in api.get("/v1/robots").json() if r["name"] == "arm-reboot"] == [
        old["robot_id"]
    ]
    assert api.delete(f"/v1/robots/{old['robot_id']}").status_code == 204


def test_tokens_are_stored_hashed(api, platform):
    creds = api.post("/v1/robots", json={**REACH_BODY, "name": "arm-hash"}).json()
    db = sqlite3.connect(str(platform.cfg.state_path / "registry.sqlite"))
    dump = "\n".join(db.iterdump())
    assert creds["robot_id"] in dump and creds["token"] not in dump


def test_tasks_listed(api):
    tasks = api.get("/v1/tasks").json()
    reach = next(t for t in tasks if t["name"] == "reach")
    assert reach["chunk_len"] == 4 and reach["action_spec"]["shape"] == [2] and reach["served"] is True


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 403), ({"Authorization": "Basic abc"}, 401)],
)
def test_admin_calls_need_the_token(platform, headers, status):
    r = httpx.get(f"{platform.rest_url}/v1/robots", headers=headers)
    assert r.status_code == status
    assert r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({**REACH_BODY, "task": "nope"}, 404, "no task named 'nope'"),
        ({**REACH_BODY, "observation_spec": {"state": {"shape": [11]}}}, 422, "does not match task"),
        ({**REACH_BODY, "action_spec": {"shape": [3]}}, 422, "does not match task"),
        ({**REACH_BODY, "observation_spec": {"state": {"shape": [10], "dtype": "object"}}}, 422, "dtype"),
        ({**REACH_BODY, "name": "bad name!"}, 422, "name"),
        ({**REACH_BODY, "colour": "red"}, 422, "colour"),
        ({"task": "reach"}, 422, "name"),
        ({**REACH_BODY, "gateway": 1}, 422, "not one of the 1 gateways"),
        ({**REACH_BODY, "gateway": -1}, 422, "gateway"),
    ],
)
def test_bad_registrations_get_4xx_with_a_reason(api, body, status, needle):
    r = api.post("/v1/robots", json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_malformed_json_is_422(api):
    r = api.post("/v1/robots", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_health_metrics_openapi(platform):
    h = httpx.get(f"{platform.rest_url}/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    m = httpx.get(f"{platform.rest_url}/metrics")
    assert (
        m.status_code == 200 and "fleetrl_queue_wait_seconds" in m.text and "fleetrl_frames_refused" in m.text
    )
    spec = httpx.get(f"{platform.rest_url}/openapi.json").json()
    assert {"/v1/robots", "/v1/robots/{robot_id}", "/v1/tasks", "/healthz", "/metrics"} <= set(spec["paths"])
    # the OpenAPI UI through Ray Serve, its script from this server (no CDN)
    docs = httpx.get(f"{platform.rest_url}/docs")
    assert (
        docs.status_code == 200
        and "/docs-static/swagger-ui-bundle.js" in docs.text
        and "cdn" not in docs.text
    )
    assert httpx.get(f"{platform.rest_url}/docs-static/swagger-ui-bundle.js").status_code == 200


def test_non_json_bodies_wrong_methods_and_refusals_follow_the_published_contract(api, platform):
    r = api.post("/v1/tasks/reach/demos", content=b'{"path": "x"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    r = api.post("/v1/robots", content=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["detail"]
    r = api.request("OPTIONS", "/v1/tasks")  # GET and POST are two routes: the 405 names both
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    spec = httpx.get(f"{platform.rest_url}/openapi.json").json()
    create = spec["paths"]["/v1/tasks"]["post"]["responses"]
    assert {"201", "400", "401", "403", "409", "415", "422", "503"} <= set(create)
    assert create["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ApiError"}
    assert "404" in spec["paths"]["/v1/tasks/{task}"]["get"]["responses"]
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    missing = api.get("/v1/tasks/nope")
    assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)


def test_a_task_whose_policy_cannot_be_built_is_refused_with_the_reason_and_leaves_nothing(api):
    task = {
        "observation": {"state": {"shape": [10], "dtype": "float32"}},
        "action": {"shape": [2], "dtype": "float32"},  # no bounds
        "inference": {"replicas": 1, "num_cpus": 0},
    }
    r = api.post("/v1/tasks", json={"task": {**task, "name": "reach-unbounded"}})
    assert r.status_code == 422 and "needs finite action bounds" in r.json()["detail"], r.text
    # what only the replica can find out (its checkpoint folder is not there on its node): the replica's
    # own reason comes back, and no part of the task stays behind
    task = {
        **task,
        "name": "reach-lost-checkpoint",
        "action": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
        "policy": {"family": "token_lm", "checkpoint": "/nonexistent/checkpoint"},
    }
    r = api.post("/v1/tasks", json={"task": task}, timeout=120)
    assert r.status_code == 422, r.text
    assert (
        "inference replicas failed" in r.json()["detail"]
        and "not a token_lm checkpoint" in r.json()["detail"]
    )
    assert api.get("/v1/tasks/reach-lost-checkpoint").status_code == 404
    assert "reach-lost-checkpoint" not in [t["name"] for t in api.get("/v1/tasks").json()]


def test_logs_from_every_actor_reach_one_place(api):
    deadline = time.monotonic() + 15
    sources: set[str] = set()
    while time.monotonic() < deadline and not {"replica reach/0", "replica reach/1"} <= sources:
        sources = {rec["source"] for rec in api.get("/v1/logs", params={"n": 2000}).json()}
        time.sleep(0.5)
    assert {"replica reach/0", "replica reach/1"} <= sources
    assert api.get("/v1/logs", params={"n": 0}).status_code == 422


def test_registry_survives_restart(tmp_path):
    from fleetrl.platform.registry import Registry

    reg = Registry(tmp_path / "r.sqlite")
    reg.upsert_task("t", {"chunk_len": 1})
    rec = reg.register_robot("a", "t", {"state": {"shape": [1]}}, {"shape": [1]})
    reg.stop()
    again = Registry(tmp_path / "r.sqlite")
    assert again.get_robot(rec["robot_id"])["name"] == "a"
    assert again.verify(rec["robot_id"], rec["token"]) is not None
    assert again.verify(rec["robot_id"], rec["token"] + "x") is None


def test_registry_keeps_runtime_task_configs_and_refuses_to_orphan_robots(tmp_path):
    from fleetrl.platform.registry import NotFound, Registry

    old = sqlite3.connect(str(tmp_path / "r.sqlite"))  # a registry from before runtime tasks were kept
    old.execute("CREATE TABLE tasks (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL NOT NULL)")
    old.execute("INSERT INTO tasks VALUES ('from-file', '{}', 0)")
    old.commit()
    old.close()
    reg = Registry(tmp_path / "r.sqlite")
    reg.upsert_task("made-over-rest", {"chunk_len": 2}, {"task": {"name": "made-over-rest"}, "replay": None})
    reg.upsert_task("later", {"chunk_len": 3}, {"task": {"name": "later"}, "replay": None})
    configs = reg.task_configs()
    assert list(configs) == ["from-file", "made-over-rest", "later"]  # oldest first
    assert configs["from-file"] is None and configs["later"] == {"task": {"name": "later"}, "replay": None}
    reg.upsert_task("later", {"chunk_len": 3})  # the config file now defines it: the file wins
    assert reg.task_configs()["later"] is None
    robot = reg.register_robot("a", "made-over-rest", {"state": {"shape": [1]}}, {"shape": [1]})
    assert reg.delete_task("made-over-rest") == [robot["robot_id"]]  # refused: it would orphan the robot
    assert [t["name"] for t in reg.list_tasks()] == ["from-file", "later", "made-over-rest"]
    reg.delete_robot(robot["robot_id"])
    assert reg.delete_task("made-over-rest") == []
    with pytest.raises(NotFound):
        reg.delete_task("made-over-rest")
    # the next start's config has "later" only: "from-file" goes, unless a robot still points at it
    kept = reg.register_robot("b", "from-file", {"state": {"shape": [1]}}, {"shape": [1]})
    assert reg.forget_config_tasks(["later"]) == ["from-file"]
    reg.delete_robot(kept["robot_id"])
    assert reg.forget_config_tasks(["later"]) == []
    reg.stop()
    assert [t["name"] for t in Registry(tmp_path / "r.sqlite").list_tasks()] == ["later"]


def test_a_deleted_task_is_taken_down_and_its_stored_episodes_replayed_when_created_again(api, platform):
    # (that its learner stops too is checked where a learner has run: test_learning_loop's token-policy test)
    assert api.post("/v1/tasks", json=reacher_task("reach-gone"), timeout=120).status_code == 201
    with RunningFleet(platform, n=1, hz=100.0, seed=90, task="reach-gone") as fleet:
        fleet.wait_for(
            lambda: api.get("/v1/tasks/reach-gone/data").json()["episodes"] >= 2, 60, "two stored episodes"
        )
        [robot_id] = [c.robot_id for c in fleet.clients]
        refused = api.delete("/v1/tasks/reach-gone")  # its robot is still registered (and working)
        assert refused.status_code == 409 and robot_id in refused.json()["detail"], refused.text
        assert api.get("/v1/tasks/reach-gone").status_code == 200  # nothing was taken down
    stored = api.get("/v1/tasks/reach-gone/data").json()["episodes"]
    assert api.delete(f"/v1/robots/{robot_id}").status_code == 204

    r = api.delete("/v1/tasks/reach-gone", timeout=120)
    assert r.status_code == 200, r.text
    kept = r.json()["episodes_kept"]
    assert kept >= stored and r.json()["learner"] is None  # (an episode may have been on its way)
    assert api.get("/v1/tasks/reach-gone").status_code == 404
    assert "reach-gone" not in [t["name"] for t in api.get("/v1/tasks").json()]
    assert "reach-gone" not in ray.get(platform.gateway.stats.remote())["pools"]
    assert api.post("/v1/robots", json={**REACH_BODY, "task": "reach-gone"}).status_code == 404
    assert api.delete("/v1/tasks/reach-gone").status_code == 404

    assert api.post("/v1/tasks", json=reacher_task("reach-gone"), timeout=120).status_code == 201
    data = api.get("/v1/tasks/reach-gone/data").json()
    assert data["episodes"] == kept and data["replay"]["online_transitions"] > 0  # replayed again
    delete_task(api, "reach-gone")


def test_tasks_created_and_deleted_over_rest_outlive_restarts_of_the_gateway_and_data_server(api, platform):
    """Ray restarts an actor with its first constructor arguments (the config file's tasks): they take the
    tasks to serve from the registry instead, so what was created or deleted since boot holds."""
    for name in ("reach-kept", "reach-dropped"):
        assert api.post("/v1/tasks", json=reacher_task(name), timeout=120).status_code == 201
    delete_task(api, "reach-dropped")
    with ThreadPoolExecutor(2) as pool:  # both at once; each waits until its new process answers
        took = list(pool.map(lambda a: kill_and_await_restart(a, lambda x: x.ready.remote(), 120),
                             (platform.gateways[0], platform.data.for_task("reach-kept"))))  # fmt: skip
    assert None not in took, f"not restarted within 120 s: {took}"
    pools = ray.get(platform.gateway.stats.remote())["pools"]
    assert "reach-kept" in pools and "reach-dropped" not in pools and "reach" in pools
    with RunningFleet(platform, n=1, hz=100.0, seed=95, task="reach-kept") as fleet:
        fleet.wait_for(
            lambda: api.get("/v1/tasks/reach-kept/data").json()["replay"]["online_episodes"] >= 1,
            60,
            "an episode of the created task stored and replayed after the restarts",
        )
        assert fleet.total("replies") > 0
    delete_task(api, "reach-kept")


def test_other_tasks_are_answered_while_a_task_is_being_created(api, platform):
    """The task manager is threaded: a creation, which waits for its replicas to start, holds up neither
    the other tasks' calls nor the refusal of a second creation under the same name."""
    created: dict[str, float | httpx.Response] = {}

    def create() -> None:
        created["sent"] = time.monotonic()
        created["response"] = httpx.post(
            f"{platform.rest_url}/v1/tasks",
            json=reacher_task("reach-slow"),
            headers=api.headers,
            timeout=120,
        )
        created["answered"] = time.monotonic()

    thread = threading.Thread(target=create)
    thread.start()
    time.sleep(0.5)  # the creation has reached the task manager and is starting its replica
    same_name = api.post("/v1/tasks", json=reacher_task("reach-slow"))
    answered = []  # when each call about another task came back
    while thread.is_alive():
        assert api.get("/v1/tasks/reach").status_code == 200
        answered.append(time.monotonic())
    thread.join()
    assert created["response"].status_code == 201, created["response"].text
    assert same_name.status_code == 409, same_name.text
    during = [t for t in answered if created["sent"] + 0.5 < t < created["answered"]]
    assert len(during) >= 3, (len(answered), created["answered"] - created["sent"])  # not queued behind it
    delete_task(api, "reach-slow")


def test_a_killed_task_manager_comes_back_with_its_tasks_and_rest_answers_json_meanwhile(api, platform):
    """Ray restarts the task manager; until it is back the task routes answer 503 JSON (never a plain
    500), then the config tasks (learners resumed from their checkpoints) and a task created over REST (its
    replicas re-created) are served again."""
    from fleetrl.robots import protocol as P
    from tests.integration.helpers import raw_obs

    assert api.post("/v1/tasks", json=reacher_task("reach-rt")).status_code == 201
    ray.kill(platform.tasks, no_restart=False)
    seen, deadline = set(), time.monotonic() + 120
    while time.monotonic() < deadline:
        r = api.get("/v1/tasks/reach")
        assert r.headers["content-type"].startswith("application/json"), r.text  # JSON while it is away
        seen.add(r.status_code)
        if r.status_code == 200 and api.get("/v1/tasks/reach-rt").status_code == 200:
            break
        assert r.status_code == 503 and "restarting" in r.json()["detail"], r.text  # never a plain 500
        time.sleep(0.3)
    assert api.get("/v1/tasks/reach").json()["learner"] is not None  # its learner is running again
    assert ray.get(platform.learner("reach").status.remote())["step"] >= 0
    assert "reach-rt" in ray.get(platform.gateway.served_tasks.remote())
    body = {"name": "after-restart", "task": "reach-rt", "observation_spec": {"state": {"shape": [10], "dtype": "float32"}},
            "action_spec": {"shape": [2], "dtype": "float32"}}  # fmt: skip
    creds = api.post("/v1/robots", json=body).json()
    from fleetrl.testing.net import RawRobotSocket

    raw = RawRobotSocket(creds["endpoint"], creds["curve"])
    assert isinstance(raw.request(P.Hello(robot_id=creds["robot_id"], token=creds["token"])), P.Welcome)
    assert isinstance(raw.request(raw_obs(creds["robot_id"], 0, episode="after")), P.Action)  # new replicas
    raw.close()
    delete_task(api, "reach-rt")
