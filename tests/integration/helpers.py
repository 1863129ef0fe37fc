"""Shared by the integration tests: register sim robots over REST and run them in a background thread."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter

import numpy as np

from fleetrl.robots import protocol as P
from fleetrl.robots.client import ClientConfig, FleetRunner, RobotClient, register
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.net import RawRobotSocket
from tests.conftest import ADMIN_TOKEN

RECOVERED_ERRORS = frozenset({"unknown_session", "incomplete_episode", "out_of_order", "overloaded"})


class FleetThread:
    """Robot clients driven by one FleetRunner thread from ``with`` (or ``start()``) until ``stop()``."""

    def __init__(self, clients: list[RobotClient]):
        self.clients = clients
        self._stop = threading.Event()
        self._runner = FleetRunner(self.clients)
        self._thread = threading.Thread(target=self._runner.run, kwargs={"stop": self._stop}, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._runner.close()

    def total(self, key: str) -> int:
        return sum(c.counters[key] for c in self.clients)

    def assert_only_recovered_errors(self) -> None:
        """The gateway's refusals are only those a loaded machine may cause and the protocol recovers from
        (a lease that lapsed, rows to re-send, too many unacked episodes at once); any other is a bug."""
        codes = sum((c.error_codes for c in self.clients), Counter())
        assert self.total("errors") == codes.total() and not set(codes) - RECOVERED_ERRORS, codes

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; counters: {[c.counters for c in self.clients]}")

    def wait_for_actions_above(
        self, version: int, timeout: float = 30.0, what: str = "a newer version"
    ) -> None:
        """Until some robot has executed a step that a weight version above ``version`` produced."""
        self.wait_for(
            lambda: any(
                s.policy_version > version for c in self.clients for e in c.episodes for s in e.steps
            ),
            timeout,
            f"actions from {what}",
        )


_FLEETS = itertools.count()


class RunningFleet(FleetThread):
    """Reacher robots registered over REST, driven by a FleetRunner thread until ``stop()``."""

    def __init__(
        self,
        platform,
        n: int = 2,
        hz: float = 50.0,
        config: ClientConfig | None = None,
        seed: int = 0,
        task: str = "reach",
    ):
        clients = []
        for i in range(n):
            robot = SimRobot("Reacher-v5", seed=seed + i, control_hz=hz)
            # a name of its own: registering a known name again would re-register (same id) that robot
            info = register(platform.rest_url, ADMIN_TOKEN, f"it-{seed}-{i}-{next(_FLEETS)}", task, robot)
            clients.append(RobotClient.from_registration(robot, info, config=config))
        super().__init__(clients)


# -- a bare robot socket (no SDK logic) and the frames tests send through it ----------------------------
def register_raw(platform, api_name: str) -> dict:
    """Register a Reacher-shaped robot over REST; its credentials (id, token, endpoint, CURVE keys)."""
    import httpx

    body = {
        "name": api_name,
        "task": "reach",
        "observation_spec": {"state": {"shape": [10], "dtype": "float32"}},
        "action_spec": {"shape": [2], "dtype": "float32"},
    }
    r = httpx.post(
        f"{platform.rest_url}/v1/robots", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert r.status_code == 201, r.text
    return r.json()


def authenticated_raw(platform, api_name: str):
    """A registered robot's raw socket (its CURVE keys), welcomed; (socket, robot id)."""
    creds = register_raw(platform, api_name)
    raw = RawRobotSocket(creds["endpoint"], creds.get("curve"))
    raw.token = creds["token"]
    welcome = raw.request(P.Hello(robot_id=creds["robot_id"], token=creds["token"]))
    assert isinstance(welcome, P.Welcome) and welcome.task == "reach" and welcome.chunk_len == 4
    return raw, creds["robot_id"]


def raw_obs(robot_id, step, episode="ep1", state=None):
    state = np.zeros(10, np.float32) if state is None else state
    return P.Obs(
        robot_id=robot_id,
        episode_id=episode,
        step=step,
        t_robot=time.monotonic(),
        observation={"state": state},
    )


def raw_steps(robot_id, episode, first, n, action_shape=(2,)):
    from fleetrl.robots.episode import empty_columns

    cols = empty_columns(n)
    cols["obs_step"] += first
    return P.Steps(
        robot_id=robot_id,
        episode_id=episode,
        first_step=first,
        observations={"state": np.full((n, 10), first, np.float32)},
        actions=np.zeros((n, *action_shape), np.float32),
        columns=cols,
    )


def raw_end(robot_id, episode, steps, outcome="success"):
    final = {"state": np.ones(10, np.float32)}
    return P.EpisodeEnd(
        robot_id=robot_id, episode_id=episode, outcome=outcome, steps=steps, final_observation=final
    )


def wait_until(predicate, timeout: float, what: str):
    """``predicate()``'s first truthy value, polled every 0.1 s; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_status(api, task, predicate, timeout=60.0, what="learner condition"):
    """The task's status once ``predicate(its learner status)`` holds, polled every 0.2 s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = api.get(f"/v1/tasks/{task}").json()
        if last.get("learner") and predicate(last["learner"]):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last status: {last}")
