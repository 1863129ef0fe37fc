"""Killing an actor and waiting for Ray's restart of it, for fault tests and the faults benchmark.

Why not just call the actor after ``ray.kill``: the kill is asynchronous, so a call made right after it
may still be answered by the old process. The restart count Ray keeps for the actor (read from the GCS)
says when the new process exists; a probe call then says when it serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray


def _gcs_record(actor: Any) -> dict[str, Any]:
    return ray._private.state.actors(actor._actor_id.hex())


def restart_count(actor: Any) -> int:
    """How many times Ray has restarted ``actor`` (its GCS record)."""
    return int(_gcs_record(actor)["NumRestarts"])


def actor_pid(actor: Any) -> int:
    """The process id of ``actor``'s current incarnation (its GCS record)."""
    return int(_gcs_record(actor)["Pid"])


def kill_and_await_restart(
    actor: Any, probe: Callable[[Any], Any], timeout: float = 120.0, then: Callable[[], bool] | None = None
) -> float | None:
    """SIGKILL ``actor`` (Ray may restart it) and return the seconds until the restarted process answers
    ``probe(actor)`` (an object ref) and ``then()`` holds, or None if that took longer than ``timeout``."""
    before = restart_count(actor)
    ray.kill(actor, no_restart=False)
    t_kill = time.monotonic()
    answered = False
    while time.monotonic() - t_kill < timeout:
        if not answered and restart_count(actor) > before:
            try:
                ray.get(probe(actor), timeout=2)
                answered = True
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                pass
        if answered and (then is None or then()):
            return time.monotonic() - t_kill
        time.sleep(0.1)
    return None
