"""Durable episode store: one Parquet file per episode plus a SQLite catalog (pure pyarrow/sqlite, no Ray).

Episodes are the unit of durability (docs/architecture.md, "Data flow"). ``put`` writes
``<root>/<task>/<robot_id>/<episode_id>.parquet`` under a temporary name and renames it, then inserts the
catalog row; the catalog's primary key is the ``snapshot``, a monotonically increasing integer per
committed episode (LWD's versioned snapshots). An episode is identified by (robot id, episode id): two
robots may use the same episode id. A re-send under at-least-once delivery is stored exactly once, and
only a true re-send: a different episode under a stored (robot, id) — other rows, outcome or values, told
apart by ``Episode.digest`` — raises ``EpisodeConflict`` instead of passing for the stored one.

Stores written before episodes were keyed by robot (``episode_id`` unique, files at
``<task>/<episode_id>.parquet``) are migrated on open: the catalog is rebuilt with the new key, the files
stay where they are.

A crash between the rename and the catalog insert leaves a file without a row: ``reconcile`` (run on open)
inserts it from the file's footer alone, and deletes temporary files a crash left behind. A crash before
the rename leaves only a temporary file, and the robot, never acked, sends the episode again. On an object
store (``s3://...``) the file goes to its final key in one PUT instead (``EpisodeStore``).

The file layout is in ``episode_file.py``.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fleetrl.robots.episode import ID_PATTERN, OUTCOMES, Episode, EpisodeConflict, check_id
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.data.episode_file import read_episode, read_header, scalar_fields, to_table
from fleetrl.workers.locations import filesystem

log = logging.getLogger(__name__)

SAFE_NAME = ID_PATTERN  # task, robot id and episode id become path parts
TMP_SUFFIX = ".tmp"
__all__ = ["AmbiguousEpisode", "EpisodeConflict", "EpisodeStore", "SAFE_NAME", "load_store_episodes"]


class AmbiguousEpisode(LookupError):
    """An episode id alone that several robots' episodes share: name the robot too."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    snapshot INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id TEXT NOT NULL,
    task TEXT NOT NULL,
    robot_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    source TEXT NOT NULL,
    labelled_by TEXT NOT NULL,
    terminated INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    n_steps INTEGER NOT NULL,
    intervention_steps INTEGER NOT NULL,
    duration_s REAL NOT NULL,
    total_reward REAL NOT NULL,
    path TEXT NOT NULL,
    created REAL NOT NULL,
    digest TEXT,
    evaluation TEXT,
    UNIQUE (robot_id, episode_id)
);
CREATE INDEX IF NOT EXISTS episodes_task ON episodes(task, snapshot);
CREATE INDEX IF NOT EXISTS episodes_id ON episodes(episode_id);
"""
_LEGACY_KEY = "episode_id TEXT NOT NULL UNIQUE"  # catalogs before (robot, episode id) was the key
_ROW_FIELDS = (
    "snapshot",
    "episode_id",
    "task",
    "robot_id",
    "outcome",
    "source",
    "labelled_by",
    "terminated",
    "truncated",
    "n_steps",
    "intervention_steps",
    "duration_s",
    "total_reward",
    "path",
    "created",
    "evaluation",  # the evaluation an episode was run for (``meta['evaluation']``), else None
)
_ADDED_COLUMNS = {"evaluation": "TEXT"}  # columns newer than some catalogs on disk (added on open)


class EpisodeStore:
    """Episodes on a pyarrow filesystem, indexed by a local SQLite catalog.

    ``root`` is a local directory or any URL ``pyarrow.fs.FileSystem.from_uri`` understands
    (``file:///data/episodes``, ``s3://bucket/prefix``, ...). The catalog is always a local SQLite file
    (WAL mode): by default ``<root>/catalog.sqlite`` when the root is local; a remote root needs an
    explicit ``catalog`` path. On a local disk a file is written under a temporary name and renamed (atomic);
    an object store has no rename (pyarrow's ``move`` there is a copy and a delete), but one PUT is atomic by
    itself: the file is serialised in memory and uploaded to its final key in one request, so it exists
    whole or not at all. Either way a crash between the upload and the catalog row leaves a file without a
    row, which ``reconcile`` (run on open: it lists the root) commits; the catalog is then the only local
    state, and a data server that restarts elsewhere rebuilds it from the listing.

    ``reconcile`` on open assumes no other process is in the middle of a ``put`` on the same root.
    Thread-safe within a process.
    """

    def __init__(
        self, root: str, catalog: str | None = None, *, fsync: bool = True, reconcile: bool = True
    ) -> None:
        self.root = root
        self.fs, self._base = filesystem(root)
        self._base = self._base.rstrip("/")
        self._local = isinstance(self.fs, pafs.LocalFileSystem)
        self._fsync = fsync and self._local
        if catalog is None:
            if not self._local:
                raise ValueError(f"root {root!r} is not local: pass catalog=<local sqlite path>")
            catalog = os.path.join(self._base, "catalog.sqlite")
        self.catalog_path = catalog
        self.fs.create_dir(self._base, recursive=True)
        os.makedirs(os.path.dirname(os.path.abspath(catalog)), exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(catalog, check_same_thread=False, timeout=30.0, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate_legacy_catalog()
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        self.last_reconcile: dict[str, builtins.list[str]] = {}
        if reconcile:
            self.reconcile()

    def _add_missing_columns(self) -> None:
        """A catalog written before a column existed gets it (NULL in its old rows)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(episodes)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE episodes ADD COLUMN {name} {kind}")

    def _migrate_legacy_catalog(self) -> None:
        """Rebuild a catalog whose ``episode_id`` alone was unique with the (robot, episode id) key, in
        one transaction; snapshots, rows and file paths are kept as they were."""
        row = self._db.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name='episodes'"
        ).fetchone()
        if row is None or _LEGACY_KEY not in row[0]:
            return
        n = self._db.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
        columns = ", ".join(f for f in _ROW_FIELDS if f not in _ADDED_COLUMNS)
        self._db.executescript(
            "BEGIN IMMEDIATE;"
            "ALTER TABLE episodes RENAME TO episodes_legacy;"
            "DROP INDEX IF EXISTS episodes_task;"
            + _SCHEMA
            + f"INSERT INTO episodes ({columns}) SELECT {columns} FROM episodes_legacy ORDER BY snapshot;"
            "DROP TABLE episodes_legacy;"
            "COMMIT;"
        )
        log.info(
            "episode store %s: catalog of %d episodes migrated to (robot, episode id) keys", self.root, n
        )

    # ------------------------------------------------------------------ writing

    def put(
        self, episode: Episode, digest: str | None = None, frames: dict[str, ArraySpec] | None = None
    ) -> tuple[bool, int]:
        """Store ``episode`` once. Returns (stored, snapshot); a true re-send of a stored (robot, episode
        id) gives (False, its snapshot); a different episode under it raises ``EpisodeConflict``.
        ``digest``: of the episode as the robot sent it, when the caller changed it since (rewards a
        critic scored); default ``episode.digest()``. ``frames``: the specs of camera keys stored compressed
        (``episode_file.to_table``)."""
        episode.validate()
        for what, name in (
            ("task", episode.task),
            ("robot_id", episode.robot_id),
            ("episode_id", episode.episode_id),
        ):
            problem = check_id(what, name)
            if problem is not None:
                raise ValueError(problem)
        digest = digest or episode.digest()
        with self._lock:
            existing = self._stored_as(episode.robot_id, episode.episode_id)
            if existing is not None:
                self._check_same(episode, digest, existing)
                return False, int(existing["snapshot"])
            table, summary = to_table(episode, digest, frames)
            rel = f"{episode.task}/{episode.robot_id}/{episode.episode_id}.parquet"
            self._write_atomic(rel, table)
            return self._insert(episode, summary, rel, time.time(), digest)

    @staticmethod
    def _check_same(episode: Episode, digest: str, stored: sqlite3.Row) -> None:
        """Raise ``EpisodeConflict`` unless ``episode`` is what is stored under its key (by digest; rows of
        catalogs older than digests compare by step count)."""
        same = (
            stored["digest"] == digest if stored["digest"] is not None else stored["n_steps"] == len(episode)
        )
        if not same:
            raise EpisodeConflict(
                f"robot {episode.robot_id!r} episode {episode.episode_id!r} is stored already with other "
                f"contents ({stored['n_steps']} steps, outcome {stored['outcome']!r}; this one: "
                f"{len(episode)} steps, {episode.outcome!r}): not stored again, use a new episode id"
            )

    def _write_atomic(self, rel: str, table: pa.Table) -> None:
        final = f"{self._base}/{rel}"
        if not self._local:  # an object store: one PUT of the whole file, which appears whole or not at all
            sink = pa.BufferOutputStream()  # written out first, so a failure here uploads nothing
            pq.write_table(table, sink, row_group_size=max(table.num_rows - 1, 1), compression="zstd")
            with self.fs.open_output_stream(final) as out:
                out.write(sink.getvalue())
            return
        tmp = f"{self._base}/{os.path.dirname(rel)}/.{uuid.uuid4().hex}{TMP_SUFFIX}"
        self.fs.create_dir(os.path.dirname(final), recursive=True)
        try:
            with self.fs.open_output_stream(tmp) as out:
                pq.write_table(table, out, row_group_size=max(table.num_rows - 1, 1), compression="zstd")
            if self._fsync:
                _fsync_path(tmp)
            self.fs.move(tmp, final)
            if self._fsync:
                _fsync_path(os.path.dirname(final), directory=True)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise

    def _insert(
        self, ep: Episode | dict, summary: dict, rel: str, created: float, digest: str | None
    ) -> tuple[bool, int]:
        f = ep if isinstance(ep, dict) else scalar_fields(ep)
        meta = (ep.get("meta") if isinstance(ep, dict) else ep.meta) or {}
        cur = self._db.execute(
            "INSERT OR IGNORE INTO episodes (episode_id, task, robot_id, outcome, source, labelled_by,"
            " terminated, truncated, n_steps, intervention_steps, duration_s, total_reward, path, created,"
            " digest, evaluation) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                f["episode_id"],
                f["task"],
                f["robot_id"],
                f["outcome"],
                f["source"],
                f["labelled_by"],
                int(f["terminated"]),
                int(f["truncated"]),
                summary["n_steps"],
                summary["intervention_steps"],
                summary["duration_s"],
                summary["total_reward"],
                rel,
                created,
                digest,
                meta.get("evaluation") or None,
            ),
        )
        if cur.rowcount == 1:
            return True, int(cur.lastrowid)
        existing = self._stored_as(f["robot_id"], f["episode_id"])  # another writer got there first
        assert existing is not None
        return False, int(existing["snapshot"])

    def reconcile(self) -> dict[str, builtins.list[str]]:
        """Make the catalog agree with the files after a crash; returns what it did.

        ``inserted``: files that had no catalog row (now committed with a new snapshot);
        ``temp_removed``: temporary files deleted; ``corrupt``: unreadable files skipped (left in place);
        ``missing``: catalog rows whose file is gone (left in place, reported).
        """
        report: dict[str, builtins.list[str]] = {
            "inserted": [],
            "temp_removed": [],
            "corrupt": [],
            "missing": [],
        }
        with self._lock:
            known = {r["path"] for r in self._db.execute("SELECT path FROM episodes")}
            seen = set()
            infos = self.fs.get_file_info(pafs.FileSelector(self._base, recursive=True, allow_not_found=True))
            for info in sorted(infos, key=lambda i: i.path):
                if info.type != pafs.FileType.File:
                    continue
                rel = info.path[len(self._base) + 1 :] if info.path.startswith(self._base) else info.path
                if rel.count("/") not in (
                    1,
                    2,
                ):  # <task>/<robot>/<id>.parquet, or a legacy <task>/<id>.parquet
                    continue
                if rel.endswith(TMP_SUFFIX):
                    self.fs.delete_file(info.path)
                    report["temp_removed"].append(rel)
                    continue
                if not rel.endswith(".parquet"):
                    continue
                seen.add(rel)
                if rel in known:
                    continue
                try:
                    header = read_header(self.fs, info.path)
                except ValueError as e:
                    log.warning("reconcile: skipping %s", e)
                    report["corrupt"].append(rel)
                    continue
                created = info.mtime.timestamp() if info.mtime is not None else time.time()
                stored, _ = self._insert(header, header["summary"], rel, created, header.get("digest"))
                if stored:
                    report["inserted"].append(rel)
            report["missing"] = sorted(known - seen)
        if any(report.values()):
            log.info("episode store %s reconciled: %s", self.root, {k: len(v) for k, v in report.items()})
        self.last_reconcile = report
        return report

    # ------------------------------------------------------------------ reading

    def get(self, episode_id: str, robot_id: str | None = None) -> Episode:
        """The stored episode; KeyError if the catalog does not know it, ``AmbiguousEpisode`` if robots
        share the id and none is named, ValueError if its file is bad."""
        return self.read(self._one(episode_id, robot_id))

    def _one(self, episode_id: str, robot_id: str | None) -> sqlite3.Row:
        """The catalog row of (robot, episode id), or of the id alone when only one robot used it."""
        sql = f"SELECT {', '.join(_ROW_FIELDS)} FROM episodes WHERE episode_id = ?"
        args: tuple = (episode_id,)
        if robot_id is not None:
            sql, args = sql + " AND robot_id = ?", (episode_id, robot_id)
        rows = self._query(sql, args)
        if not rows:
            of = f" of robot {robot_id!r}" if robot_id is not None else ""
            raise KeyError(f"no episode with id {episode_id!r}{of}")
        if len(rows) > 1:
            robots = sorted(r["robot_id"] for r in rows)
            raise AmbiguousEpisode(f"episode id {episode_id!r} is used by robots {robots}: name the robot")
        return rows[0]

    def read(self, row: Any) -> Episode:
        """The episode of a catalog ``row`` (as ``list`` returns them), read from its file; the catalog's
        outcome label (possibly a later human label) wins."""
        ep = read_episode(f"{self._base}/{row['path']}", self.fs)
        if ep.outcome != row["outcome"] or ep.labelled_by != row["labelled_by"]:
            ep = dataclasses.replace(ep, outcome=row["outcome"], labelled_by=row["labelled_by"])
        return ep

    def list(
        self, task: str | None = None, since_snapshot: int = 0, newest_first: bool = False
    ) -> builtins.list[dict[str, Any]]:
        """Catalog rows with snapshot > ``since_snapshot`` (optionally of one task), oldest first (or newest)."""
        sql = f"SELECT {', '.join(_ROW_FIELDS)} FROM episodes WHERE snapshot > ?"
        args: builtins.list[Any] = [since_snapshot]
        if task is not None:
            sql += " AND task = ?"
            args.append(task)
        rows = self._query(sql + (" ORDER BY snapshot DESC" if newest_first else " ORDER BY snapshot"), args)
        out = []
        for r in rows:
            d = dict(r)
            d["terminated"], d["truncated"] = bool(d["terminated"]), bool(d["truncated"])
            out.append(d)
        return out

    def iter_episodes(
        self, task: str | None = None, since_snapshot: int = 0
    ) -> Iterator[tuple[int, Episode]]:
        """(snapshot, episode) in snapshot order: how the data server rebuilds its replay after a restart."""
        for row in self.list(task, since_snapshot):
            yield row["snapshot"], self.read(row)

    def snapshot(self) -> int:
        """The newest committed snapshot (0 for an empty store)."""
        return int(self._query("SELECT COALESCE(MAX(snapshot), 0) FROM episodes")[0][0])

    def stats(self, task: str | None = None, control_hz: float | None = None) -> dict[str, Any]:
        """Counts for one task (all tasks if None). ``hours`` is steps / control_hz when given, else the
        sum of the episodes' observation-time spans. ``snapshot`` is the newest snapshot of that task;
        ``offline``: the demonstrations and imported episodes among them (durable, unlike a replay that
        may still be refilling after a restart)."""
        where, args = ("WHERE task = ?", (task,)) if task is not None else ("", ())
        r = self._query(
            "SELECT COUNT(*), COALESCE(SUM(n_steps), 0), COALESCE(SUM(duration_s), 0),"
            " COALESCE(SUM(outcome='success'), 0), COALESCE(SUM(outcome='failure'), 0),"
            " COALESCE(SUM(outcome='timeout'), 0), COALESCE(SUM(outcome='aborted'), 0),"
            f" COALESCE(SUM(intervention_steps), 0), COALESCE(MAX(snapshot), 0),"
            f" COALESCE(SUM(source = 'offline'), 0) FROM episodes {where}",
            args,
        )[0]
        steps = int(r[1])
        hours = steps / control_hz / 3600.0 if control_hz else float(r[2]) / 3600.0
        keys = ("success", "failure", "timeout", "aborted", "intervention_steps", "snapshot", "offline")
        return {"episodes": int(r[0]), "steps": steps, "hours": hours} | {
            k: int(v) for k, v in zip(keys, r[3:], strict=True)
        }

    def set_label(
        self, episode_id: str, outcome: str, labelled_by: str = "human", robot_id: str | None = None
    ) -> dict[str, Any]:
        """Record a new outcome label for a stored episode (the Parquet file stays as written; the
        catalog's label wins on ``get``). Returns the updated catalog row."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} not in {OUTCOMES}")
        with self._lock:
            snapshot = self._one(episode_id, robot_id)["snapshot"]
            self._db.execute(
                "UPDATE episodes SET outcome = ?, labelled_by = ? WHERE snapshot = ?",
                (outcome, labelled_by, snapshot),
            )
        return self.row(episode_id, robot_id)

    def row(self, episode_id: str, robot_id: str | None = None) -> dict[str, Any]:
        """The catalog row of one episode (``get``'s lookup rules)."""
        d = dict(self._one(episode_id, robot_id))
        d["terminated"], d["truncated"] = bool(d["terminated"]), bool(d["truncated"])
        return d

    def _stored_as(self, robot_id: str, episode_id: str) -> sqlite3.Row | None:
        rows = self._query(
            "SELECT snapshot, n_steps, outcome, digest FROM episodes WHERE robot_id = ? AND episode_id = ?",
            (robot_id, episode_id),
        )
        return rows[0] if rows else None

    def _query(self, sql: str, args: tuple | builtins.list = ()) -> builtins.list[sqlite3.Row]:
        with self._lock:  # one connection shared by the threads of this process
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_store_episodes(root: str, task: str | None = None) -> list[Episode]:
    """Every episode of a store (of ``task`` if given), read in catalog order; for offline tools."""
    with EpisodeStore(root) as store:
        return [ep for _, ep in store.iter_episodes(task)]


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
