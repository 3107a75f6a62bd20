"""The change feed's index (``crdtstore.storage.feed``): what is recorded, and resuming anywhere from a token.

The property at the heart of issue 20: a consumer that reads one region's
feed for a while and then resumes, from its token, at another region (whose
order of changes differs) receives every change exactly once. The reader here
is the rule every watch stream follows (``feed_start``, ``feed_read``,
``pass_record``); the end-to-end tests (``test_watch_e2e``) run it through
``KV.Watch``.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.crdt import HybridLogicalClock, VersionVector
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.replica.wire import TransferItem
from crdtstore.storage import Applied, LmdbStore, StorageConfig, WriteRequest, feed
from crdtstore.storage.feed import KIND_NAMES, changes_of, must_restart, pass_record
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.strategies import examples

NAMES = ("eu", "us", "ap")


class Region:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.clock_ms = FakeClock(1_000)
        self.store = LmdbStore(StorageConfig(root / name, name), wall_ms=self.clock_ms)
        self.clock = HybridLogicalClock(self.clock_ms, floor=self.store.hlc_mark)

    def write(self, *ops: Operation) -> bool:
        (result,) = self.store.write_batch([WriteRequest(list(ops))], self.clock)
        return isinstance(result, Applied)

    def pull(self, other: Region) -> None:
        """Apply every entry of ``other``'s log that this region lacks (its log is in causal order)."""
        self.store.apply_remote(list(other.store.log_entries()), source=other.name)


