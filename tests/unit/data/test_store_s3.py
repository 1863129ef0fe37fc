"""The episode store on object storage, against a real S3 API (moto's server on this machine): episodes
go to their final keys in one PUT each, exactly once; a crash between the upload and the catalog row is
committed by the next open's reconcile from the bucket listing (the catalog is the only local state); two
stores (data-server shards) share a bucket under their own prefixes without seeing each other's episodes."""

from __future__ import annotations

import pytest

from fleetrl.testing.episodes import synthetic_episode
from fleetrl.testing.s3 import local_s3
from fleetrl.workers.data.store import EpisodeStore


@pytest.fixture(scope="module")
def s3():
    with local_s3() as server:
        yield server


def test_episodes_round_trip_through_s3_exactly_once(s3, tmp_path):
    store = EpisodeStore(s3.url("roundtrip"), str(tmp_path / "catalog.sqlite"))
    episodes = [synthetic_episode(6, episode_id=f"e{i}", seed=i) for i in range(3)]
    assert [store.put(ep)[0] for ep in episodes] == [True, True, True]
    assert store.put(episodes[1])[0] is False  # a re-send is stored once
    back = store.get("e1")
    assert back.episode_id == "e1" and (back.actions == episodes[1].actions).all()
    # one object per episode at its final key: no temporary objects, copies or leftovers
    assert s3.keys("roundtrip/") == [f"roundtrip/reach/robot-0/e{i}.parquet" for i in range(3)]
    store.close()


def test_a_crash_between_upload_and_catalog_row_is_committed_on_the_next_open(s3, tmp_path, monkeypatch):
    url, catalog = s3.url("crash"), str(tmp_path / "catalog.sqlite")
    store = EpisodeStore(url, catalog)
    assert store.put(synthetic_episode(5, episode_id="kept"))[0]

    def crash(*args, **kwargs):
        raise RuntimeError("the process died before the catalog row")

    monkeypatch.setattr(store, "_insert", crash)
    with pytest.raises(RuntimeError):
        store.put(synthetic_episode(5, episode_id="uploaded"))  # never acked: the robot will send it again
    store.close()
    assert "crash/reach/robot-0/uploaded.parquet" in s3.keys("crash/")
    again = EpisodeStore(url, catalog)  # the same node: its catalog lacks the row, the listing has the file
    assert again.last_reconcile["inserted"] == ["reach/robot-0/uploaded.parquet"]
    assert again.put(synthetic_episode(5, episode_id="uploaded"))[0] is False  # the re-send: stored once
    assert sorted(r["episode_id"] for r in again.list()) == ["kept", "uploaded"]
    again.close()
    elsewhere = EpisodeStore(url, str(tmp_path / "other-node.sqlite"))  # restarted on a node without it
    assert sorted(r["episode_id"] for r in elsewhere.list()) == ["kept", "uploaded"]
    elsewhere.close()


def test_two_shards_share_a_bucket_under_their_own_prefixes(s3, tmp_path):
    shards = [
        EpisodeStore(s3.url(f"shared/shard-{k}"), str(tmp_path / f"catalog-{k}.sqlite")) for k in (0, 1)
    ]
    for k, store in enumerate(shards):
        for i in range(2):
            assert store.put(synthetic_episode(4, task=f"task-{k}", episode_id=f"s{k}-{i}", seed=i))[0]
    for k, store in enumerate(shards):
        assert sorted(r["episode_id"] for r in store.list()) == [f"s{k}-0", f"s{k}-1"]
        store.close()
    reopened = EpisodeStore(s3.url("shared/shard-1"), str(tmp_path / "fresh.sqlite"))
    assert sorted(r["episode_id"] for r in reopened.list()) == ["s1-0", "s1-1"]  # nothing of shard 0's
    reopened.close()
