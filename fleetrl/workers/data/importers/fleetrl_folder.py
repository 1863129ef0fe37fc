"""Import folders of our own episode files (an ``EpisodeStore`` root or a copy of one task's folder).

Why a reader of our own format: demonstrations recorded with ``fleetrl demos collect`` or copied from
another platform's store go into a task as offline data, checked against that task's specs first.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from fleetrl.robots.episode import Episode
from fleetrl.workers.data.episode_file import read_episode
from fleetrl.workers.data.importers.common import DatasetImportError, spec_problem

if TYPE_CHECKING:  # task.py pulls in torch through the policy config; we only read its specs
    from fleetrl.workers.task import TaskConfig


def import_fleetrl_folder(path: str | Path, task: TaskConfig) -> list[Episode]:
    """Every ``*.parquet`` episode file under ``path`` (recursively), in our own format (e.g. an
    ``EpisodeStore`` root or a copy of one task's folder), checked against the task's observation and
    action specs. The episodes keep their ids (a re-import is a duplicate) and are re-assigned to
    ``task`` (the original task goes to ``meta['imported_from_task']`` when it differs); ``source``
    becomes ``'offline'``. Outcomes are the files' own: a later relabel that lives only in a store's
    catalog is not seen."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetImportError(f"{root}: not a folder")
    files = sorted(
        p
        for p in root.rglob("*.parquet")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DatasetImportError(f"{root}: no *.parquet episode files found")
    episodes = []
    for file in files:
        try:
            ep = read_episode(str(file))
            ep.validate()
        except (ValueError, KeyError, TypeError) as e:
            msg = str(e)
            raise DatasetImportError(msg if str(file) in msg else f"{file}: {msg}") from e
        problems = [
            p
            for p in (
                spec_problem(f"observation {k!r}", v.shape[1:], v.dtype, task.observation_spec[k])
                for k, v in ep.observations.items()
                if k in task.observation_spec
            )
            if p
        ]
        missing = sorted(set(task.observation_spec) - set(ep.observations))
        extra = sorted(set(ep.observations) - set(task.observation_spec))
        problems += [f"lacks observation {k!r}" for k in missing]
        problems += [f"has observation {k!r} that the task does not declare" for k in extra]
        act = spec_problem("action", ep.actions.shape[1:], ep.actions.dtype, task.action_spec)
        problems += [act] if act else []
        if problems:
            raise DatasetImportError(
                f"{file}: episode {ep.episode_id} does not fit task {task.name!r}: " + "; ".join(problems)
            )
        meta = dict(ep.meta)
        if ep.task != task.name:
            meta["imported_from_task"] = ep.task
        episodes.append(dataclasses.replace(ep, task=task.name, source="offline", meta=meta))
    return episodes