class Consumer:
    """A watch stream's rule, run by hand: where to start from a token, then pass records in order."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.token = VersionVector()
        self.delivered: Counter[tuple[str, int, str]] = Counter()  # (origin, the event's counter, key)
        self.dots: Counter[tuple[str, int]] = Counter()  # each event's dot (a repair's have none)
        self.changes: set[tuple[str, int, str]] = set()  # (origin, the change's last event, key)

    def wanted(self, key: str) -> bool:
        return key.startswith(self.prefix)

    def follow(self, store: LmdbStore, records_max: int | None = None) -> bool:
        """Read ``store``'s feed from this consumer's token; False if the token is expired there."""
        position = store.feed_start(self.token)
        if position is None:
            return False
        read = 0
        while True:
            page = store.feed_read(position, 3, 10)
            if not self.token.dominates(page.floor):
                return False  # records it had not passed were trimmed
            for record in page.records:
                if records_max is not None and read == records_max:
                    return True
                if must_restart(record, self.token):
                    return False  # a repair this token is ahead of: start again from a snapshot
                read += 1
                position = record.seq
                keys, self.token = pass_record(record, self.token, self.wanted)
                for key, _, counter in keys:
                    assert record.first <= counter <= record.last if record.origin else counter == 0
                    self.delivered[(record.origin, counter, key)] += 1
                    self.changes.add((record.origin, record.last, key))
                    if record.origin:
                        self.dots[(record.origin, counter)] += 1
            if page.at_end:
                self.token = self.token.join(page.reached)
                return True


def expected_events(store: LmdbStore, prefix: str) -> set[tuple[str, int, str]]:
    return {
        (entry.origin, entry.last, key)
        for entry in store.log_entries()
        for key, _ in changes_of(entry.delta)
        if key.startswith(prefix)
    }


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[dict[str, Region]]:
    made = {name: Region(tmp_path, name) for name in NAMES}
    yield made
    for region in made.values():
        region.store.close()


def _records(store: LmdbStore) -> list[tuple[str, list[tuple[str, str]]]]:
    page = store.feed_read(0, 1000, 10_000)
    return [
        (r.origin, [(k, "+".join(name for bit, name in KIND_NAMES.items() if bits & bit)) for k, bits in r.changes])
        for r in page.records
    ]


def test_each_change_is_recorded_with_what_it_did_to_each_key(regions: dict[str, Region]) -> None:
    eu, us = regions["eu"], regions["us"]
    assert eu.write(SetRegister("r", b"1"), Increment("n", 2), AddMembers("s", ("a", "b")))
    assert eu.write(RemoveMembers("s", ("a",)), AddMembers("s", ("c",)))
    assert eu.write(DeleteKey("r"), DeleteKey("n"))
    assert eu.write(SetRegister("r", b"2"), SetRegister("q", b"3"))  # the direct path of register writes
    expected = (
        [
            ("n", "incr"),
            ("r", "set"),
            ("s", "add"),
        ],
        [("s", "add+remove")],
        [("n", "delete"), ("r", "delete")],
        [("q", "set"), ("r", "set")],
    )
    assert [changes for _, changes in _records(eu.store)] == list(expected)
    # A peer records the same changes, read from the same deltas.
    us.pull(eu)
    assert _records(us.store) == _records(eu.store)
    assert {origin for origin, _ in _records(us.store)} == {eu.store.origin}


def test_each_event_of_a_request_has_a_dot_of_its_own_the_last_key_the_requests(
    regions: dict[str, Region],
) -> None:
    """Issue 20: "each event's dot is also a deduplication key": the keys of one request may not share one."""
    eu, us = regions["eu"], regions["us"]
    assert eu.write(SetRegister("r", b"1"), Increment("n", 2), AddMembers("s", ("a", "b")), SetRegister("q", b"2"))
    assert eu.write(DeleteKey("r"), DeleteKey("n"))
    us.pull(eu)
    for store in (eu.store, us.store):
        records = store.feed_read(0, 1000, 10_000).records
        dots = [
            [(key, counter) for key, _, counter in pass_record(r, VersionVector(), lambda _: True)[0]] for r in records
        ]
        first, _ = records
        # Four operations, five events (two members added); the keys take the last four, in key order.
        assert (first.first, first.last) == (1, 5)
        assert dots[0] == [("n", 2), ("q", 3), ("r", 4), ("s", 5)]
        assert dots[1] == [("n", 6), ("r", 7)]
        # A stream of one prefix gives a key the same dot as one of every key.
        only_r = pass_record(first, VersionVector(), lambda key: key == "r")[0]
        assert only_r == [("r", 1, 4)]


def test_a_refused_request_records_nothing(regions: dict[str, Region]) -> None:
    eu = regions["eu"]
    assert eu.write(SetRegister("r", b"1"))
    assert not eu.write(Increment("r", 1))  # r holds a register
    assert len(_records(eu.store)) == 1


def test_a_state_transfer_records_each_changed_key_as_a_whole_state_change(tmp_path: Path) -> None:
    with ExitStack() as stack:
        eu, us = Region(tmp_path, "eu"), Region(tmp_path, "us")
        stack.callback(eu.store.close)
        stack.callback(us.store.close)
        assert eu.write(SetRegister("a", b"1"), AddMembers("s", ("x",)))
        assert eu.write(SetRegister("b", b"2"))
        assert _transfer(eu, us, tmp_path / "spool") == 3
        (record,) = us.store.feed_read(0, 10, 100).records
        assert record.origin == "" and record.brought == eu.store.context.vv
        assert sorted(record.changes) == [("a", 32), ("b", 32), ("s", 32)]
        consumer = Consumer("")
        assert consumer.follow(us.store)
        assert set(consumer.delivered) == {("", 0, "a"), ("", 0, "b"), ("", 0, "s")}
        # A consumer whose token already covers what the transfer brought skips it.
        ahead = Consumer("")
        ahead.token = eu.store.context.vv
        assert ahead.follow(us.store)
        assert not ahead.delivered


def _transfer(sender: Region, receiver: Region, spool: Path) -> int:
    """A full state transfer from ``sender`` to ``receiver``, as a repair makes one; the keys it changed."""
    context, _, _ = sender.store.spool_snapshot(spool)
    with spool.open("rb") as f:
        items: list[TransferItem] = [(k, v, part) for k, v, part in msgpack.Unpacker(f, raw=False)]
    receiver.store.stage_snapshot(sender.name, 1, items)
    return receiver.store.finish_snapshot(sender.name, 1, context)


def test_regression_a_consumer_ahead_of_a_region_before_its_repair_starts_again_there(tmp_path: Path) -> None:
    """Found by the simulator's feed watcher with auditing on: the repair deleted a key the region never held."""
    with ExitStack() as stack:
        eu, us = Region(tmp_path, "eu"), Region(tmp_path, "us")
        stack.callback(eu.store.close)
        stack.callback(us.store.close)
        assert eu.write(SetRegister("k", b"v"))
        consumer = Consumer("")
        assert consumer.follow(eu.store)
        assert set(consumer.delivered) == {(eu.store.origin, 1, "k")}  # it holds k
        assert eu.write(DeleteKey("k"))
        # us never held k; the repair brings the delete, and changes no key here.
        assert _transfer(eu, us, tmp_path / "spool") == 0
        (record,) = us.store.feed_read(0, 10, 100).records
        assert record.brought == eu.store.context.vv and not record.changes
        # The consumer resumes in us from its token: it cannot be told which keys went, so it starts again.
        assert not consumer.follow(us.store)
        # One that held nothing more than us did before the repair passes it as it did before.
        fresh = Consumer("")
        assert fresh.follow(us.store)
        assert fresh.token == us.store.context.vv


