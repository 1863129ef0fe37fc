"""Data-server shards: a platform's tasks spread over several data servers (``data.shards`` M > 1).

Each task lives on one shard, with its store under ``<root>/shard-<k>``: ``data.shard_of`` names the shard,
else a stable hash of the task name picks it. Every copy of the router (the gateway's, each learner's,
REST's) computes the same shard without asking anyone, for tasks created after it was handed out too, and a
shard Ray restarts serves only its own tasks again.

``DataShards`` stands where a data server's actor handle stands, so callers do not change:
``shards.method.remote(...)`` goes to the shard of the call's task (a task name argument, an episode's or a
task config's ``task``/``name``); a call about no one task (``ready``, ``stats()``, ``get_episode(id)``,
``stop``, ...) goes to every shard, and a small Ray task merges their answers into the one a single data
server would give. A shard's restart affects only the calls for its tasks.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from fleetrl.workers.locations import join

# Methods whose first argument (or ``task``/``name`` keyword) names the task, or carries it as
# ``.task`` (an episode) or ``.name`` (a task config).
BY_TASK = {
    "sample_chunks", "sample_chunk_batches", "rollout_stats", "failure_states", "sample_failure_state",
    "replay_config", "sample_episodes", "sample_segments", "curves", "recent_episodes", "remove_task",
    "import_demos", "ingest", "add_segment", "add_task",
}  # fmt: skip
# Methods that route by task when given one, and otherwise ask every shard.
TASK_OR_ALL = {"stats", "episode_ids", "episode_keys"}
# Methods about one stored episode: the shard that holds it answers.
FIRST_ANSWER = {"get_episode", "episode_summary", "label"}
ALL = {"ready", "refill_status", "wait_refilled", "stop"}


def shard_index(task: str, count: int, shard_of: Mapping[str, int]) -> int:
    """The shard of ``task``: ``shard_of``'s, else crc32 of its name modulo ``count`` (stable everywhere)."""
    if task in shard_of:
        return shard_of[task]
    return zlib.crc32(task.encode()) % count


def shard_store(config: Any, root: str, index: int) -> tuple[Any, str]:
    """(data config, store root) of shard ``index``: ``<root>/shard-<k>`` (a URL's query, e.g. an S3
    endpoint, stays at the end) and, for an explicit catalog, ``<catalog>.shard-<k>``; a single data server
    keeps both as they are."""
    if config.shards == 1:
        return config, root
    catalog = None if config.catalog is None else f"{config.catalog}.shard-{index}"
    return config.model_copy(update={"catalog": catalog}), join(root, f"shard-{index}")


class DataShards:
    """The data servers of a sharded platform behind one handle-like object (see the module doc)."""

    def __init__(self, actors: Sequence[Any], shard_of: Mapping[str, int] | None = None):
        self.actors, self.shard_of = list(actors), dict(shard_of or {})

    def for_task(self, task: str) -> Any:
        """The data server that holds ``task``."""
        return self.actors[shard_index(task, len(self.actors), self.shard_of)]

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_") or method not in BY_TASK | TASK_OR_ALL | FIRST_ANSWER | ALL:
            raise AttributeError(f"DataShards routes no data-server method {method!r}")
        return _Method(self, method)


class _Method:
    def __init__(self, shards: DataShards, name: str):
        self.shards, self.name = shards, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        task = _task_of(args, kwargs) if self.name in BY_TASK | TASK_OR_ALL else None
        if task is not None:
            return getattr(self.shards.for_task(task), self.name).remote(*args, **kwargs)
        if self.name in BY_TASK:
            raise ValueError(f"{self.name}: no task in the call to route it by")
        refs = [getattr(actor, self.name).remote(*args, **kwargs) for actor in self.shards.actors]
        return _merge.remote(self.name, refs)


def _task_of(args: tuple, kwargs: dict[str, Any]) -> str | None:
    """The task a call is about: a task name, an episode's ``task`` or a task config's ``name``."""
    keys = ("task", "name", "episode", "piece")
    first = args[0] if args else next((kwargs[k] for k in keys if k in kwargs), None)
    if first is None or isinstance(first, str):
        return first
    if hasattr(first, "episode_id"):  # an episode or a segment of one
        return first.task
    return getattr(first, "name", None)  # a task config


@ray.remote(num_cpus=0)
def _merge(method: str, refs: list[Any]) -> Any:
    """The answers of every shard to ``method`` as one data server's answer."""
    if method in FIRST_ANSWER:  # the shard that holds the episode answers; the others have no such key
        missing: BaseException | None = None
        for ref in refs:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if not isinstance(exc, KeyError):
                    raise exc.as_instanceof_cause() from None
                missing = missing or getattr(exc, "cause", exc)
        assert missing is not None
        raise missing
    answers = ray.get(refs)
    if method in ("episode_ids", "episode_keys"):
        return [x for answer in answers for x in answer]
    if method == "wait_refilled":
        return all(answers)
    if method == "stop":
        return None
    if method == "refill_status":
        return _merge_refill(answers)
    if method == "ready":
        return {"shards": answers, "refill": _merge_refill([a["refill"] for a in answers])}
    if method == "stats":
        return {
            "store": _sum_counts([a["store"] for a in answers]),
            "refill": _merge_refill([a["refill"] for a in answers]),
        }
    raise ValueError(f"no merge for {method!r}")


def _sum_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts added up over the shards (a snapshot number is per shard: the highest one is kept)."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = max(out.get(k, 0), v) if k == "snapshot" else out.get(k, 0) + v
    return out


def _merge_refill(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' replay refills as one: episodes added up, done when every shard is, the slowest time."""
    out = _sum_counts(
        [{k: v for k, v in p.items() if k in ("episodes", "loaded", "unreadable")} for p in parts]
    )
    out["done"] = all(p.get("done", False) for p in parts)
    for k in ("open_s", "seconds"):
        if any(k in p for p in parts):
            out[k] = max(p.get(k, 0.0) for p in parts)
    return out
