"""Shared by the integration tests: register sim robots over REST and run them in a background thread."""

from __future__ import annotations

import threading
import time

from fleetrl.robots.client import ClientConfig, FleetRunner, RobotClient, register
from fleetrl.robots.sim import SimRobot
from tests.conftest import ADMIN_TOKEN


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

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; counters: {[c.counters for c in self.clients]}")


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
            info = register(platform.rest_url, ADMIN_TOKEN, f"it-{seed}-{i}", task, robot)
            clients.append(
                RobotClient(robot, info["robot_id"], info["token"], info["endpoint"], config=config)
            )
        super().__init__(clients)
