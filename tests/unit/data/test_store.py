"""workers/data/store.py: Parquet episode files + SQLite catalog, exactly-once ingestion, crash reconciliation."""

from __future__ import annotations

import dataclasses
import os
import sqlite3

import numpy as np
import pytest

from fleetrl.robots.episode import STEP_COLUMNS, EpisodeConflict
from fleetrl.testing.episodes import synthetic_episode
from fleetrl.workers.data.episode_file import read_episode
from fleetrl.workers.data.store import AmbiguousEpisode, EpisodeStore

OBS = {"image": ((6, 5, 3), "uint8"), "state": ((7,), "float16"), "gripper": ((), "bool")}


def rich_episode(**kw):
    ep = synthetic_episode(
        9, obs_spec=OBS, action_shape=(2, 3), meta={"operator": "ana", "tags": [1, 2]}, **kw
    )
    ep.actions = ep.actions.astype(np.float64) + np.random.default_rng(1).standard_normal(ep.actions.shape)
    ep.columns["reward"] = np.linspace(-1, 1, 9, dtype=np.float32)
    ep.columns["intervention"][[2, 3]] = True
    ep.columns["policy_version"][:] = 4
    ep.columns["log_prob"][::3] = -1.25  # NaN elsewhere: must survive
    return ep


def assert_same(a, b):
    assert (a.episode_id, a.task, a.robot_id, a.outcome, a.labelled_by, a.source) == (
        b.episode_id,
        b.task,
        b.robot_id,
        b.outcome,
        b.labelled_by,
        b.source,
    )
    assert (a.terminated, a.truncated, a.meta) == (b.terminated, b.truncated, b.meta)
    assert set(a.observations) == set(b.observations) == set(b.final_observation)
    for k in a.observations:
        assert (
            b.observations[k].dtype == a.observations[k].dtype
            and b.observations[k].shape == a.observations[k].shape
        )
        np.testing.assert_array_equal(b.observations[k], a.observations[k])
        assert b.final_observation[k].dtype == a.final_observation[k].dtype
        np.testing.assert_array_equal(b.final_observation[k], a.final_observation[k])
    assert b.actions.dtype == a.actions.dtype
    np.testing.assert_array_equal(b.actions, a.actions)
    for name in STEP_COLUMNS:
        assert b.columns[name].dtype == a.columns[name].dtype, name
        np.testing.assert_array_equal(b.columns[name], a.columns[name])  # NaN == NaN here


def test_round_trip_keeps_values_shapes_and_dtypes(tmp_path):
    store = EpisodeStore(str(tmp_path))
    ep = rich_episode(outcome="timeout", robot_id="arm-3", source="offline")
    assert store.put(ep) == (True, 1)
    back = store.get(ep.episode_id)
    back.validate()
    assert_same(ep, back)
    assert (tmp_path / "reach" / "arm-3" / f"{ep.episode_id}.parquet").is_file()
    row = store.list()[0]
    assert row["n_steps"] == 9 and row["intervention_steps"] == 2 and row["outcome"] == "timeout"
    assert row["robot_id"] == "arm-3" and row["source"] == "offline" and row["truncated"] is True


def test_zero_step_episode_round_trips(tmp_path):
    store = EpisodeStore(str(tmp_path))
    ep = synthetic_episode(0, obs_spec=OBS, outcome="aborted")
    store.put(ep)
    assert_same(ep, store.get(ep.episode_id))


def test_file_url_root(tmp_path):
    store = EpisodeStore(f"file://{tmp_path}/eps")
    ep = rich_episode()
    store.put(ep)
    assert os.path.isfile(tmp_path / "eps" / "catalog.sqlite")
    assert_same(ep, store.get(ep.episode_id))


def test_duplicate_put_is_stored_once(tmp_path):
    store = EpisodeStore(str(tmp_path))
    ep = rich_episode()
    other = synthetic_episode(3)
    assert store.put(ep) == (True, 1)
    assert store.put(other) == (True, 2)
    assert store.put(ep) == (False, 1)  # at-least-once delivery re-sends it
    assert [r["episode_id"] for r in store.list()] == [ep.episode_id, other.episode_id]
    files = sorted(os.listdir(tmp_path / "reach" / "robot-0"))
    assert files == sorted(f"{e.episode_id}.parquet" for e in (ep, other))
    assert store.snapshot() == 2


