"""Applying other regions' log entries to a store: in order per origin, idempotent, relayable.

This is the storage half of replication (issue 4): regions exchange delta log
entries and must end with identical stores, however entries are duplicated,
and through a third region that relays them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.crdt import HybridLogicalClock, StoreMap, VersionVector, encode
from crdtstore.crdt.origin import region_of
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.storage import (
    Applied,
    LmdbStore,
    LogEntry,
    RemoteOutcome,
    StaleTransfer,
    StorageConfig,
    StorageOptions,
    WriteRequest,
    bucket_of,
)
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.strategies import examples


class Region:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.store = LmdbStore(StorageConfig(root / name, name))
        self.clock = HybridLogicalClock(FakeClock(1_000), floor=self.store.hlc_mark)

    def write(self, *ops: Operation) -> bool:
        """True when applied; False when refused (a wrong-type operation changes nothing)."""
        (result,) = self.store.write_batch([WriteRequest(list(ops))], self.clock)
        return isinstance(result, Applied)

    def log(self, region: str | None = None) -> list[LogEntry]:
        """The log, or the entries that ``region`` minted (under any of its incarnations)."""
        return [e for e in self.store.log_entries() if region is None or region_of(e.origin) == region]

    def snapshot(self) -> tuple[bytes, list[tuple[str, bytes]]]:
        entries, _ = self.store.scan("", limit=10_000)
        return encode(self.store.context), [(k, encode(s)) for k, s in entries]


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[dict[str, Region]]:
    made = {name: Region(tmp_path, name) for name in ("eu", "us", "ap")}
    yield made
    for region in made.values():
        region.store.close()


def test_a_region_catches_up_from_another_regions_log(regions: dict[str, Region]) -> None:
    eu, us = regions["eu"], regions["us"]
    assert eu.write(SetRegister("r", b"1"), AddMembers("s", ("a", "b")))
    assert eu.write(Increment("n", 5), RemoveMembers("s", ("a",)))
    assert eu.write(DeleteKey("r"))
    outcomes = us.store.apply_remote(eu.log(), source="eu")
    assert outcomes == [RemoteOutcome.APPLIED] * 3
    assert us.snapshot() == eu.snapshot()
    assert us.store.apply_remote(eu.log(), source="eu") == [RemoteOutcome.DUPLICATE] * 3
    assert us.snapshot() == eu.snapshot()


def test_an_entry_after_a_gap_is_refused_until_the_gap_is_filled(regions: dict[str, Region]) -> None:
    eu, us = regions["eu"], regions["us"]
    for i in range(3):
        eu.write(Increment("n", i + 1))
    first, second, third = eu.log()
    assert us.store.apply_remote([third], source="eu") == [RemoteOutcome.GAP]
    assert us.store.get("n") is None
    # Everything after the first gap is refused too: it may depend on what is missing.
    assert us.store.apply_remote([first, third, second], source="eu") == [
        RemoteOutcome.APPLIED,
        RemoteOutcome.GAP,
        RemoteOutcome.GAP,
    ]
    assert us.store.apply_remote([first, second, third], source="eu") == [
        RemoteOutcome.DUPLICATE,
        RemoteOutcome.APPLIED,
        RemoteOutcome.APPLIED,
    ]
    assert us.snapshot() == eu.snapshot()


def test_regression_an_overwrite_waits_for_the_batch_it_overwrote(regions: dict[str, Region]) -> None:
    """Found by the 3-region end-to-end test: causal delivery across origins.

    ap writes a batch (a register and a counter); us receives it and
    overwrites the register, so us's delta names ap's register event. If eu
    applied us's entry first, its context would cover that ap event, ap's
    batch would then look half-applied, and eu could never take it (or, with
    single-op batches, would take a register with two events of one region).
    The entry must wait until eu has what it depends on.
    """
    eu, us, ap = regions["eu"], regions["us"], regions["ap"]
    assert ap.write(SetRegister("r", b"ap"), Increment("n", 2))
    assert us.store.apply_remote(ap.log(), source="ap") == [RemoteOutcome.APPLIED]
    assert us.write(SetRegister("r", b"us"))
    (overwrite,) = us.log("us")
    assert eu.store.apply_remote([overwrite], source="us") == [RemoteOutcome.GAP]
    assert eu.store.get("r") is None
    # In the order us applied them (its log order), both go in.
    assert eu.store.apply_remote(us.log(), source="us") == [RemoteOutcome.APPLIED, RemoteOutcome.APPLIED]
    assert eu.snapshot() == us.snapshot()
    assert eu.store.get("n") is not None


def test_entries_are_relayed_with_their_source(regions: dict[str, Region]) -> None:
    eu, us, ap = regions["eu"], regions["us"], regions["ap"]
    eu.write(AddMembers("s", ("from-eu",)))
    us.store.apply_remote(eu.log(), source="eu")
    relayed = us.log("eu")
    assert [e.source for e in relayed] == ["eu"], "us remembers where eu's entry came from"
    ap.store.apply_remote(relayed, source="us")
    assert ap.snapshot() == eu.snapshot()
    assert [e.source for e in ap.log("eu")] == ["us"]


def test_concurrent_writes_converge_after_exchanging_logs(regions: dict[str, Region]) -> None:
    eu, us = regions["eu"], regions["us"]
    eu.write(SetRegister("r", b"eu"), AddMembers("s", ("x",)), Increment("n", 2))
    us.write(SetRegister("r", b"us"), RemoveMembers("s", ("x",)), Increment("n", 3))
    eu.store.apply_remote(us.log("us"), source="us")
    us.store.apply_remote(eu.log("eu"), source="eu")
    assert eu.snapshot() == us.snapshot()
    n = eu.store.get("n")
    assert n is not None
    assert n.read() is not None
    assert n.read().value == 5  # type: ignore[union-attr]


operations = st.one_of(
    st.builds(SetRegister, st.sampled_from(["r1", "r2"]), st.sampled_from([b"a", b"b"])),
    st.builds(Increment, st.sampled_from(["n"]), st.integers(-3, 3)),
    st.builds(AddMembers, st.sampled_from(["s"]), st.lists(st.sampled_from("xyz"), min_size=1, max_size=2).map(tuple)),
    st.builds(
        RemoveMembers, st.sampled_from(["s"]), st.lists(st.sampled_from("xyz"), min_size=1, max_size=2).map(tuple)
    ),
    st.builds(DeleteKey, st.sampled_from(["r1", "s", "n"])),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(["eu", "us", "ap"]), operations),
        st.tuples(st.just("ship"), st.sampled_from(["eu", "us", "ap"]), st.sampled_from(["eu", "us", "ap"])),
    ),
    max_size=25,
)


# Real LMDB environments per example: fewer examples than the pure-core properties.
@settings(max_examples=examples(60))
@given(steps)
def test_regions_converge_whatever_is_shipped_when(script: list[tuple[str, str, Operation | str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        regions = {name: Region(Path(tmp), name) for name in ("eu", "us", "ap")}
        for region in regions.values():
            stack.callback(region.store.close)
        for kind, a, b in script:
            if isinstance(b, str):
                if a != b:  # ship everything a has (its own and relayed entries), in log order
                    regions[b].store.apply_remote(regions[a].log(), source=a)
            else:
                regions[a].write(b)
            assert kind in ("write", "ship")
        for _ in range(2):  # anti-entropy: everyone ships to everyone
            for a, sender in regions.items():
                for b, receiver in regions.items():
                    if a != b:
                        receiver.store.apply_remote(sender.log(), source=a)
        snapshots = [r.snapshot() for r in regions.values()]
        assert snapshots[0] == snapshots[1] == snapshots[2]


def _transfer(
    sender: Region,
    receiver: Region,
    tmp: Path,
    *,
    by_digest: bool = False,
    between: Callable[[], object] = lambda: None,
) -> int:
    """A repair as the replication driver does it: spool, compare digests (or not), stage pages, finish.

    ``between`` runs after the receiver compared digests and before it joins the transfer.
    """
    spool = tmp / f"{sender.name}-to-{receiver.name}.spool"
    context, count, digests = sender.store.spool_snapshot(spool)
    assert digests == sender.store.bucket_digests()
    with spool.open("rb") as f:
        pairs = [(key, body, part) for key, body, part in msgpack.Unpacker(f, raw=False)]
    assert len({key for key, _, _ in pairs}) == count
    buckets = None
    if by_digest:
        theirs = receiver.store.bucket_digests()
        buckets = frozenset(i for i, (a, b) in enumerate(zip(digests, theirs, strict=True)) if a != b)
        pairs = [(key, body, part) for key, body, part in pairs if bucket_of(key) in buckets]
    between()
    for i in range(0, len(pairs), 3):  # in pages
        receiver.store.stage_snapshot(sender.name, 7, pairs[i : i + 3])
    return receiver.store.finish_snapshot(sender.name, 7, context, buckets, digests)


def test_a_state_transfer_is_the_full_join(regions: dict[str, Region], tmp_path: Path) -> None:
    eu, us = regions["eu"], regions["us"]
    for i in range(20):
        eu.write(SetRegister(f"k{i}", b"eu" * 50), AddMembers("s", (f"eu{i}",)))
    us.store.apply_remote(eu.log(), source="eu")
    eu.write(DeleteKey("k0"), RemoveMembers("s", ("eu1",)))  # us has not seen these removes
    us.write(AddMembers("s", ("us-only",)), SetRegister("k5", b"us"))  # nor eu these concurrent writes
    expected = _full_join(us, eu)
    changed = _transfer(eu, us, tmp_path)
    assert changed > 0
    assert us.store.get("k0") is None, "what eu removed goes"
    assert us.snapshot() == expected
    assert us.store.log_horizon.get(eu.store.origin) == eu.store.context.vv.get(eu.store.origin)
    assert _transfer(eu, us, tmp_path) == 0, "a second transfer changes nothing"


def test_a_repair_by_digest_sends_only_differing_buckets_and_equals_the_full_join(
    regions: dict[str, Region], tmp_path: Path
) -> None:
    eu, us = regions["eu"], regions["us"]
    for i in range(300):
        eu.write(SetRegister(f"k{i}", b"v"))
    eu.write(AddMembers("s", ("a", "b")))
    us.store.apply_remote(eu.log(), source="eu")
    assert us.store.bucket_digests() == eu.store.bucket_digests(), "equal states, equal digests"
    eu.write(DeleteKey("k1"), SetRegister("k2", b"new"), RemoveMembers("s", ("a",)))
    us.write(SetRegister("k3", b"concurrent"), AddMembers("s", ("c",)))
    expected = _full_join(us, eu)
    differing = sum(a != b for a, b in zip(eu.store.bucket_digests(), us.store.bucket_digests(), strict=True))
    assert 0 < differing <= 5
    _transfer(eu, us, tmp_path, by_digest=True)
    assert us.snapshot() == expected
    assert us.store.get("k1") is None, "a remove in a differing bucket applies"


def test_regression_a_bucket_that_changed_after_the_comparison_refuses_the_transfer(
    regions: dict[str, Region], tmp_path: Path
) -> None:
    """Found reading the digest repair: a skipped bucket may change before the join.

    ap writes k; eu receives it and deletes it. us has neither, so k's bucket
    compares equal (empty on both sides) and is skipped. Then ap's write
    reaches us. Joining eu's context now would claim eu's delete while us
    keeps k: k would live on in us for ever. The transfer must be refused.
    """
    eu, us, ap = regions["eu"], regions["us"], regions["ap"]
    ap.write(SetRegister("k", b"from ap"))
    eu.store.apply_remote(ap.log(), source="ap")
    eu.write(DeleteKey("k"))
    with pytest.raises(StaleTransfer):
        _transfer(eu, us, tmp_path, by_digest=True, between=lambda: us.store.apply_remote(ap.log(), source="ap"))
    assert us.store.get("k") is not None and us.store.context.vv.get(eu.store.origin) == 0, "nothing of it was joined"
    us.store.discard_snapshot("eu")
    _transfer(eu, us, tmp_path, by_digest=True)  # compared again: k's bucket now differs and travels
    assert us.store.get("k") is None
    assert us.snapshot() == _full_join(us, eu)


def test_a_cut_short_transfer_is_discarded(regions: dict[str, Region], tmp_path: Path) -> None:
    eu, us = regions["eu"], regions["us"]
    eu.write(SetRegister("a", b"1"))
    us.store.stage_snapshot("eu", 7, [("a", b"garbage that is never decoded", 0)])
    us.store.discard_snapshot("eu")
    us.store.stage_snapshot("eu", 6, [("a", b"a late page of an abandoned transfer", 0)])
    assert _transfer(eu, us, tmp_path) == 1, "transfer 7 does not see transfer 6's page"
    assert us.snapshot() == eu.snapshot()


def _full_join(a: Region, b: Region) -> tuple[bytes, list[tuple[str, bytes]]]:
    left = StoreMap(dict(a.store.scan("", limit=10_000)[0]), a.store.context)
    right = StoreMap(dict(b.store.scan("", limit=10_000)[0]), b.store.context)
    joined = left.join(right)
    return encode(joined.context), sorted((k, encode(s)) for k, s in joined.entries.items() if not s.is_bottom())


def test_relayed_entries_count_against_the_log_bound(tmp_path: Path) -> None:
    source = Region(tmp_path, "eu")
    relay = LmdbStore(StorageConfig(tmp_path / "us", "us", StorageOptions(delta_log_bytes_max=5_000)))
    try:
        for i in range(30):
            source.write(SetRegister(f"k{i}", b"x" * 500))
        for entry in source.log():
            relay.apply_remote([entry], source="eu")
        kept = list(relay.log_entries())
        assert 0 < len(kept) < 30
        assert kept[-1].last == 30, "the newest entries are kept"
        assert relay.log_horizon.get(source.store.origin) == kept[0].first - 1
    finally:
        source.store.close()
        relay.close()


def test_regression_a_transfer_moves_the_horizon_only_where_it_brought_events(
    regions: dict[str, Region], tmp_path: Path
) -> None:
    """From review: the horizon took the sender's whole vector, so peers were sent needless full transfers."""
    eu, us = regions["eu"], regions["us"]
    us.write(Increment("n", 1))
    us.write(Increment("n", 1))
    eu.store.apply_remote(us.log(), source="us")
    us.write(Increment("n", 1))  # us has us:3 and its log; eu's transfer brings only us:1..2
    eu.write(SetRegister("r", b"x"))
    _transfer(eu, us, tmp_path)
    assert us.store.log_horizon.get(us.store.origin) == 0, "us lost no log entries of its own"
    assert us.store.log_horizon.get(eu.store.origin) == 1