def test_regression_a_repair_of_more_than_a_records_keys_reaches_a_watcher_whole(tmp_path: Path) -> None:
    """Found in review: every record of a large transfer carried its events, so the first covered the rest."""
    with ExitStack() as stack:
        eu, us = Region(tmp_path, "eu"), Region(tmp_path, "us")
        stack.callback(eu.store.close)
        stack.callback(us.store.close)
        for i in range(25):
            assert eu.write(*[SetRegister(f"p/{i:02}-{j:03}", b"v") for j in range(100)])
        # A consumer at the end of us's feed, before the repair (a mark is due on the transfer's later records).
        for i in range(63):
            assert us.write(SetRegister(f"q/{i}", b"v"))
        consumer = Consumer("p/")
        assert consumer.follow(us.store)
        assert _transfer(eu, us, tmp_path / "spool") == 2500
        records = us.store.feed_read(63, 10, 10**6).records
        assert [(len(r.changes), r.continued) for r in records] == [(1000, True), (1000, True), (500, False)]
        # A stream reading on, and one that starts again from the same token: the whole transfer each time.
        live = Consumer("p/")
        live.token = consumer.token
        assert consumer.follow(us.store)
        assert len(consumer.delivered) == 2500
        assert live.follow(us.store)
        assert len(live.delivered) == 2500
        assert consumer.token == live.token == us.store.context.vv


def test_trimming_makes_old_tokens_expired_and_keeps_newer_ones(regions: dict[str, Region]) -> None:
    eu = regions["eu"]
    for i in range(5):
        eu.clock_ms.advance(1)
        assert eu.write(SetRegister(f"k{i}", b"v"))
    early = Consumer("")
    assert early.follow(eu.store, records_max=2)
    late = Consumer("")
    assert late.follow(eu.store, records_max=4)
    eu.clock_ms.advance(60_000)
    assert eu.write(SetRegister("k5", b"v"))
    # The first three records are older than the cut-off; the rest are kept.
    cutoff = eu.store.feed_read(3, 1, 10).records[0].applied_ms
    assert eu.store.trim_feed(cutoff, 1 << 30) == 3
    assert eu.store.feed_floor() == VersionVector({eu.store.origin: 3})
    assert not early.follow(eu.store), "a token that lacks trimmed changes is expired"
    assert late.follow(eu.store)
    assert sum(late.delivered.values()) == 6 and max(late.delivered.values()) == 1
    # By size: everything but the newest record goes once the bound is below one page; numbers go on from it.
    assert eu.store.trim_feed(0, 1) == 2
    assert eu.store.feed_stats()[0] == 1
    assert eu.store.feed_floor() == VersionVector({eu.store.origin: 5})
    assert late.follow(eu.store)
    assert eu.write(SetRegister("k6", b"v"))
    (record,) = eu.store.feed_read(6, 10, 10).records
    assert record.seq == 7
    assert late.follow(eu.store)
    assert late.delivered[(eu.store.origin, 7, "k6")] == 1 and sum(late.delivered.values()) == 7