def test_snapshots_increase_and_filter(tmp_path):
    store = EpisodeStore(str(tmp_path))
    assert store.snapshot() == 0
    eps = [
        synthetic_episode(3, task=task, seed=i) for i, task in enumerate(["reach", "push", "reach", "push"])
    ]
    snaps = [store.put(e)[1] for e in eps]
    assert snaps == [1, 2, 3, 4] and store.snapshot() == 4
    assert [r["snapshot"] for r in store.list(task="reach")] == [1, 3]
    assert [r["snapshot"] for r in store.list(since_snapshot=2)] == [3, 4]
    assert [r["snapshot"] for r in store.list(task="push", since_snapshot=2)] == [4]
    got = list(store.iter_episodes(task="push"))
    assert [s for s, _ in got] == [2, 4] and [e.episode_id for _, e in got] == [
        eps[1].episode_id,
        eps[3].episode_id,
    ]
    # the catalog survives reopening; numbering continues
    store.close()
    store = EpisodeStore(str(tmp_path))
    assert store.put(synthetic_episode(2, seed=9)) == (True, 5)


def test_stats(tmp_path):
    store = EpisodeStore(str(tmp_path))
    for i, outcome in enumerate(["success", "success", "failure", "timeout", "aborted"]):
        ep = synthetic_episode(11, outcome=outcome, seed=i, control_hz=10.0)
        ep.columns["intervention"][:i] = True
        store.put(ep)
    store.put(synthetic_episode(5, task="other"))
    store.put(synthetic_episode(4, task="other", source="offline", seed=7))
    s = store.stats("reach")
    assert {k: s[k] for k in ("episodes", "steps", "success", "failure", "timeout", "aborted")} == {
        "episodes": 5,
        "steps": 55,
        "success": 2,
        "failure": 1,
        "timeout": 1,
        "aborted": 1,
    }
    assert s["intervention_steps"] == 0 + 1 + 2 + 3 + 4 and s["snapshot"] == 5
    assert s["hours"] == pytest.approx(55 * 0.1 / 3600)  # obs_time span (10 Hz) extended by one step
    assert store.stats("reach", control_hz=5.0)["hours"] == pytest.approx(55 / 5.0 / 3600)
    assert store.stats("nothing")["episodes"] == 0 and store.stats()["episodes"] == 7
    assert s["offline"] == 0 and store.stats("other")["offline"] == 1  # demonstrations, durably counted


def test_reconcile_after_crash_between_file_and_catalog(tmp_path, monkeypatch):
    store = EpisodeStore(str(tmp_path))
    first = synthetic_episode(4, seed=1)
    store.put(first)
    lost = rich_episode()

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut after the rename")

    monkeypatch.setattr(EpisodeStore, "_insert", crash)
    with pytest.raises(KeyboardInterrupt):
        store.put(lost)
    monkeypatch.undo()
    store.close()
    assert (tmp_path / "reach" / "robot-0" / f"{lost.episode_id}.parquet").is_file()
    # a crash before the rename leaves a temporary file
    (tmp_path / "reach" / ".deadbeef.tmp").write_bytes(b"half an episode")

    store = EpisodeStore(str(tmp_path))
    assert store.last_reconcile["inserted"] == [f"reach/robot-0/{lost.episode_id}.parquet"]
    assert store.last_reconcile["temp_removed"] == ["reach/.deadbeef.tmp"]
    assert not (tmp_path / "reach" / ".deadbeef.tmp").exists()
    rows = store.list()
    assert [r["episode_id"] for r in rows] == [first.episode_id, lost.episode_id]
    assert rows[1]["n_steps"] == 9 and rows[1]["intervention_steps"] == 2
    assert_same(lost, store.get(lost.episode_id))
    # the robot, never acked, re-sends it: still stored once
    assert store.put(lost) == (False, rows[1]["snapshot"])
    # reconciling again changes nothing
    assert not any(EpisodeStore(str(tmp_path)).last_reconcile.values())


def test_crash_before_rename_loses_nothing_acked(tmp_path, monkeypatch):
    store = EpisodeStore(str(tmp_path))
    ep = synthetic_episode(4)

    real = store.fs

    class FailingRename:  # pyarrow filesystems are immutable Cython objects: wrap instead of patching
        def __getattr__(self, name):
            return getattr(real, name)

        def move(self, src, dst):
            raise OSError("disk full")

    monkeypatch.setattr(store, "fs", FailingRename())
    with pytest.raises(OSError, match="disk full"):
        store.put(ep)
    monkeypatch.undo()
    assert store.list() == [] and os.listdir(tmp_path / "reach" / "robot-0") == []  # temp file cleaned up
    assert store.put(ep) == (True, 1)


