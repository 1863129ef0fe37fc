"""The operator console: its page and data routes over real HTTP, then the page itself rendered by headless
Chromium against the live platform (robots running, learner publishing), and its buttons clicked through
the Chrome DevTools protocol.

Chromium is Debian's ``chromium`` package: the test installs it when it runs as root with apt-get (CI),
else skips the browser part and says why. No Selenium or Playwright: ``--dump-dom`` shows what the page's
JavaScript rendered, and a small DevTools-protocol client (over ``websockets``, when importable) clicks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.integration.helpers import RunningFleet

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1600,1200",
)


@pytest.fixture(scope="module")
def fleet(platform, api):
    """Two Reacher robots working all module long, with at least five of their episodes stored (the listing test asks for five)."""
    with RunningFleet(platform, n=2, hz=50.0, seed=70) as running:
        ids = {c.robot_id for c in running.clients}
        deadline = time.monotonic() + 60
        while len(_episodes_of(api, ids)) < 5:
            assert time.monotonic() < deadline, f"no stored episodes; counters {running.total('episodes')}"
            time.sleep(0.3)
        yield running


def _episodes_of(api: httpx.Client, robot_ids: set[str]) -> list[dict[str, Any]]:
    rows = api.get("/v1/tasks/reach/episodes", params={"limit": 200}).json()
    return [r for r in rows if r["robot_id"] in robot_ids]


# ---------------------------------------------------------------------------------------------- no browser


def test_console_page_is_served_without_a_token(platform):
    r = httpx.get(f"{platform.rest_url}/console")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "fleetrl console" in r.text and "/v1/robots" in r.text and "sessionStorage" in r.text
    assert "connect-src 'self'" in r.headers["content-security-policy"]  # no CDN, no third party
    assert "<script src" not in r.text and "https://" not in r.text


def test_curves_and_episodes_from_real_episodes(api, fleet):
    ids = {c.robot_id for c in fleet.clients}
    rows = api.get("/v1/tasks/reach/episodes", params={"limit": 5}).json()
    snapshots = [r["snapshot"] for r in rows]
    assert len(rows) == 5 and snapshots == sorted(snapshots, reverse=True)  # newest first
    mine = _episodes_of(api, ids)
    assert {"episode_id", "outcome", "n_steps", "intervention_steps", "duration_s"} <= set(mine[0])
    assert all(r["task"] == "reach" and r["source"] == "online" and r["n_steps"] > 0 for r in mine)

    c = api.get("/v1/tasks/reach/curves", params={"window": 2}).json()
    assert c["task"] == "reach" and c["window"] == 2 and c["episodes"] >= len(mine) >= 5
    points = c["points"]
    assert len(points) == -(-c["episodes"] // 2) and all(1 <= p["n"] <= 2 for p in points)
    assert [p["episodes"] for p in points] == sorted(p["episodes"] for p in points)
    hours = [p["robot_hours"] for p in points]
    assert hours == sorted(hours) and 0 < hours[-1] <= c["robot_hours"]
    rates = ("success_rate", "intervention_rate", "intervened_episode_rate", "autonomous_success_rate")
    assert all(0.0 <= p[k] <= 1.0 for p in points for k in rates)
    assert api.get("/v1/tasks/reach/curves").json()["window"] == 20  # the default


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/tasks/nope/curves", 404),
        ("/v1/tasks/nope/episodes", 404),
        ("/v1/tasks/reach/curves?window=0", 422),
        ("/v1/tasks/reach/curves?window=many", 422),
        ("/v1/tasks/reach/episodes?limit=0", 422),
    ],
)
def test_console_routes_refuse_bad_requests(api, path, status):
    r = api.get(path)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_console_routes_need_the_token(platform):
    for path in ("/v1/tasks/reach/curves", "/v1/tasks/reach/episodes"):
        assert httpx.get(f"{platform.rest_url}{path}").status_code == 401


# ------------------------------------------------------------------------------------------ headless browser


def _install_chromium() -> str | None:
    """Debian's chromium, installed quietly; None (and the reason in the skip) when that is not possible."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    for cmd in (install, ["apt-get", "update", "-q"], install):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if cmd is install and done.returncode == 0:
            return shutil.which("chromium")
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(
            f"no headless browser ({', '.join(BROWSERS)} not on PATH) and it cannot be installed here "
            "(that needs root and apt-get; `make test` installs Debian's chromium on CI)"
        )
    found = _install_chromium()
    if not found:
        pytest.skip("no headless browser: `apt-get install chromium` failed (no network or no package?)")
    return found