def test_a_push_holds_fresh_relays_and_what_depends_on_them(tmp_path: Path) -> None:
    now = [1_000]
    eu = Region(tmp_path, "eu")
    relay = LmdbStore(StorageConfig(tmp_path / "us", "us"), wall_ms=lambda: now[0])
    clock = HybridLogicalClock(FakeClock(1_000))
    try:
        eu.write(SetRegister("r", b"eu"))
        now[0] = 2_000
        relay.apply_remote(eu.log(), source="eu")  # arrives at 2,000
        now[0] = 2_010
        relay.write_batch([WriteRequest([SetRegister("r", b"us")])], clock)  # depends on it
        held, reached, held_since = relay.log_since(VersionVector(), 1 << 20, relayed_before_ms=1_990)
        assert held == [] and reached == VersionVector(), "the relay is fresh, and us's write must not overtake it"
        assert held_since == 2_000, "when the held relay arrived: nothing can go to this peer before it matures"
        sent, _, _ = relay.log_since(VersionVector(), 1 << 20, relayed_before_ms=2_050)
        assert [(e.origin, e.last) for e in sent] == [(eu.store.origin, 1), (relay.origin, 1)]
        caught_up, _, _ = relay.log_since(VersionVector(), 1 << 20)
        assert caught_up == sent, "a catch-up holds nothing"
    finally:
        eu.store.close()
        relay.close()