def test_corrupt_file_raises_value_error_naming_it(tmp_path):
    store = EpisodeStore(str(tmp_path))
    ep = synthetic_episode(6)
    store.put(ep)
    path = tmp_path / "reach" / "robot-0" / f"{ep.episode_id}.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(path)):
        store.get(ep.episode_id)
    with pytest.raises(ValueError, match="not-parquet"):
        (tmp_path / "not-parquet.parquet").write_bytes(b"PAR1 garbage")
        read_episode(str(tmp_path / "not-parquet.parquet"))
    # reconcile skips a damaged file it finds without a catalog row instead of refusing to start
    (tmp_path / "reach" / "junk.parquet").write_bytes(b"junk")
    assert EpisodeStore(str(tmp_path)).last_reconcile["corrupt"] == ["reach/junk.parquet"]


def test_missing_file_is_reported(tmp_path):
    store = EpisodeStore(str(tmp_path))
    ep = synthetic_episode(3)
    store.put(ep)
    os.remove(tmp_path / "reach" / "robot-0" / f"{ep.episode_id}.parquet")
    assert EpisodeStore(str(tmp_path)).last_reconcile["missing"] == [f"reach/robot-0/{ep.episode_id}.parquet"]


def test_rejects_invalid_or_unsafe_episodes(tmp_path):
    store = EpisodeStore(str(tmp_path))
    bad = synthetic_episode(4)
    bad.columns["reward"] = bad.columns["reward"][:2]
    with pytest.raises(ValueError, match="reward"):
        store.put(bad)
    for bad_id in ("../escape", "bad id", ".hidden", "x" * 129, "épisode", "ep\n"):
        with pytest.raises(ValueError, match="is not valid: 1-128 characters"):
            store.put(synthetic_episode(3, episode_id=bad_id))
    with pytest.raises(ValueError, match="robot_id"):
        store.put(synthetic_episode(3, robot_id="a/b"))
    with pytest.raises(ValueError, match="JSON"):
        store.put(synthetic_episode(3, meta={"x": object()}))
    with pytest.raises(KeyError):
        store.get("never-stored")
    assert store.snapshot() == 0


def test_catalog_is_wal_sqlite_keyed_by_episode_id(tmp_path):
    store = EpisodeStore(str(tmp_path), catalog=str(tmp_path / "cat" / "c.sqlite"))
    store.put(synthetic_episode(3, episode_id="ep-1"))
    db = sqlite3.connect(tmp_path / "cat" / "c.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT snapshot, task FROM episodes WHERE episode_id='ep-1'").fetchone() == (
        1,
        "reach",
    )


def test_human_label_overrides_the_stored_outcome(tmp_path):
    store = EpisodeStore(str(tmp_path / "s"))
    ep = synthetic_episode(4, outcome="timeout")
    store.put(ep)
    row = store.set_label(ep.episode_id, "success")
    assert row["outcome"] == "success" and row["labelled_by"] == "human"
    assert store.get(ep.episode_id).outcome == "success"
    assert [e.outcome for _, e in store.iter_episodes()] == ["success"]
    assert store.stats()["success"] == 1 and store.stats()["timeout"] == 0
    with pytest.raises(KeyError):
        store.set_label("nope", "success")
    with pytest.raises(ValueError):
        store.set_label(ep.episode_id, "great")
    store.close()
    assert EpisodeStore(str(tmp_path / "s")).get(ep.episode_id).labelled_by == "human"  # durable


def test_two_robots_may_use_the_same_episode_id(tmp_path):
    store = EpisodeStore(str(tmp_path))
    a = synthetic_episode(8, episode_id="ep-0", robot_id="robot-a", seed=1)
    b = synthetic_episode(12, episode_id="ep-0", robot_id="robot-b", seed=2)
    assert store.put(a) == (True, 1) and store.put(b) == (True, 2)  # both stored, neither dropped
    assert store.put(b) == (False, 2)  # a true re-send of b: stored once
    assert len(store.get("ep-0", "robot-a")) == 8 and len(store.get("ep-0", "robot-b")) == 12
    with pytest.raises(AmbiguousEpisode, match="robot-a.*robot-b"):
        store.get("ep-0")  # the id alone no longer says which
    assert store.set_label("ep-0", "failure", robot_id="robot-b")["n_steps"] == 12
    assert store.get("ep-0", "robot-a").outcome == "success"
    assert store.get(b.episode_id, "robot-b").labelled_by == "human"
    assert {e.robot_id for _, e in store.iter_episodes()} == {"robot-a", "robot-b"}