def _console_url(platform) -> str:
    return f"{platform.rest_url}/console#token={quote(ADMIN_TOKEN)}"  # a fragment never reaches the server


def _attrs(dom: str, tag_attr: str, value: str) -> dict[str, str]:
    """The attributes of the first element whose ``tag_attr`` is ``value`` in a dumped DOM."""
    m = re.search(rf'<(\w+)\s[^>]*{tag_attr}="{re.escape(value)}"[^>]*>', dom)
    assert m, f"no element with {tag_attr}={value!r} in the rendered page"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(0)))


@pytest.mark.timeout(900)  # the first browser test may install chromium
def test_page_renders_live_fleet_data(platform, api, fleet, chromium, tmp_path):
    offline = api.post(
        "/v1/robots",
        json={
            "name": "console-offline",
            "task": "reach",
            "observation_spec": {"state": {"shape": [10], "dtype": "float32"}},
            "action_spec": {"shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0},
        },
    ).json()["robot_id"]
    try:
        before = api.get("/v1/tasks/reach").json()
        cmd = [chromium, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
        cmd += ["--virtual-time-budget=5000", "--dump-dom", _console_url(platform)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
        after = api.get("/v1/tasks/reach").json()
    finally:
        api.delete(f"/v1/robots/{offline}")
    dom = done.stdout
    assert done.returncode == 0 and "</html>" in dom, done.stderr[-2000:]
    errors = _attrs(dom, "id", "errors")
    assert errors["data-count"] == "0", re.search(r'id="errors"[^>]*>([^<]*)<', dom).group(1)
    assert int(re.search(r'<body[^>]*data-refreshes="(\d+)"', dom).group(1)) >= 1  # the script ran

    for client in fleet.clients:  # working robots: online and autonomous (no operator took over)
        assert _attrs(dom, "data-robot", client.robot_id)["data-state"] == "autonomous"
    assert _attrs(dom, "data-robot", offline)["data-state"] == "offline"
    assert 'class="state state-autonomous">autonomous<' in dom and ">offline<" in dom

    reach = _attrs(dom, "data-task", "reach")
    assert reach["data-algorithm"] == after["algorithm"] == "ppo"
    assert before["weight_version"] <= int(reach["data-weight-version"]) <= after["weight_version"]
    assert re.search(r'class="chart" data-task="reach".*?<svg.*?data-series="success_rate"', dom, re.S)
    shown = set(re.findall(r'data-episode="([^"]+)"', dom))
    assert shown & {r["episode_id"] for r in _episodes_of(api, {c.robot_id for c in fleet.clients})}


class DevTools:
    """The few Chrome DevTools-protocol calls the button test needs, over one browser websocket."""

    def __init__(self, url: str, prompt_text: str):
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=None, open_timeout=10)
        self.prompt_text, self.dialogs, self._n = prompt_text, [], 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._n += 1
        n = self._n
        self.ws.send(json.dumps({"id": n, "method": method, "params": params} | _session(session)))
        while True:
            msg = json.loads(self.ws.recv(timeout=20))
            if msg.get("id") == n:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg["result"]
            if msg.get("method") == "Page.javascriptDialogOpening":  # the reset button's prompt()
                self.dialogs.append(msg["params"]["message"])
                self._n += 1
                params = {"accept": True, "promptText": self.prompt_text}
                reply = {"id": self._n, "method": "Page.handleJavaScriptDialog", "params": params}
                self.ws.send(json.dumps(reply | _session(msg.get("sessionId"))))

    def js(self, session: str, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_js(self, session: str, expression: str, what: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(session, expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"the page never showed {what}")

    def click(self, session: str, selector: str) -> None:
        """A real mouse click in the middle of the element (scrolled into view first)."""
        x, y = self.js(
            session,
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.scrollIntoView({block: 'center', inline: 'center'}); const r = e.getBoundingClientRect(); "
            "return [r.x + r.width / 2, r.y + r.height / 2]; })()",
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session, type=kind, x=x, y=y, button="left", clickCount=1)


def _session(session: str | None) -> dict[str, str]:
    return {"sessionId": session} if session else {}


def _devtools_url(profile: Path, proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """Chromium writes its DevTools port and browser path into the profile once it listens."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.is_file():
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        assert proc.poll() is None, f"chromium exited with {proc.returncode}"
        time.sleep(0.1)
    raise AssertionError("chromium did not open its DevTools port")


@pytest.mark.timeout(900)  # the first browser test may install chromium
def test_label_and_reset_buttons(platform, api, fleet, chromium, tmp_path):
    pytest.importorskip(
        "websockets.sync.client", reason="clicking needs the `websockets` package (CDP client)"
    )
    ids = {c.robot_id for c in fleet.clients}
    episode = _episodes_of(api, ids)[0]
    target = "success" if episode["outcome"] != "success" else "failure"
    robot = fleet.clients[0].robot_id
    profile = tmp_path / "profile"
    cmd = [chromium, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cdp = DevTools(_devtools_url(profile, proc), prompt_text="initial")
        target_id = cdp.call("Target.createTarget", url=_console_url(platform))["targetId"]
        session = cdp.call("Target.attachToTarget", targetId=target_id, flatten=True)["sessionId"]
        cdp.call("Page.enable", session)

        row = f'#episodes tr[data-episode="{episode["episode_id"]}"]'
        cdp.wait_js(session, f"!!document.querySelector('{row} .label-btn')", "the episode's label button")
        cdp.js(  # the operator picks the outcome in the row's select ...
            session,
            f"(() => {{ const s = document.querySelector('{row} select.label-outcome'); "
            f"s.value = '{target}'; s.dispatchEvent(new Event('change')); }})()",
        )
        cdp.click(session, f"{row} .label-btn")  # ... and clicks "label"
        deadline = time.monotonic() + 15
        while api.get(f"/v1/episodes/{episode['episode_id']}").json()["outcome"] != target:
            assert time.monotonic() < deadline, "the label never reached the data server"
            time.sleep(0.2)
        stored = api.get(f"/v1/episodes/{episode['episode_id']}").json()
        assert stored["labelled_by"] == "human"
        cdp.wait_js(
            session,
            f"document.getElementById('messages').textContent.includes('labelled {episode['episode_id']}')",
            "the label's confirmation",
        )
        cdp.wait_js(
            session,
            f"document.querySelector('{row}')?.dataset.outcome === '{target}'",
            "the new outcome after the refresh",
        )

        cdp.click(
            session, f'#robots tr[data-robot="{robot}"] .reset-btn'
        )  # answers its prompt with "initial"
        text = cdp.wait_js(
            session,
            f"[...document.querySelectorAll('#messages div')].map(d => d.textContent)"
            f".find(t => t.includes('reset {robot}'))",
            "the reset's answer",
        )
        assert cdp.dialogs and robot in cdp.dialogs[0]
        # The reset route answers or refuses (an unknown state, an older server): either way the page says so.
        assert '{"state":"initial"}' in text or ("failed" in text and "/reset" in text), text

        # "camera" on a robot whose task has no camera: the page says why there is no frame
        cdp.click(session, f'#robots tr[data-robot="{robot}"] .camera-btn')
        caption = cdp.wait_js(
            session,
            "(t => t.includes('no frame') ? t : null)(document.getElementById('camera-caption').textContent)",
            "the camera caption",
        )
        assert robot in caption and "422" in caption and "no camera" in caption, caption
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