def test_a_push_holds_what_the_peer_is_receiving_from_elsewhere(tmp_path: Path) -> None:
    eu = Region(tmp_path, "eu")
    relay = LmdbStore(StorageConfig(tmp_path / "us", "us"), wall_ms=lambda: 5_000)
    clock = HybridLogicalClock(FakeClock(1_000))
    try:
        eu.write(SetRegister("a", b"1"))
        eu.write(SetRegister("b", b"2"))
        relay.apply_remote(eu.log(), source="eu")
        relay.write_batch([WriteRequest([SetRegister("r", b"us")])], clock)
        everything, _, _ = relay.log_since(VersionVector(), 1 << 20)
        o_eu, o_us = eu.store.origin, relay.origin
        assert [(e.origin, e.last) for e in everything] == [(o_eu, 1), (o_eu, 2), (o_us, 1)]
        # The peer is applying eu:1 from eu itself: the push stops there, however old the entry.
        held, reached, held_since = relay.log_since(VersionVector(), 1 << 20, held=VersionVector({o_eu: 1}))
        assert held == [] and reached == VersionVector() and held_since == 5_000
        # Once it has eu:1, the rest goes.
        rest, reached, _ = relay.log_since(VersionVector({o_eu: 1}), 1 << 20, held=VersionVector({o_eu: 1}))
        assert [(e.origin, e.last) for e in rest] == [(o_eu, 2), (o_us, 1)]
        assert reached == VersionVector({o_eu: 2, o_us: 1})
    finally:
        eu.store.close()
        relay.close()