def test_a_different_episode_under_a_stored_robot_and_id_is_refused(tmp_path):
    store = EpisodeStore(str(tmp_path))
    full = synthetic_episode(20, episode_id="ep-1", seed=3)
    cut = dataclasses.replace(full, outcome="aborted", actions=full.actions[:10],
                              observations={k: v[:10] for k, v in full.observations.items()},
                              columns={k: v[:10] for k, v in full.columns.items()})  # fmt: skip
    assert store.put(cut) == (True, 1)
    with pytest.raises(EpisodeConflict, match="10 steps, outcome 'aborted'; this one: 20 steps"):
        store.put(full)
    changed = dataclasses.replace(cut, actions=cut.actions + 0.5)  # same length, other values
    with pytest.raises(EpisodeConflict):
        store.put(changed)
    relabelled = dataclasses.replace(cut, meta={"gateway_end_time": 1.0})  # meta is not what was sent
    assert store.put(relabelled) == (False, 1)
    store.close()
    reopened = EpisodeStore(str(tmp_path))  # the digest is in the catalog and in the file's header
    with pytest.raises(EpisodeConflict):
        reopened.put(full)


def test_a_catalog_keyed_by_episode_id_alone_is_migrated_on_open(tmp_path):
    """A store written before episodes were keyed by robot: one unique ``episode_id`` column, files at
    ``<task>/<episode_id>.parquet``. It opens with its episodes, snapshots and labels; robots may then
    share ids."""
    import pyarrow.parquet as pq

    from fleetrl.workers.data.episode_file import to_table

    old = [synthetic_episode(4 + i, episode_id=f"ep-{i}", robot_id=f"robot-{i}", seed=i) for i in range(3)]
    (tmp_path / "reach").mkdir()
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    db.executescript(LEGACY_SCHEMA)
    for i, ep in enumerate(old):
        table, summary = to_table(ep)
        pq.write_table(table, tmp_path / "reach" / f"{ep.episode_id}.parquet")
        db.execute(
            "INSERT INTO episodes (episode_id, task, robot_id, outcome, source, labelled_by, terminated,"
            " truncated, n_steps, intervention_steps, duration_s, total_reward, path, created)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (ep.episode_id, "reach", ep.robot_id, "failure" if i == 1 else ep.outcome, ep.source,
             "human" if i == 1 else "robot", 1, 0, len(ep), 0, 0.0, 0.0, f"reach/{ep.episode_id}.parquet", 1.0),
        )  # fmt: skip
    db.commit()
    db.close()
    store = EpisodeStore(str(tmp_path))
    assert not any(store.last_reconcile.values())  # every legacy file is still known by its path
    assert [(r["snapshot"], r["episode_id"]) for r in store.list()] == [(1, "ep-0"), (2, "ep-1"), (3, "ep-2")]
    assert store.get("ep-1").outcome == "failure" and store.get("ep-1").labelled_by == "human"
    assert_same(old[2], store.get("ep-2", "robot-2"))
    assert store.put(old[0]) == (False, 1)  # a legacy row without digest: a re-send of the same length
    with pytest.raises(EpisodeConflict):
        store.put(synthetic_episode(9, episode_id="ep-0", robot_id="robot-0"))
    assert store.put(synthetic_episode(5, episode_id="ep-0", robot_id="robot-9"))[0]  # another robot's ep-0
    sql = (
        sqlite3.connect(tmp_path / "catalog.sqlite")
        .execute("SELECT sql FROM sqlite_master WHERE name='episodes'")
        .fetchone()[0]
    )
    assert "UNIQUE (robot_id, episode_id)" in sql and "episode_id TEXT NOT NULL UNIQUE" not in sql


LEGACY_SCHEMA = """
CREATE TABLE episodes (
    snapshot INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id TEXT NOT NULL UNIQUE,
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
    created REAL NOT NULL
);
CREATE INDEX episodes_task ON episodes(task, snapshot);
"""


def test_an_evaluation_episode_is_cataloged_with_its_evaluation_also_after_reconcile(tmp_path):
    """The catalog's ``evaluation`` column (the curves leave those episodes out) comes from the episode's
    ``meta['evaluation']``; a file the catalog lost is re-indexed with it; a catalog written before the
    column existed gets it on open."""
    import fleetrl.workers.data.store as store_module

    old_schema = "\n".join(line for line in store_module._SCHEMA.splitlines() if "evaluation" not in line)
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    db.executescript(old_schema)  # the catalog of a store written before the column
    db.close()
    store = EpisodeStore(str(tmp_path))
    plain = synthetic_episode(4, seed=1)
    evaluated = dataclasses.replace(synthetic_episode(5, seed=2), meta={"evaluation": "ev-7"})
    store.put(plain)
    store.put(evaluated)
    assert [r["evaluation"] for r in store.list()] == [None, "ev-7"]
    store.close()
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    db.execute("DELETE FROM episodes WHERE episode_id = ?", (evaluated.episode_id,))  # a lost catalog row
    db.commit()
    db.close()
    store = EpisodeStore(str(tmp_path))
    assert len(store.last_reconcile["inserted"]) == 1
    assert {r["episode_id"]: r["evaluation"] for r in store.list()} == {
        plain.episode_id: None,
        evaluated.episode_id: "ev-7",
    }
