"""A set's members as records of their own: a write costs what it names, and reads see the whole set.

``crdtstore.storage.records``: the key's record holds the set's id and its
member count; each member is a record under that id. These tests look at the
records themselves, and at everything a whole-state reader sees through them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.crdt import AWSet, HybridLogicalClock, KeyState, StoreMap, TypeMismatch, ValueType, encode
from crdtstore.operations import (
    AddMembers,
    DeleteKey,
    Increment,
    Operation,
    RemoveMembers,
    SetRegister,
    apply_operations,
)
from crdtstore.storage import Applied, Failed, KeyTooLarge, LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.storage.environment import _META_SCHEMA
from crdtstore.storage.keys import lmdb_key
from crdtstore.storage.records import KeyRecord, SetRecords, decode_record
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.strategies import examples


class Store:
    def __init__(self, path: Path, region: str = "eu") -> None:
        self.path = path
        self.region = region
        self.open()

    def open(self) -> None:
        self.store = LmdbStore(StorageConfig(self.path, self.region, StorageOptions(sync=False)))
        self.clock = HybridLogicalClock(FakeClock(1_700_000_000_000), floor=self.store.hlc_mark)

    def write(self, *ops: Operation) -> None:
        (result,) = self.store.write_batch([WriteRequest(list(ops))], self.clock)
        assert isinstance(result, Applied), result

    def member_records(self) -> int:
        with self.store.env.begin() as txn:
            return int(txn.stat(self.store.members)["entries"])

    def key_record(self, key: str) -> bytes:
        with self.store.env.begin() as txn:
            raw = txn.get(lmdb_key(key), db=self.store.data)
            assert raw is not None
            return bytes(raw)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "eu")
    yield s
    s.store.close()


def test_each_member_is_a_record_and_the_keys_record_stays_small(db: Store) -> None:
    db.write(AddMembers("s", tuple(f"m{i:05d}" for i in range(5_000))))
    small = len(db.key_record("s"))
    assert db.member_records() == 5_000
    db.write(AddMembers("s", ("one-more",)))
    assert db.member_records() == 5_001
    assert len(db.key_record("s")) == small, "an add rewrites the key's record, not the set"
    record = decode_record(b"s", db.key_record("s"))
    assert record.members == 5_001
    db.write(RemoveMembers("s", ("m00000", "never-there")))
    assert db.member_records() == 5_000
    assert decode_record(b"s", db.key_record("s")).members == 5_000


def test_reads_see_the_whole_set_and_membership_reads_only_what_they_ask(db: Store) -> None:
    members = [f"m{i:04d}" for i in range(1_200)] + ["ä", "𝄞", "x" * 1_000, "x" * 999 + "y"]
    db.write(AddMembers("s", tuple(members)))
    state = db.store.get("s")
    assert state is not None
    assert state.read().value == frozenset(members)  # type: ignore[union-attr]
    assert db.store.contains("s", ["m0001", "nope", "x" * 1_000, "x" * 999 + "y"]) == [True, False, True, True]
    pages, after = [], ""
    while True:
        page, more = db.store.set_members("s", after, 100)
        pages.extend(page)
        if not more:
            break
        after = page[-1]
    assert sorted(pages) == sorted(members)
    short = [m for m in pages if len(m.encode()) <= 440]
    assert short == sorted(short), "members come in code point order (but for very long ones)"
    assert db.store.contains("missing", ["a"]) == [False]
    assert db.store.set_members("missing") == ([], False)


def test_membership_of_another_type_is_refused(db: Store) -> None:
    db.write(Increment("n", 1))
    with pytest.raises(TypeMismatch):
        db.store.contains("n", ["a"])
    with pytest.raises(TypeMismatch):
        db.store.set_members("n")


def test_a_delete_drops_every_member_record(db: Store) -> None:
    db.write(AddMembers("s", tuple(f"m{i}" for i in range(300))), SetRegister("r", b"v"))
    db.write(DeleteKey("s"))
    assert db.member_records() == 0
    assert db.store.get("s") is None
    db.write(AddMembers("s", ("again",)))
    assert db.store.contains("s", ["again", "m1"]) == [True, False]


def test_a_delete_too_large_for_one_log_entry_says_how_to_empty_the_set(tmp_path: Path) -> None:
    store = LmdbStore(StorageConfig(tmp_path / "eu", "eu", StorageOptions(sync=False, log_entry_bytes_max=20_000)))
    clock = HybridLogicalClock(FakeClock(1_700_000_000_000), floor=store.hlc_mark)
    try:
        for i in range(0, 3_000, 500):
            store.write_batch([WriteRequest([AddMembers("s", tuple(f"m{n:05d}" for n in range(i, i + 500)))])], clock)
        (refused,) = store.write_batch([WriteRequest([DeleteKey("s")])], clock)
        assert not isinstance(refused, Applied)
        assert "remove the members of 's' in batches first (srem), then delete it" in str(refused.error)
        for i in range(0, 3_000, 500):
            store.write_batch(
                [WriteRequest([RemoveMembers("s", tuple(f"m{n:05d}" for n in range(i, i + 500)))])], clock
            )
        (deleted,) = store.write_batch([WriteRequest([DeleteKey("s")])], clock)
        assert isinstance(deleted, Applied)
    finally:
        store.close()


def test_a_delete_of_a_large_set_is_refused_before_the_set_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set past the bound is refused from its member names alone, another type's write from one member:
    memory must not grow with the set."""
    store = LmdbStore(StorageConfig(tmp_path / "eu", "eu", StorageOptions(sync=False, log_entry_bytes_max=90_000)))
    clock = HybridLogicalClock(FakeClock(1_700_000_000_000), floor=store.hlc_mark)
    try:
        for i in range(0, 12_000, 4_000):
            store.write_batch([WriteRequest([AddMembers("s", tuple(f"m{n:05d}" for n in range(i, i + 4_000)))])], clock)

        partial = SetRecords.assemble

        def assemble(self: SetRecords, record: KeyRecord, members: Collection[str] | None = None) -> KeyState:
            assert members is not None, "the set was read whole"
            return partial(self, record, members)

        monkeypatch.setattr(SetRecords, "assemble", assemble)
        (refused,) = store.write_batch([WriteRequest([DeleteKey("s")])], clock)
        assert isinstance(refused, Failed) and isinstance(refused.error, KeyTooLarge)
        assert "change is at least " in str(refused.error), refused.error
        assert int(str(refused.error).split("at least ")[1].split()[0]) > 90_000
        assert "remove the members of 's' in batches first (srem), then delete it" in str(refused.error)
        # Another type's write needs the set's presence, not its members: one member read shows it.
        (mismatch,) = store.write_batch([WriteRequest([SetRegister("s", b"v"), AddMembers("s", ("new",))])], clock)
        assert isinstance(mismatch, Failed) and isinstance(mismatch.error, TypeMismatch)
        (added,) = store.write_batch([WriteRequest([AddMembers("s", ("new",)), Increment("other", 1)])], clock)
        assert isinstance(added, Applied)
    finally:
        store.close()


