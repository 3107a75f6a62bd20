"""The write path's direct register writes give exactly what the general path gives.

``LocalWrites._write_registers`` writes a request of register writes without
building key states and deltas (``encode_register_write(s)``); the general
path (``_write_general``) applies any request through the CRDT objects. The
property runs the same batches through a store that takes the direct path
where it can and one that never does, and compares every database byte for
byte: records, delta log, log index, idempotency records, metadata. Tokens and
failures must match too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.crdt import (
    CausalContext,
    Dot,
    HybridLogicalClock,
    KeyState,
    Register,
    StoreMap,
    Timestamp,
    ValueType,
    Version,
    encode,
    encode_register_write,
    encode_register_writes,
)
from crdtstore.operations import AddMembers, DeleteKey, Increment, RemoveMembers, SetRegister
from crdtstore.storage import Applied, Failed, LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.strategies import examples

_FILE_IDENTITY = (b"meta", b"origin_file")
_DATABASES = (
    b"data",
    b"members",
    b"log",
    b"log_index",
    b"incoming",
    b"meta",
    b"idem",
    b"idem_time",
    b"feed",
    b"feed_marks",
)


class GeneralOnly(LmdbStore):
    """A store that never takes the direct path: the reference."""

    def _write_registers(self, *args: Any, **kwargs: Any) -> None:
        return None


class Counting(LmdbStore):
    """A store that counts the requests the direct path wrote."""

    direct = 0

    def _write_registers(self, *args: Any, **kwargs: Any) -> Any:
        written = super()._write_registers(*args, **kwargs)
        self.direct += written is not None
        return written


class Pair:
    def __init__(self, root: Path, **options: Any) -> None:
        self.wall = FakeClock(1_700_000_000_000)
        self.stores: list[LmdbStore] = []
        self.clocks: list[HybridLogicalClock] = []
        for cls, name in ((Counting, "direct"), (GeneralOnly, "general")):
            config = StorageConfig(root / name, "eu", StorageOptions(sync=False, **options))
            store = cls(config, wall_ms=self.wall, incarnations=lambda: "0" * 12)
            self.stores.append(store)
            self.clocks.append(HybridLogicalClock(self.wall, floor=store.hlc_mark))

    @property
    def direct(self) -> int:
        store = self.stores[0]
        assert isinstance(store, Counting)
        return store.direct

    def write(self, requests: Sequence[WriteRequest]) -> list[object]:
        """The batch's results, the same from both stores."""
        direct, general = (
            store.write_batch(list(requests), clock) for store, clock in zip(self.stores, self.clocks, strict=True)
        )
        assert [_result(r) for r in direct] == [_result(r) for r in general]
        return [_result(r) for r in direct]

    def assert_same(self) -> None:
        assert _dump(self.stores[0]) == _dump(self.stores[1])

    def close(self) -> None:
        for store in self.stores:
            store.close()


def _result(result: Applied | Failed) -> object:
    if isinstance(result, Applied):
        return ("applied", encode(result.token), result.replayed)
    return ("failed", type(result.error).__name__, str(result.error))


def _dump(store: LmdbStore) -> dict[bytes, list[tuple[bytes, bytes]]]:
    out: dict[bytes, list[tuple[bytes, bytes]]] = {}
    with store.env.begin() as txn:
        for name in _DATABASES:
            db = store.env.open_db(name, txn=txn)
            # The directory's file identity (``origin_file``) is the one thing two stores never share.
            out[name] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db) if (name, bytes(k)) != _FILE_IDENTITY]
    return out


def _pair(**options: Any) -> Iterator[Pair]:
    with tempfile.TemporaryDirectory() as tmp:
        pair = Pair(Path(tmp), **options)
        try:
            yield pair
        finally:
            pair.close()


_KEYS = st.sampled_from(["a", "b", "c", "d", "k" * 600])  # one long key: its record carries the key
_VALUES = st.binary(max_size=40)
_SET = st.builds(SetRegister, _KEYS, _VALUES)
_OTHER = st.one_of(
    st.builds(Increment, _KEYS, st.integers(-5, 5)),
    st.builds(AddMembers, _KEYS, st.lists(st.sampled_from("xyz"), min_size=1, max_size=2).map(tuple)),
    st.builds(RemoveMembers, _KEYS, st.lists(st.sampled_from("xyz"), min_size=1, max_size=2).map(tuple)),
    st.builds(DeleteKey, _KEYS),
)
# Mostly requests of register writes alone (the direct path's, or its refusals: a key written twice, a key
# that holds a counter or a set), some with other operations (the general path's).
_OPS = st.one_of(st.lists(_SET, min_size=1, max_size=4), st.lists(st.one_of(_SET, _OTHER), min_size=1, max_size=4))
_REQUEST = st.builds(WriteRequest, _OPS, st.sampled_from([b"", b"", b"i1", b"i2"]))


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.lists(_REQUEST, min_size=1, max_size=4), min_size=1, max_size=8), st.data())
def test_direct_register_writes_store_what_the_general_path_stores(
    batches: list[list[WriteRequest]], data: st.DataObject
) -> None:
    for pair in _pair():
        for batch in batches:
            pair.wall.advance(data.draw(st.sampled_from([0, 0, 1, 1000]), label="ms between batches"))
            pair.write(batch)
        pair.assert_same()


