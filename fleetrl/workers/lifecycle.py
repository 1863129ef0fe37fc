"""Stopping actors together.

Why: each actor's ``stop()`` may take seconds (a learner winds down its Ray Train run, the data server
flushes its store). Asking them one after another makes a platform with N tasks stop in the sum of those
times; asking all at once and waiting on them together takes the slowest one's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import ray

log = logging.getLogger(__name__)


def stop_actors(actors: Iterable[Any], timeout: float, what: str = "actor") -> None:
    """Call ``stop()`` on every actor at once, wait up to ``timeout`` seconds for all, then kill them all
    (no restart). Best effort: an actor that fails or outlasts the wait is logged and killed anyway."""
    actors = [a for a in actors if a is not None]
    if not actors:
        return
    refs = [a.stop.remote() for a in actors]
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for ref in done:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            pass  # already gone (e.g. a replica its task already stopped)
        except Exception as exc:  # noqa: BLE001 - it is killed next either way
            log.warning("a %s did not stop cleanly: %s", what, exc)
    if pending:
        log.warning("%d %s(s) did not stop within %.0f s: killing them", len(pending), what, timeout)
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
