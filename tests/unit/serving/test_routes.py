"""The REST app as ``create_app`` composes it from its routers, over fake actor handles (no Ray): every
``/v1`` route is behind the admin token, refusals read the same wherever a route lives, and routes reach
the actors through the handles stored on the app."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from fleetrl.serving.app import create_app
from fleetrl.serving.errors import checked, missing_as_404
from fleetrl.workers.task import TaskConfig

TOKEN = "s3cret"
LOG_LINE = {"source": "gateway", "level": "INFO", "message": "up"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REACH = TaskConfig(
    name="reach",
    observation={"state": {"shape": [10], "dtype": "float32"}},
    action={"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
    chunk_len=4,
)


class FakeActor:
    """An actor handle whose ``method.remote(...)`` awaits to ``answers[method](...)``; calls are recorded."""

    def __init__(self, **answers: Any):
        self.answers = answers
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_") or method not in self.answers:
            raise AttributeError(method)
        actor = self

        class Method:
            @staticmethod
            async def remote(*args: Any) -> Any:
                actor.calls.append((method, args))
                return actor.answers[method](*args)

        return Method


@pytest.fixture
def actors() -> dict[str, FakeActor]:
    return {
        "registry": FakeActor(ready=lambda: True, list_tasks=lambda: [{**REACH.public(), "robots": 0}]),
        "gateway": FakeActor(ready=lambda: True, served_tasks=lambda: ["reach"]),
        "metrics": FakeActor(
            ready=lambda: True, logs=lambda n: [LOG_LINE | {"t": float(i)} for i in range(n)]
        ),
        "data": FakeActor(ready=lambda: True),
        "tasks": FakeActor(config=lambda name: REACH if name == "reach" else None, names=lambda: ["reach"]),
    }


@pytest.fixture
def client(actors: dict[str, FakeActor]) -> TestClient:
    app = create_app(
        **actors,
        admin_token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest(),
        robot_endpoints=["tcp://head:5555"],
    )
    return TestClient(app)


def operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path with placeholders filled, OpenAPI operation) for every documented route."""
    found = []
    for path, ops in client.app.openapi()["paths"].items():
        concrete = (
            path.replace("{task}", "reach").replace("{robot_id}", "rbt_x").replace("{episode_id}", "ep")
        ).replace("{evaluation_id}", "ev")
        found += [(method.upper(), concrete, op) for method, op in ops.items()]
    return found


ROBOT_TOKEN_ROUTES = {("POST", "/v1/robots/rbt_x/credentials")}  # a robot about itself, with its own token


def test_every_v1_route_needs_the_admin_token(client, actors):
    actors["registry"].answers["verify"] = lambda robot_id, token: None  # no robot has these tokens
    v1 = [(m, p) for m, p, _ in operations(client) if p.startswith("/v1/")]
    assert len(v1) == 26
    for method, path in v1:
        missing = client.request(method, path)
        assert missing.status_code == 401, (method, path)
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.request(method, path, headers={"Authorization": "Bearer no"}).status_code == 403
        if (method, path) in ROBOT_TOKEN_ROUTES:  # the admin token is not a robot's token
            assert client.request(method, path, headers=AUTH, json={}).status_code == 403, (method, path)


def test_every_v1_route_documents_the_token_refusals(client):
    for _, path, op in operations(client):
        documented = set(op["responses"])
        assert ({"401", "403"} <= documented) == path.startswith("/v1/"), path
        for code in documented & {"401", "403"}:
            assert op["responses"][code]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ApiError"
            }, (path, code)


def test_every_operation_has_a_unique_readable_id_and_a_typed_answer(client):
    ids = []
    for method, path, op in operations(client):
        ids.append(op["operationId"])
        assert op["operationId"].isidentifier() and "_v1_" not in op["operationId"], (method, path)
        assert op.get("description") or op.get("summary"), (method, path)
        for code, answer in op["responses"].items():
            if code.startswith("2") and code != "204" and "application/json" in answer.get("content", {}):
                assert answer["content"]["application/json"]["schema"], (method, path, code)
    assert len(ids) == len(set(ids))
    assert {"create_task", "register_robot", "start_evaluation"} <= set(ids)


