"""State transfers of sets larger than ``set_part_members``: in parts, joined member by member, the full join.

A set with more members than ``set_part_members`` travels in parts and is
joined member by member, on the sender's side and on the receiver's; the
result must be what the join of the two whole states gives, whatever the part
sizes on either side, and the digests must stay equal for equal states. The
part sizes here are tiny so that a handful of members exercises every path:
a large set sent to a small one, a small one into a large one, a key only one
side has, concurrent adds and removes, a set beside a register.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.crdt import HybridLogicalClock, StoreMap, encode
from crdtstore.operations import AddMembers, DeleteKey, Operation, RemoveMembers, SetRegister
from crdtstore.storage import Applied, LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.strategies import examples


class Region:
    def __init__(self, root: Path, name: str, part_members: int) -> None:
        self.name = name
        options = StorageOptions(sync=False, set_part_members=part_members)
        self.store = LmdbStore(StorageConfig(root / name, name, options))
        self.clock = HybridLogicalClock(FakeClock(1_000), floor=self.store.hlc_mark)

    def write(self, *ops: Operation) -> None:
        (result,) = self.store.write_batch([WriteRequest(list(ops))], self.clock)
        assert isinstance(result, Applied), result

    def state(self) -> StoreMap:
        entries, _ = self.store.scan("", limit=10_000)
        return StoreMap(dict(entries), self.store.context)


def _transfer(sender: Region, receiver: Region, spool: Path) -> list[tuple[str, int]]:
    """Spool, stage in pages of two items, finish; the (key, part) items that travelled."""
    context, count, digests = sender.store.spool_snapshot(spool)
    assert digests == sender.store.bucket_digests(), "the spool's digests are the store's"
    with spool.open("rb") as f:
        items = [(key, body, part) for key, body, part in msgpack.Unpacker(f, raw=False)]
    assert len({key for key, _, _ in items}) == count
    for i in range(0, len(items), 2):
        receiver.store.stage_snapshot(sender.name, 1, items[i : i + 2])
    receiver.store.finish_snapshot(sender.name, 1, context)
    return [(key, part) for key, _, part in items]


def _pair(eu_parts: int, us_parts: int) -> Iterator[tuple[Region, Region, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        eu, us = Region(root, "eu", eu_parts), Region(root, "us", us_parts)
        try:
            yield eu, us, root / "spool"
        finally:
            eu.store.close()
            us.store.close()


# Two long members share their first 440 bytes: their records sort by hash (``records.member_key``).
_MEMBER = st.sampled_from([f"m{i}" for i in range(12)] + ["x" * 500, "x" * 499 + "y"])
_MEMBERS = st.lists(_MEMBER, min_size=1, max_size=5)
_OPS = st.one_of(
    st.builds(AddMembers, st.sampled_from(["s", "t"]), _MEMBERS.map(tuple)),
    st.builds(RemoveMembers, st.sampled_from(["s", "t"]), _MEMBERS.map(tuple)),
    st.builds(DeleteKey, st.sampled_from(["s", "t"])),
    st.builds(SetRegister, st.just("r"), st.binary(max_size=4)),
)


@settings(max_examples=examples(150), deadline=None)
@given(
    shared=st.lists(_OPS, max_size=6),
    eu_only=st.lists(_OPS, max_size=6),
    us_only=st.lists(_OPS, max_size=6),
    eu_parts=st.integers(1, 4),
    us_parts=st.integers(1, 4),
)
def test_a_transfer_of_large_sets_is_the_full_join(
    shared: list[Operation], eu_only: list[Operation], us_only: list[Operation], eu_parts: int, us_parts: int
) -> None:
    for eu, us, spool in _pair(eu_parts, us_parts):
        for op in shared:
            eu.write(op)
        us.store.apply_remote(list(eu.store.log_entries()), source="eu")
        for op in eu_only:  # what us has not seen: removes of what it holds among them
            eu.write(op)
        for op in us_only:  # and what eu never saw
            us.write(op)
        expected = us.state().join(eu.state())
        _transfer(eu, us, spool)
        after = us.state()
        assert encode(after.context) == encode(expected.context)
        assert {k: encode(s) for k, s in after.entries.items()} == {
            k: encode(s) for k, s in expected.entries.items() if not s.is_bottom()
        }
        # Both directions: eu joins us's state too, and then the two agree, digests included.
        _transfer(us, eu, spool)
        assert us.store.bucket_digests() == eu.store.bucket_digests()
        assert {k: encode(s) for k, s in eu.state().entries.items()} == {
            k: encode(s) for k, s in us.state().entries.items()
        }


def test_a_set_larger_than_a_part_travels_in_parts_of_at_most_that_many_members() -> None:
    for eu, us, spool in _pair(3, 3):
        eu.write(AddMembers("s", tuple(f"m{i:02}" for i in range(10))), SetRegister("r", b"1"))
        items = _transfer(eu, us, spool)
        assert items == [("r", 0), ("s", 1), ("s", 2), ("s", 3), ("s", 4)]
        state = us.store.get("s")
        assert state is not None and state == eu.store.get("s")
        assert us.store.bucket_digests() == eu.store.bucket_digests()


def test_a_large_set_the_sender_removed_goes_here_member_by_member() -> None:
    for eu, us, spool in _pair(2, 2):
        eu.write(AddMembers("s", tuple(f"m{i}" for i in range(9))))
        us.store.apply_remote(list(eu.store.log_entries()), source="eu")
        eu.write(DeleteKey("s"))
        us.write(AddMembers("s", ("concurrent",)))  # eu never saw it: it stays
        _transfer(eu, us, spool)
        state = us.store.get("s")
        assert state is not None
        read = state.read()
        assert read is not None and read.value == frozenset({"concurrent"})


@pytest.mark.parametrize("sizes", [(1, 4096), (4096, 1)])
def test_digests_do_not_depend_on_part_sizes(sizes: tuple[int, int]) -> None:
    for eu, us, spool in _pair(*sizes):
        eu.write(AddMembers("s", tuple(f"m{i}" for i in range(7))), SetRegister("r", b"v"))
        us.store.apply_remote(list(eu.store.log_entries()), source="eu")
        assert us.store.bucket_digests() == eu.store.bucket_digests()
        eu.write(RemoveMembers("s", ("m3",)))
        assert us.store.bucket_digests() != eu.store.bucket_digests()
        _transfer(eu, us, spool)
        assert us.store.bucket_digests() == eu.store.bucket_digests()
