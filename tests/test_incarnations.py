"""Incarnations: a data directory that cannot prove it minted its origin's newest events never mints their ids again.

Storage-level checks here; the scenarios on real processes are in
``test_replication_e2e.py`` (``test_regression_a_region_that_lost_its_disk...``)
and the simulator's ``disk`` fault covers them under every other fault.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import lmdb
import pytest

from crdtstore.crdt import HybridLogicalClock, VersionVector
from crdtstore.crdt.origin import origin_of, region_of
from crdtstore.operations import AddMembers, Increment
from crdtstore.storage import Applied, LmdbStore, RawLogEntry, StorageConfig, StorageOptions, WriteRequest
from crdtstore.testing.clock import FakeClock

# The map starts small (it starts at its maximum by default): a test here makes it grow.
_FAST = StorageOptions(sync=False, map_size_bytes=1024 * 1024)


def _open(path: Path, region: str = "eu", *, new_incarnation: bool = False) -> LmdbStore:
    return LmdbStore(StorageConfig(path, region, _FAST, new_incarnation=new_incarnation))


def _write(store: LmdbStore, *members: str) -> Applied:
    clock = HybridLogicalClock(FakeClock(1_000), floor=store.hlc_mark)
    (result,) = store.write_batch([WriteRequest([AddMembers("s", members)])], clock)
    assert isinstance(result, Applied)
    return result


def _raw_log(store: LmdbStore) -> list[RawLogEntry]:
    entries, _, _ = store.log_since(VersionVector(), bytes_max=1 << 30)
    return entries


def test_origins_name_their_region_and_sort_as_regions_do() -> None:
    assert region_of(origin_of("eu-west", "3f9a1c0b7d2e")) == "eu-west"
    assert region_of("eu-west") == "eu-west", "an origin from before incarnations is its own region"
    # '#' sorts below every character of a region name, so origins keep the regions' order.
    assert sorted([origin_of("a-b", "00"), origin_of("a", "ff")]) == [origin_of("a", "ff"), origin_of("a-b", "00")]
    with pytest.raises(ValueError, match="cannot contain"):
        origin_of("eu#1", "00")
    with pytest.raises(ValueError, match="hexadecimal"):
        origin_of("eu", "XYZ")


def test_a_new_directory_mints_under_a_fresh_incarnation_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    store = _open(tmp_path / "eu")
    origin = store.origin
    assert region_of(origin) == "eu" and origin != "eu"
    token = _write(store, "a").token
    assert token.vv.get(origin) == 1
    store.close()
    store = _open(tmp_path / "eu")
    try:
        assert store.origin == origin, "an intact directory is the one that minted its events"
        assert _write(store, "b").token.vv.get(origin) == 2
    finally:
        store.close()
    other = _open(tmp_path / "elsewhere")
    try:
        assert other.origin != origin, "every new directory draws its own incarnation"
    finally:
        other.close()


def test_a_copied_or_restored_directory_takes_a_new_incarnation(tmp_path: Path) -> None:
    store = _open(tmp_path / "eu")
    _write(store, "a")
    original = store.origin
    store.close()
    shutil.copytree(tmp_path / "eu", tmp_path / "backup")
    restored = _open(tmp_path / "backup")
    try:
        assert restored.origin != original
        assert restored.context.vv.get(original) == 1, "the old incarnation's events are kept, as any origin's"
        token = _write(restored, "b").token
        assert token.vv.get(restored.origin) == 1 and token.vv.get(original) == 1
    finally:
        restored.close()


def test_rejoin_takes_a_new_incarnation_even_for_an_intact_directory(tmp_path: Path) -> None:
    store = _open(tmp_path / "eu")
    _write(store, "a")
    original = store.origin
    store.close()
    store = _open(tmp_path / "eu", new_incarnation=True)
    try:
        assert store.origin != original
    finally:
        store.close()
    store = _open(tmp_path / "eu")
    try:
        assert store.origin != original, "the new incarnation is persisted before any write"
    finally:
        store.close()


def test_a_directory_from_before_incarnations_keeps_minting_under_its_region(tmp_path: Path) -> None:
    store = _open(tmp_path / "eu")
    _write(store, "a")
    store.close()
    # Make it look like a directory written before incarnations: events minted under "eu", no origin record.
    env = lmdb.open(str(tmp_path / "eu"), max_dbs=8, subdir=True)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        txn.delete(b"origin", db=meta)
        txn.delete(b"origin_file", db=meta)
    env.close()
    store = _open(tmp_path / "eu")
    try:
        assert store.origin == "eu"
    finally:
        store.close()


def test_retire_origin_makes_the_next_batch_mint_under_a_new_incarnation(tmp_path: Path) -> None:
    store = _open(tmp_path / "eu")
    try:
        _write(store, "a")
        first = store.origin
        store.retire_origin("a peer holds more events of it")
        assert store.origin == first, "nothing changes before the next write"
        token = _write(store, "b").token
        assert store.origin != first
        assert token.vv.get(first) == 1 and token.vv.get(store.origin) == 1
        assert [e.origin for e in _raw_log(store)] == [first, store.origin]
    finally:
        store.close()


def test_a_peer_holding_more_of_the_origin_makes_the_next_write_take_a_new_incarnation(tmp_path: Path) -> None:
    store = _open(tmp_path / "eu")
    try:
        _write(store, "a")
        first = store.origin
        assert not store.peer_holds("us", VersionVector({first: 1, "us#1": 9})), "it holds no more than this"
        _write(store, "b")
        assert store.origin == first
        assert store.peer_holds("us", VersionVector({first: 5})), "an older copy of the directory"
        _write(store, "c")
        assert store.origin != first
    finally:
        store.close()


def test_events_minted_twice_under_one_id_are_counted_and_not_taken_for_duplicates(tmp_path: Path) -> None:
    """The second line of defence: two directories that minted different events under one origin."""
    original = _open(tmp_path / "eu")
    _write(original, "base")
    original.close()
    shutil.copytree(tmp_path / "eu", tmp_path / "twin")
    # Make the copy pass for the original, as a copy written over the original file in place would:
    # the file identity check cannot tell them apart (a peer's hello would, when one is reachable).
    env = lmdb.open(str(tmp_path / "twin"), max_dbs=8, subdir=True)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        txn.put(b"origin_file", str(os.stat(tmp_path / "twin" / "data.mdb").st_ino).encode(), db=meta)
    env.close()
    original, twin = _open(tmp_path / "eu"), _open(tmp_path / "twin")
    try:
        assert twin.origin == original.origin
        _write(original, "x1")
        _write(twin, "y1")  # the same id as x1, another event
        peer = _open(tmp_path / "us", "us")
        try:
            clock = HybridLogicalClock(FakeClock(1_000))
            peer.apply_raw(_raw_log(original), "eu", clock)
            assert peer.conflicting_events == 0
            peer.apply_raw(_raw_log(twin), "eu", clock)
            assert peer.conflicting_events == 1, "y1 carries x1's id: reported, not skipped silently"
        finally:
            peer.close()
    finally:
        original.close()
        twin.close()


def test_an_increment_after_a_lost_disk_counts_beside_the_old_incarnations_share(tmp_path: Path) -> None:
    store = _open(tmp_path / "eu")
    clock = HybridLogicalClock(FakeClock(1_000))
    store.write_batch([WriteRequest([Increment("n", 5)])], clock)
    old = _raw_log(store)
    store.close()
    shutil.rmtree(tmp_path / "eu")
    store = _open(tmp_path / "eu")  # empty again: a lost disk
    try:
        store.write_batch([WriteRequest([Increment("n", 2)])], clock)
        store.apply_raw(old, "us", clock)  # a peer sends the old incarnation's events back
        state = store.get("n")
        assert state is not None
        read = state.read()
        assert read is not None and read.value == 7
    finally:
        store.close()


def test_regression_a_new_incarnation_is_the_stores_only_once_its_batch_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From review: a batch that took a new origin and then aborted (a full map) left memory and disk apart.

    The retry minted under the new origin while the directory still recorded
    the retired one, so the next start would have minted the retired
    origin's ids again.
    """
    store = _open(tmp_path / "eu")
    try:
        _write(store, "a")
        retired = store.origin
        store.retire_origin("a peer holds more events of it")
        real = LmdbStore._next_seq
        calls = itertools.count()

        def full_once(self: LmdbStore, txn: lmdb.Transaction) -> int:
            if next(calls) == 0:
                raise lmdb.MapFullError("the map is full")
            return real(self, txn)

        monkeypatch.setattr(LmdbStore, "_next_seq", full_once)
        token = _write(store, "b").token
        minted = store.origin
        assert minted != retired and token.vv.get(minted) == 1
    finally:
        store.close()
    store = _open(tmp_path / "eu")
    try:
        assert store.origin == minted, "the directory records the origin its last batch minted under"
    finally:
        store.close()