def test_probes_and_console_need_no_token(client):
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "api": "v1",
        "robot_endpoint": "tcp://head:5555",
        "robot_endpoints": ["tcp://head:5555"],
    }
    assert client.get("/console").status_code == 200


def test_docs_are_served_from_local_assets_and_declare_the_bearer_scheme(client):
    import re

    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200, page
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html.text)
        assert urls and all(u.startswith(("/docs-static/", "/openapi.json")) for u in urls), urls
        for url in urls:
            assert client.get(url).status_code == 200, url
    assert len(client.get("/docs-static/swagger-ui-bundle.js").content) > 100_000
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["adminToken"] == {
        "type": "http", "scheme": "bearer", "description": "The platform's admin token."
    }  # fmt: skip
    for method, path, op in operations(client):
        if path.startswith("/v1/"):
            scheme = "robotToken" if (method, path) in ROBOT_TOKEN_ROUTES else "adminToken"
            assert op.get("security") == [{scheme: []}], (method, path)


def test_a_failing_component_fails_the_health_check(client, actors):
    actors["data"].answers["ready"] = lambda: (_ for _ in ()).throw(RuntimeError("disk gone"))
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json() == {"detail": "component unavailable: RuntimeError: disk gone"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/v1/tasks", "GET, HEAD, POST"),
        ("POST", "/v1/tasks/reach", "DELETE, GET, HEAD"),
        ("PUT", "/v1/robots/rbt_x", "DELETE, GET, HEAD"),
        ("GET", "/v1/tasks/reach/demos", "POST"),
        ("DELETE", "/healthz", "GET, HEAD"),
    ],
)
def test_405_names_every_method_of_the_path(client, method, path, allow):
    r = client.request(method, path, headers=AUTH)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    assert r.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize(
    "path", ["/v1/tasks", "/v1/robots", "/v1/tasks/reach/demos", "/v1/episodes/ep/label"]
)
def test_a_body_that_is_not_json_gets_415(client, path):
    r = client.post(
        path, content=b"a=b", headers={**AUTH, "content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415
    assert "application/x-www-form-urlencoded" in r.json()["detail"]


def test_an_invalid_field_gets_422_naming_it(client):
    r = client.get("/v1/logs", params={"n": 0}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"] == "query.n: Input should be greater than or equal to 1"
    assert r.json()["errors"][0]["loc"] == ["query", "n"]


def test_routes_call_the_handles_stored_on_the_app(client, actors):
    assert client.get("/v1/logs", params={"n": 2}, headers=AUTH).json() == [
        LOG_LINE | {"t": 0.0},
        LOG_LINE | {"t": 1.0},
    ]
    assert actors["metrics"].calls == [("logs", (2,))]
    assert client.get("/v1/tasks", headers=AUTH).json() == [{**REACH.public(), "robots": 0, "served": True}]
    unknown = client.get("/v1/tasks/nope/data", headers=AUTH)
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "no task named 'nope'; tasks: ['reach']"}


def test_checked_turns_an_actor_refusal_into_its_http_error():
    assert checked({"ok": True, "task": "reach"}) == {"task": "reach"}
    assert checked({"ok": True, "step": 3}, keep_ok=True) == {"ok": True, "step": 3}
    with pytest.raises(HTTPException) as refused:
        checked({"ok": False, "code": 409, "error": "robots still registered"})
    assert (refused.value.status_code, refused.value.detail) == (409, "robots still registered")


def test_missing_as_404_maps_only_key_errors():
    with pytest.raises(HTTPException) as missing, missing_as_404("no robot with id 'x'"):
        raise KeyError("x")
    assert (missing.value.status_code, missing.value.detail) == (404, "no robot with id 'x'")
    with pytest.raises(ValueError), missing_as_404("unused"):
        raise ValueError("not a lookup")