def test_direct_path_is_taken_for_new_keys_and_for_keys_holding_a_register() -> None:
    for pair in _pair():
        pair.write([WriteRequest([SetRegister("a", b"1"), SetRegister("b", b"1")])])
        pair.write([WriteRequest([SetRegister("a", b"2")]), WriteRequest([SetRegister("a", b"3")], b"idem")])
        assert pair.direct == 3
        # Not direct: a key twice in one request, a key that holds a counter.
        pair.write([WriteRequest([SetRegister("c", b"1"), SetRegister("c", b"2")])])
        pair.write([WriteRequest([Increment("d", 1)]), WriteRequest([SetRegister("d", b"x")])])
        assert pair.direct == 3
        pair.assert_same()
        for store in pair.stores:
            state = store.get("a")
            assert state is not None
            read = state.read()
            assert read is not None and read.value == b"3"


def test_too_large_requests_are_refused_alike_and_write_nothing() -> None:
    for pair in _pair(key_state_bytes_max=120, log_entry_bytes_max=400):
        (state,) = pair.write([WriteRequest([SetRegister("a", b"x" * 100)])])
        (change,) = pair.write([WriteRequest([SetRegister(f"k{i}", b"y" * 20) for i in range(8)])])
        assert state[:2] == change[:2] == ("failed", "KeyTooLarge")  # type: ignore[index]
        assert "key_state_bytes_max" in state[2] and "log_entry_bytes_max" in change[2]  # type: ignore[index]
        (fits,) = pair.write([WriteRequest([SetRegister("a", b"fits")])])
        assert fits[0] == "applied"  # type: ignore[index]
        assert pair.direct == 3  # the direct path refused the first two itself
        pair.assert_same()


@given(
    st.lists(
        st.tuples(st.text(max_size=8), st.sampled_from(["eu", "us", "ap"]), st.integers(1, 2**64 - 1)),
        min_size=1,
        max_size=6,
        unique_by=lambda w: w[0],
    ),
    st.lists(st.tuples(st.sampled_from(["eu", "us"]), st.integers(1, 2**64 - 1)), max_size=4),
    st.integers(0, 2**48),
    st.integers(0, 2**32),
)
def test_register_write_encodings_are_the_objects_encodings(
    writes: list[tuple[str, str, int]], superseded: list[tuple[str, int]], wall: int, logical: int
) -> None:
    ts = Timestamp(wall, logical)
    direct = [(key, Dot(region, counter), ts, key.encode()) for key, region, counter in writes]
    for _, dot, _, value in direct:
        state = KeyState({ValueType.REGISTER: Register({dot: Version(ts, value)})})
        assert encode_register_write(dot, ts, value) == encode(state)
    ctx = CausalContext.from_dots([dot for _, dot, _, _ in direct] + [Dot(r, c) for r, c in superseded])
    delta = StoreMap(
        {key: KeyState({ValueType.REGISTER: Register({dot: Version(ts, value)})}) for key, dot, _, value in direct},
        ctx,
    )
    assert encode_register_writes(direct, ctx) == encode(delta)


def test_every_database_is_compared() -> None:
    for pair in _pair():
        with pair.stores[0].env.begin() as txn:
            names = {bytes(k) for k, _ in txn.cursor()}
        assert names == set(_DATABASES)


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(st.lists(_REQUEST, min_size=1, max_size=4), min_size=1, max_size=6), st.integers(1, 5))
def test_a_peers_register_writes_are_stored_as_the_join_stores_them(
    batches: list[list[WriteRequest]], per_message: int
) -> None:
    """``remote._new_register_write`` (a new key's one register write, stored directly) against the join."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wall = FakeClock(1_700_000_000_000)
        source = LmdbStore(StorageConfig(root / "us", "us", StorageOptions(sync=False)), wall_ms=wall)
        receivers = [
            LmdbStore(
                StorageConfig(root / name, "eu", StorageOptions(sync=False)),
                wall_ms=wall,
                incarnations=lambda: "0" * 12,
            )
            for name in ("direct", "joined")
        ]
        try:
            clock = HybridLogicalClock(wall, floor=source.hlc_mark)
            for batch in batches:
                source.write_batch(batch, clock)
            entries = list(source.log_entries())
            for i in range(0, len(entries), per_message):
                receivers[0].apply_remote(entries[i : i + per_message], source="us")
                with mock.patch("crdtstore.storage.remote._new_register_write", return_value=False):
                    receivers[1].apply_remote(entries[i : i + per_message], source="us")
            assert _dump(receivers[0]) == _dump(receivers[1])
        finally:
            for store in (source, *receivers):
                store.close()
