"""register(): a robot PC that boots before the head waits for it (connection refused, 502/503/504) with
backoff, then registers; a real refusal raises at once with the platform's reason."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleetrl.robots.client.registration import RegistrationError, register
from fleetrl.robots.protocol import ArraySpec
from fleetrl.testing.net import free_port


class Robot:
    observation_spec = {"state": ArraySpec((3,), "float32")}
    action_spec = ArraySpec((2,), "float32", -1.0, 1.0)
    control_hz = 10.0


def serve(answers: list[tuple[int, dict | str]]) -> tuple[ThreadingHTTPServer, list[dict]]:
    """A fake REST endpoint answering POST /v1/robots with ``answers`` in turn (a dict as JSON, a str as
    plain text); returns it and the bodies."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            status, body = answers[min(len(bodies) - 1, len(answers) - 1)]
            text = isinstance(body, str)
            data = body.encode() if text else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain" if text else "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, bodies


def test_waits_through_503s_then_registers(caplog):
    ok = {"robot_id": "rbt_1", "token": "t", "endpoint": "tcp://x:1", "chunk_len": 4, "curve": None}
    proxy_without_app = "Path '/v1/robots' not found. Ping http://.../-/routes for available routes."
    server, bodies = serve([(503, {"detail": "starting"}), (404, proxy_without_app), (201, ok)])
    try:
        with caplog.at_level("WARNING"):
            info = register(
                f"http://127.0.0.1:{server.server_port}", "tok", "arm-1", "reach", Robot(), wait_s=30
            )
    finally:
        server.shutdown()
    assert info["robot_id"] == "rbt_1" and len(bodies) == 3  # the proxy's 404 (no API yet) was waited out
    assert bodies[0]["name"] == "arm-1" and bodies[0]["observation_spec"]["state"]["shape"] == [3]
    assert "gateway" not in bodies[0]  # the platform picks the least loaded
    assert "waiting for the platform" in caplog.text


def test_a_robot_can_pin_its_gateway():
    ok = {
        "robot_id": "rbt_1",
        "token": "t",
        "endpoint": "tcp://x:2",
        "gateway": 1,
        "chunk_len": 4,
        "curve": None,
    }
    server, bodies = serve([(201, ok)])
    try:
        register(f"http://127.0.0.1:{server.server_port}", "tok", "arm-1", "reach", Robot(), gateway=1)
    finally:
        server.shutdown()
    assert bodies[0]["gateway"] == 1


def test_a_refusal_raises_at_once_and_an_absent_platform_after_the_wait():
    refusals = [
        (
            422,
            {"detail": "observation_spec: state has shape [3], task wants [10]"},
            r"failed \(422\).*wants \[10\]",
        ),
        (404, {"detail": "no task 'reach'"}, r"failed \(404\).*no task"),  # the API's own 404 (JSON): final
    ]
    for status, body, match in refusals:
        server, bodies = serve([(status, body)])
        try:
            with pytest.raises(RegistrationError, match=match):
                register(
                    f"http://127.0.0.1:{server.server_port}", "tok", "arm-1", "reach", Robot(), wait_s=30
                )
        finally:
            server.shutdown()
        assert len(bodies) == 1
    with pytest.raises(RegistrationError, match="not reachable for 1 s"):
        register(f"http://127.0.0.1:{free_port()}", "tok", "arm-1", "reach", Robot(), wait_s=1.2)
