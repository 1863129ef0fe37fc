"""The data server: a Ray actor that keeps every episode durably and serves replay to learners.

``ingest`` stores an episode (exactly once by id) and only then adds it to the task's in-memory replay;
the gateway acks the robot after ``ingest`` returns, so every acked episode is on disk. After a restart
the replay is refilled from the store, so nothing acked is lost.

The refill runs on a background thread, newest episodes first, up to each replay's capacity (every
offline episode, the newest online ones that fit): the server answers as soon as its store is open,
whatever the store's size, and ingest and sampling go on while older episodes stream in. ``ready`` and
``stats`` report its progress. One lock guards the replays between the actor's thread and the refill's.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from pydantic import Field, model_validator

from fleetrl.algorithms.batch import ChunkBatch, EpisodeBatch
from fleetrl.robots.episode import Episode
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.data.curves import DEFAULT_WINDOW, episode_curves
from fleetrl.workers.data.failure_states import FailureStates
from fleetrl.workers.data.importers import import_fleetrl_folder, import_lerobot
from fleetrl.workers.data.replay import Replay
from fleetrl.workers.data.shards import shard_index
from fleetrl.workers.data.store import EpisodeStore
from fleetrl.workers.metrics_server import MetricsBuffer, RemoteLogHandler
from fleetrl.workers.placement import ActorResources
from fleetrl.workers.task import ReplayConfig, TaskConfig, registered_tasks

log = logging.getLogger(__name__)
METRICS_FLUSH_S = 0.5  # how often buffered metrics go to the metrics server


class DataConfig(ActorResources):
    """The data server: its store, replay settings and Ray resources. A restarted data server rebuilds its
    replay from the store, so on a cluster the store must be where the restart can read it: shared storage
    (NFS, or a pyarrow filesystem URL with an explicit ``catalog``), or ``resources`` that pin the server to
    the node that holds the disk."""

    root: str | None = Field(
        None,
        description="Episode store root: a path or a pyarrow filesystem URL (default <state_dir>/episodes).",
    )
    catalog: str | None = Field(None, description="SQLite catalog path (required for a remote root).")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="Replay settings for every task.")
    tasks: dict[str, ReplayConfig] = Field(
        default_factory=dict,
        description="Per-task replay settings (reward scheme env|sparse|aloe, mix, ...) replacing `replay`.",
    )
    seed: int = Field(0, description="Replay sampling seed.")
    shards: int = Field(
        1,
        ge=1,
        description="Data servers to spread the tasks over (each its own actor and store under "
        "<root>/shard-<k>); a task's shard is shard_of's, else a stable hash of its name.",
    )
    shard_of: dict[str, int] = Field(
        default_factory=dict,
        description="Task name -> shard index (0 .. shards - 1), for tasks placed by hand.",
    )

    @model_validator(mode="after")
    def _shards_exist(self) -> DataConfig:
        bad = {t: k for t, k in self.shard_of.items() if not 0 <= k < self.shards}
        if bad:
            raise ValueError(f"shard_of {bad}: shards are numbered 0 .. {self.shards - 1}")
        return self

    def shard_of_task(self, task: str) -> int:
        return shard_index(task, self.shards, self.shard_of)


def replay_locked(method: Callable[..., Any]) -> Callable[..., Any]:
    """An actor method that runs holding the server's replay lock (the refill thread adds to the replays)."""

    @functools.wraps(method)
    def locked(self: DataServer, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class DataServer:
    """Ray actor: ``ready``, ``ingest``, ``sample_chunks``, ``sample_episodes``, ``stats``, ``stop``."""

    def __init__(
        self,
        config: DataConfig,
        tasks: list[TaskConfig],
        root: str,
        metrics: Any | None = None,
        critic: Any | None = None,
        scored_tasks: frozenset[str] = frozenset(),
        registry: Any | None = None,
        shard: int = 0,
    ):
        """``registry``: when given, the tasks served are the registry's (``registered_tasks``), so a data
        server Ray restarts keeps the tasks created and deleted over REST since the platform started.
        ``shard``: this server's index when ``config.shards`` > 1; it serves only the tasks of that shard."""
        self.cfg = config
        self.critic, self.scored_tasks = critic, scored_tasks  # tasks whose rewards a learned critic gives
        self.metrics_server = metrics
        if metrics is not None:
            RemoteLogHandler.install(metrics, "data")
        self.metrics = MetricsBuffer()
        t0 = time.monotonic()
        self.store = EpisodeStore(root, config.catalog)
        self.tasks: dict[str, TaskConfig] = {}
        self.task_replay_cfg: dict[str, ReplayConfig] = {}
        self.replays: dict[str, Replay] = {}
        self.failures: dict[str, FailureStates] = {}  # where each task's episodes fail (return-and-explore)
        self.removed: set[str] = set()  # deleted tasks: episodes still on their way are stored
        self.lock = threading.RLock()  # the replays and failure points: actor thread and refill thread
        served = [(t, None) for t in tasks]
        if registry is not None:
            served = registered_tasks(ray.get(registry.task_configs.remote()), tasks)
        served = [(t, r) for t, r in served if config.shard_of_task(t.name) == shard]
        for t, replay in served:
            self._add_replay(t, replay or config.tasks.get(t.name, config.replay))
        plan = self._refill_plan()
        self.refill: dict[str, Any] = {"episodes": len(plan), "loaded": 0, "unreadable": 0, "done": not plan}
        self.refill["open_s"] = round(time.monotonic() - t0, 3)
        self._stopping = threading.Event()
        self._refill_thread = threading.Thread(
            target=self._refill, args=(plan,), name="replay-refill", daemon=True
        )
        self._refill_thread.start()
        if metrics is not None:
            threading.Thread(target=self._flush_metrics_forever, name="metrics-flush", daemon=True).start()

    def _refill_plan(self) -> list[dict[str, Any]]:
        """The catalog rows the refill loads, newest first: every offline episode of a served task and,
        per task, the newest online episodes that fit its replay's capacity (older ones would be evicted)."""
        room = {name: replay.online.capacity for name, replay in self.replays.items()}
        plan = []
        for row in self.store.list(newest_first=True):
            task = row["task"]
            if task not in room:
                continue
            if row["source"] != "offline":
                rows = row["n_steps"] + 1  # a replay holds one row per step and one for the final observation
                if room[task] is not None and rows > room[task]:
                    room[task] = 0  # full: keep the newest episodes contiguous
                    continue
                if room[task] is not None:
                    room[task] -= rows
            plan.append(row)
        return plan

    def _refill(self, plan: list[dict[str, Any]]) -> None:
        """The refill thread: read each planned episode (outside the lock), add it to its replay."""
        t0 = time.monotonic()
        for row in plan:
            if self._stopping.is_set():
                return
            try:
                episode = self.store.read(row)
            except (OSError, ValueError) as e:  # a file gone or damaged since the catalog listed it
                log.warning("data server: episode %s not replayed: %s", row["episode_id"], e)
                self.refill["unreadable"] += 1
                continue
            with self.lock:
                replay = self.replays.get(episode.task)  # None: its task was deleted meanwhile
                if replay is not None and replay.add(episode, row["snapshot"]):
                    self.failures[episode.task].add(episode)
                self.refill["loaded"] += 1
        self.refill.update(done=True, seconds=round(time.monotonic() - t0, 2))
        log.info(
            "data server: %d episodes replayed from %s in %.1f s",
            self.refill["loaded"],
            self.store.root,
            self.refill["seconds"],
        )

    def refill_status(self) -> dict[str, Any]:
        """The replay refill after this start: episodes planned, loaded, unreadable, done (the live view)."""
        return dict(self.refill)

    def wait_refilled(self, timeout: float | None = None) -> bool:
        """Block until the refill has finished (tests and tools); False if ``timeout`` passed first."""
        self._refill_thread.join(timeout)
        return bool(self.refill["done"])

    def ready(self) -> dict[str, Any]:
        """Answers once the store is open (the replays may still be refilling: ``refill``)."""
        return {
            "snapshot": self.store.snapshot(),
            "root": self.store.root,
            "node_id": ray.get_runtime_context().get_node_id(),
            "refill": dict(self.refill),
        }

    def ingest(self, episode: Episode) -> dict[str, Any]:
        """Store (once) and add to replay; returns ``{stored, snapshot}`` once the episode is durable."""
        replay = self.replays.get(episode.task)
        if replay is None and episode.task not in self.removed:
            raise KeyError(f"no task named {episode.task!r} on this data server")
        sent = episode.digest()  # what the robot sent: a re-send is judged by it, not by the critic's rewards
        if episode.task in self.scored_tasks and episode.source == "online":
            episode = ray.get(self.critic.score.remote(episode))  # rewards from the task's learned critic
        stored, snapshot = self.store.put(episode, sent, self._stored_frames(episode.task))
        with self.lock:
            self._replay_ingested(episode, stored, snapshot)
        self.metrics.inc("episodes_ingested_total", (episode.task, "stored" if stored else "duplicate"))
        return {"stored": stored, "snapshot": snapshot}

    def _replay_ingested(self, episode: Episode, stored: bool, snapshot: int) -> None:
        """An episode just put into the store: into its task's replay if it was new (under the lock)."""
        replay = self.replays.get(episode.task)
        labels = (episode.task,)
        if replay is None:  # its task was deleted while the episode was on its way: kept, not replayed
            log.info("data server: episode %s of deleted task %s stored", episode.episode_id, episode.task)
        elif stored:
            replay.add(episode, snapshot)
            self.failures[episode.task].add(episode)
            ended = episode.meta.get("gateway_end_time")
            if isinstance(ended, float):
                self.metrics.observe("episode_to_learner_seconds", labels, max(0.0, time.time() - ended))
            sizes = replay.sizes()
            self.metrics.set("replay_transitions", (episode.task, "online"), sizes["online_transitions"])
            self.metrics.set("replay_transitions", (episode.task, "offline"), sizes["offline_transitions"])
        else:
            log.info("data server: duplicate episode %s ignored (snapshot %d)", episode.episode_id, snapshot)

    def _stored_frames(self, task: str) -> dict[str, ArraySpec] | None:
        """The camera keys ``task`` stores compressed (None once it was deleted: kept as they came)."""
        return camera_frames(self.tasks[task]) if task in self.tasks else None

    def _flush_metrics_forever(self) -> None:
        """Ship the buffered metrics every ``METRICS_FLUSH_S``, not one Ray call per ingested episode (at
        128 robots that call was a tenth of this actor's CPU, and as much again in the metrics server)."""
        while not self._stopping.wait(METRICS_FLUSH_S):
            events, gauges = self.metrics.drain()
            if events or gauges:
                try:
                    self.metrics_server.ingest.remote(events, gauges)
                except Exception:  # noqa: BLE001 - metrics are best effort
                    log.warning("data server: metrics server unreachable")

    @replay_locked
    def sample_chunks(self, task: str, batch_size: int, offline_fraction: float | None = None) -> ChunkBatch:
        return self.replays[task].sample_chunks(batch_size, offline_fraction)

    @replay_locked
    def sample_chunk_batches(
        self, task: str, batch_size: int, count: int, offline_fraction: float | None = None
    ) -> list[ChunkBatch]:
        """``count`` independent batches in one call: a fast learner pays one round trip per ``count``."""
        if not 1 <= count <= 64:
            raise ValueError(f"count must be in [1, 64], got {count}")
        return [self.replays[task].sample_chunks(batch_size, offline_fraction) for _ in range(count)]

    @replay_locked
    def rollout_stats(self, task: str, last: int = 50) -> dict[str, float]:
        return self.replays[task].rollout_stats(last)

    @replay_locked
    def failure_states(self, task: str) -> dict[str, Any]:
        """Where the task's episodes fail: count, histogram over the episode, the recent points."""
        return self.failures[task].summary()

    @replay_locked
    def sample_failure_state(self, task: str) -> dict[str, Any] | None:
        """A recorded failure point of ``task`` (None if there is none yet), for a return-and-explore reset."""
        return self.failures[task].sample()

    def replay_config(self, task: str) -> ReplayConfig:
        return self.task_replay_cfg[task]

    @replay_locked
    def add_task(self, task: TaskConfig, replay: ReplayConfig | None = None) -> None:
        """Keep and replay a task created at runtime (its stored episodes, if any, are replayed too)."""
        if task.name in self.tasks:
            if self.tasks[task.name] == task:
                return  # it was in the registry when this data server started
            raise ValueError(f"task {task.name!r} already exists on this data server")
        task_replay = self._add_replay(task, replay or self.cfg.replay)
        for snapshot, episode in self.store.iter_episodes(task.name):
            task_replay.add(episode, snapshot)

    @replay_locked
    def remove_task(self, name: str) -> int:
        """Stop replaying a deleted task. Its episodes stay on disk, and a task created again under the same
        name replays them. Returns how many the store holds."""
        for table in (self.tasks, self.task_replay_cfg, self.replays, self.failures):
            table.pop(name, None)
        self.removed.add(name)
        return self.store.stats(name)["episodes"]

    def _add_replay(self, task: TaskConfig, cfg: ReplayConfig) -> Replay:
        self.removed.discard(task.name)
        self.tasks[task.name], self.task_replay_cfg[task.name] = task, cfg
        self.replays[task.name] = Replay.from_config(
            cfg, chunk_len=task.chunk_len, seed=self.cfg.seed, frames=camera_frames(task)
        )
        self.failures[task.name] = FailureStates(task.name in self.scored_tasks, seed=self.cfg.seed)
        return self.replays[task.name]

    @replay_locked
    def sample_episodes(
        self, task: str, n: int, max_staleness: int | None = None, since_snapshot: int = 0
    ) -> EpisodeBatch:
        return self.replays[task].sample_episodes(
            n, max_staleness=max_staleness, since_snapshot=since_snapshot
        )

    @replay_locked
    def add_segment(self, piece: Episode) -> None:
        """A piece of a running episode for on-policy learners (not stored; ``gateway/segments.py``)."""
        self.replays[piece.task].add_segment(piece)

    @replay_locked
    def sample_segments(self, task: str, since: int = 0) -> EpisodeBatch:
        return self.replays[task].sample_segments(since)

    def episode_ids(self, task: str | None = None) -> list[str]:
        return [row["episode_id"] for row in self.store.list(task)]

    def episode_keys(self, task: str | None = None) -> list[tuple[str, str]]:
        """(robot id, episode id) of every stored episode, oldest first: what identifies an episode."""
        return [(row["robot_id"], row["episode_id"]) for row in self.store.list(task)]

    def get_episode(self, episode_id: str, robot_id: str | None = None) -> Episode:
        """The stored episode (``robot_id`` may be left out while only one robot used the id)."""
        return self.store.get(episode_id, robot_id)

    def import_demos(
        self, task: str, path: str, fmt: str = "fleetrl", observation_keys: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Import offline episodes (our Parquet folder or a LeRobot dataset) into the store and replay.
        All files are read and checked before the first one is stored."""
        spec = self.tasks.get(task)
        if spec is None:
            raise KeyError(f"no task named {task!r} on this data server")
        if fmt == "fleetrl":
            episodes = import_fleetrl_folder(path, spec)
        elif fmt == "lerobot":
            episodes = import_lerobot(path, spec, observation_keys=observation_keys)
        else:
            raise ValueError(f"unknown demo format {fmt!r}; use 'fleetrl' or 'lerobot'")
        stored = duplicates = 0
        for episode in episodes:
            result = self.ingest(episode)
            stored += result["stored"]
            duplicates += not result["stored"]
        log.info(
            "data server: imported %d episodes (%d duplicates) from %s into %s",
            stored,
            duplicates,
            path,
            task,
        )
        return {"stored": stored, "duplicates": duplicates, "snapshot": self.store.snapshot()}

    def episode_summary(self, episode_id: str, robot_id: str | None = None) -> dict[str, Any]:
        """Catalog row plus the episode's metadata (not its arrays)."""
        row = self.store.row(episode_id, robot_id)
        return {**row, "meta": self.store.get(episode_id, row["robot_id"]).meta}

    @replay_locked
    def label(
        self, episode_id: str, outcome: str, labelled_by: str = "human", robot_id: str | None = None
    ) -> dict[str, Any]:
        """A human (or critic) outcome label: kept in the catalog and applied to the replay's rewards."""
        row = self.store.set_label(episode_id, outcome, labelled_by, robot_id)
        replay = self.replays.get(row["task"])
        if replay is not None:
            replay.relabel(self.store.get(episode_id, row["robot_id"]))
        log.info("data server: episode %s labelled %s by %s", episode_id, outcome, labelled_by)
        return row

    @replay_locked
    def stats(self, task: str | None = None) -> dict[str, Any]:
        out = {"store": self.store.stats(task), "refill": self.refill_status()}
        if task is not None:
            out["replay"] = self.replays[task].sizes()
        return out

    def stop(self) -> None:
        self._stopping.set()
        self._refill_thread.join(timeout=10)
        self.store.close()

    def curves(self, task: str, window: int = DEFAULT_WINDOW) -> dict[str, Any]:
        """Success and intervention curves of a task from the catalog (so they survive a restart)."""
        control_hz = getattr(self.tasks.get(task), "control_hz", None)  # tasks do not declare one yet
        return {"task": task, **episode_curves(self.store.list(task), window, control_hz)}

    def recent_episodes(self, task: str, limit: int = 50) -> list[dict[str, Any]]:
        """The task's newest ``limit`` catalog rows, newest first (what an operator labels)."""
        return self.store.list(task)[::-1][:limit]


def camera_frames(task: TaskConfig) -> dict[str, ArraySpec]:
    """The specs of the task's camera keys that travel compressed: stored and replayed compressed too."""
    specs = task.observation_spec
    return {k: specs[k] for k in task.camera_keys if specs[k].encoding != "raw"}


def default_root(state_dir: Path, config: DataConfig) -> str:
    return config.root or str(state_dir / "episodes")