def test_a_directory_from_before_the_feed_starts_it_at_its_vector(tmp_path: Path) -> None:
    eu = Region(tmp_path, "eu")
    assert eu.write(SetRegister("a", b"1"))
    with eu.store.env.begin(write=True) as txn:  # as a directory written before the feed existed
        txn.drop(eu.store.feed, delete=False)
        txn.drop(eu.store.feed_marks, delete=False)
        txn.delete(b"feed_floor", db=eu.store.meta)
    eu.store.close()
    reopened = LmdbStore(StorageConfig(tmp_path / "eu", "eu"))
    try:
        assert reopened.feed_floor() == reopened.context.vv
        assert reopened.feed_start(VersionVector()) is None  # the change before the feed is not in it
        assert reopened.feed_start(reopened.context.vv) == 0
    finally:
        reopened.close()


_OPS = st.one_of(
    st.builds(SetRegister, st.sampled_from(["p/r", "q/r"]), st.binary(min_size=1, max_size=3)),
    st.builds(Increment, st.sampled_from(["p/n", "q/n"]), st.integers(-3, 3)),
    st.builds(AddMembers, st.sampled_from(["p/s", "q/s"]), st.lists(st.sampled_from("abc"), min_size=1, max_size=2)),
    st.builds(RemoveMembers, st.sampled_from(["p/s"]), st.lists(st.sampled_from("abc"), min_size=1, max_size=2)),
    st.builds(DeleteKey, st.sampled_from(["p/r", "p/n", "p/s", "q/s"])),
)
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(NAMES), st.lists(_OPS, min_size=1, max_size=3)),
        st.tuples(st.just("pull"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
        st.tuples(st.just("follow"), st.sampled_from(NAMES), st.integers(0, 6)),
    ),
    max_size=30,
)


@settings(max_examples=examples(100), deadline=None)
@given(_STEPS)
def test_a_consumer_that_moves_between_regions_gets_every_change_exactly_once(
    steps: list[tuple[str, str, object]],
) -> None:
    # A mark every other record (not every 64): resumes start from marks, which must be within the token.
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack, mock.patch.object(feed, "_MARK_EVERY", 2):
        regions = {name: Region(Path(tmp), name) for name in NAMES}
        for region in regions.values():
            stack.callback(region.store.close)
        consumer = Consumer("p/")
        for kind, name, arg in steps:
            region = regions[name]
            if kind == "write":
                assert isinstance(arg, list)
                region.write(*arg)  # a wrong-type operation is refused whole, and records nothing
            elif kind == "pull":
                assert isinstance(arg, str)
                if arg != name:
                    region.pull(regions[arg])
            else:
                assert isinstance(arg, int)
                # Read part of this region's feed (or all of it): a consumer that is killed half-way.
                assert consumer.follow(region.store, records_max=arg or None)
        for _ in range(2):  # everyone gets everything, then the consumer reads its last region to the end
            for a in regions.values():
                for b in regions.values():
                    if a is not b:
                        a.pull(b)
        last = regions[steps[-1][1] if steps else "eu"]
        assert consumer.follow(last.store)
        assert consumer.changes == expected_events(last.store, "p/")
        assert all(n == 1 for n in consumer.delivered.values()), "no event twice"
        assert all(n == 1 for n in consumer.dots.values()), "no dot shared: each event's dot is its own"
        assert len(consumer.delivered) == len(consumer.changes)
        assert consumer.token.dominates(last.store.context.vv)