def test_an_operation_of_another_type_on_a_set_is_refused_whatever_members_it_names(db: Store) -> None:
    db.write(AddMembers("s", ("a",)))
    (result,) = db.store.write_batch([WriteRequest([SetRegister("s", b"v")])], db.clock)
    assert not isinstance(result, Applied)
    assert isinstance(result.error, TypeMismatch)


def test_a_directory_of_schema_2_moves_its_sets_members_out_when_opened(db: Store) -> None:
    # Schema 2 kept the whole set in the key's record: write such a directory by hand.
    db.write(AddMembers("s", tuple(f"m{i}" for i in range(50))), Increment("n", 3))
    whole = db.store.get("s")
    assert whole is not None
    with db.store.env.begin(write=True) as txn:
        txn.drop(db.store.members, delete=False)
        txn.put(lmdb_key("s"), b"\x00" + encode(whole), db=db.store.data)
        txn.put(_META_SCHEMA, b"2", db=db.store.meta)
    db.store.close()
    db.open()
    assert db.member_records() == 50
    assert db.store.get("s") == whole
    assert db.store.contains("s", ["m7", "m50"]) == [True, False]
    with db.store.env.begin() as txn:
        assert txn.get(_META_SCHEMA, db=db.store.meta) == b"3"


def test_a_peers_delta_touches_the_members_it_names(tmp_path: Path) -> None:
    a, b = Store(tmp_path / "a", "eu"), Store(tmp_path / "b", "us")
    try:
        a.write(AddMembers("s", tuple(f"m{i}" for i in range(2_000))))
        entries = a.store.log_since(b.store.context.vv, 1 << 30).entries
        b.store.apply_raw(entries, "eu", b.clock)
        assert b.member_records() == 2_000
        before = a.store.context.vv
        a.write(RemoveMembers("s", ("m1",)), AddMembers("s", ("new",)))
        b.store.apply_raw(a.store.log_since(before, 1 << 30).entries, "eu", b.clock)
        assert b.member_records() == 2_000
        assert b.store.get("s") == a.store.get("s")
        assert b.store.bucket_digests() == a.store.bucket_digests()
    finally:
        a.store.close()
        b.store.close()


