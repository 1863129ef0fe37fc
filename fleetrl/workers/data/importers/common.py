"""What both importers share: the error they raise, the check of an array against a task's spec, and
putting what they return into a store (checked whole before the first write)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fleetrl.robots.episode import Episode, check_id
from fleetrl.workers.data.store import EpisodeStore


class DatasetImportError(ValueError):
    """A dataset cannot be imported; the message names the file and what is wrong with it."""


def spec_problem(name: str, shape: tuple[int, ...], dtype: Any, spec: Any) -> str | None:
    """Why an array of ``shape``/``dtype`` does not fit a task ArraySpec, or None."""
    try:
        same_dtype = np.dtype(dtype) == np.dtype(spec.dtype)
    except TypeError:
        same_dtype = False
    if tuple(shape) != tuple(spec.shape) or not same_dtype:
        return f"{name} is {dtype}{list(shape)}, the task expects {spec.dtype}{list(spec.shape)}"
    return None


def import_into_store(store: EpisodeStore, episodes: list[Episode]) -> dict[str, int]:
    """Put ``episodes`` into ``store``: ``{"stored": n, "duplicates": m}`` (ids the store already had,
    or repeated in ``episodes``). All are checked before the first is written; should a write itself
    fail, the episodes before it stay stored and a re-run stores only the rest."""
    for ep in episodes:
        try:
            ep.validate()
        except ValueError as e:
            raise DatasetImportError(str(e)) from e
        for what, name in (("task", ep.task), ("robot_id", ep.robot_id), ("episode_id", ep.episode_id)):
            problem = check_id(what, name)
            if problem is not None:
                raise DatasetImportError(f"episode {ep.episode_id!r}: {problem}")
    stored = 0
    for ep in episodes:
        stored += int(store.put(ep)[0])
    return {"stored": stored, "duplicates": len(episodes) - stored}