@pytest.mark.parametrize(
    "removed",
    [("a",), ("a", "c"), ("a", "c", "d")],
    ids=["its-first-member", "with-names-it-does-not-hold", "with-more-names-than-members"],
)
def test_regression_a_batch_that_removes_the_member_sampled_for_the_type_cannot_change_the_type(
    db: Store, removed: tuple[str, ...]
) -> None:
    """Found by Hypothesis (test_member_records_agree_with_the_state_the_operations_make).

    A write reads a set for the members it names plus one more that stands for
    the rest, so that the key's type reads as it would whole. That one was the
    set's first member: a batch that removed it saw an empty set, and an
    increment in the same batch made a set of ``{b}`` a counter too.
    """
    db.write(AddMembers("t", ("a", "b")))
    (result,) = db.store.write_batch([WriteRequest([RemoveMembers("t", removed), Increment("t", 1)])], db.clock)
    assert isinstance(result, Failed) and isinstance(result.error, TypeMismatch), result
    state = db.store.get("t")
    assert state is not None and set(state.slots) == {ValueType.SET}
    assert isinstance(set_of := state.slots[ValueType.SET], AWSet) and set(set_of.entries) == {"a", "b"}


ops = st.one_of(
    st.builds(
        AddMembers, st.sampled_from(["s", "t"]), st.lists(st.sampled_from("abcdef"), min_size=1, max_size=3).map(tuple)
    ),
    st.builds(
        RemoveMembers,
        st.sampled_from(["s", "t"]),
        st.lists(st.sampled_from("abcdef"), min_size=1, max_size=3).map(tuple),
    ),
    st.builds(DeleteKey, st.sampled_from(["s", "t"])),
    st.builds(Increment, st.just("t"), st.integers(1, 3)),
)


@settings(max_examples=examples(60), deadline=None)
@given(st.lists(st.lists(ops, min_size=1, max_size=4), max_size=12))
def test_member_records_agree_with_the_state_the_operations_make(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[Operation]]
) -> None:
    """The records, read back, are what the pure operations compute; counts match the live members."""

    db = Store(tmp_path_factory.mktemp("records") / "eu")
    try:
        model = StoreMap({}, db.store.context)
        for batch in batches:
            try:
                expected, _ = apply_operations(model, batch, db.store.origin, HybridLogicalClock(FakeClock(1)))
            except TypeMismatch:
                (result,) = db.store.write_batch([WriteRequest(batch)], db.clock)
                assert not isinstance(result, Applied)
                continue
            db.write(*batch)
            model = expected
        for key in ("s", "t"):
            assert db.store.get(key) == model.entries.get(key), key
        sets = [s.slots[ValueType.SET] for s in model.entries.values() if ValueType.SET in s.slots]
        live = sum(len(aw.entries) for aw in sets if isinstance(aw, AWSet))
        assert db.member_records() == live
    finally:
        db.store.close()
