"""The replication driver: its Ready for each event, and regions converging through a fake network.

Everything here runs the driver that the node, the simulator and the
synchronisation-cost benchmark run, over production storage.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.crdt import CausalContext, HybridLogicalClock, VersionVector
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.replica.driver import LARGE_MESSAGE_BYTES, Driver, Job, Ready
from crdtstore.replica.settings import ReplicationSettings
from crdtstore.replica.wire import DIGEST_BUCKETS, Ack, Entries, Hello, Offer, Page, RawLogEntry, Want
from crdtstore.storage import LmdbStore, StorageConfig, StorageOptions, WriteRequest
from crdtstore.storage.replication import ReplicaStore
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.network import FakeNetwork
from crdtstore.testing.strategies import examples

SETTINGS = ReplicationSettings()


# -- one driver, event by event ---------------------------------------------------------------


class One:
    """A driver over a real store with peers ``us`` and ``ap``, and the store to write to."""

    def __init__(self, root: Path, options: StorageOptions | None = None) -> None:
        self.store = LmdbStore(StorageConfig(root / "eu", "eu", options or StorageOptions(sync=False)))
        self.clock = HybridLogicalClock(FakeClock(1_700_000_000_000), floor=self.store.hlc_mark)
        self.driver = Driver("eu", ["us", "ap"], ReplicaStore(self.store, self.clock, root), SETTINGS)

    def close(self) -> None:
        for job in self.driver.shutdown(0).jobs:  # the spools of transfers in progress
            job.run()
        self.store.close()

    def write(self, *ops: Operation) -> None:
        self.store.write_batch([WriteRequest(list(ops))], self.clock)

    def run(self, ready: Ready, now_ms: int) -> list[Ready]:
        """Run every job of ``ready`` and of the Readies they bring; every Ready, in order."""
        out = [ready]
        for job in ready.jobs:
            out += self.run(self.driver.done(job, job.run(), now_ms), now_ms)
        return out


@pytest.fixture
def one(tmp_path: Path) -> Iterator[One]:
    node = One(tmp_path)
    yield node
    node.close()


def _jobs(readies: list[Ready]) -> list[str]:
    return [job.kind for ready in readies for job in ready.jobs]


def _sent(readies: list[Ready]) -> list[object]:
    return [o.message for ready in readies for o in ready.messages]


def test_a_connection_begins_with_a_hello_and_the_peers_hello_asks_for_a_log_read(one: One) -> None:
    ready = one.driver.connected("us", 0)
    assert [o.message for o in ready.messages] == [Hello("eu", VersionVector(), origin=one.store.origin)]
    one.write(Increment("n", 1))
    one.run(one.driver.local_committed(1), 1)
    readies = one.run(one.driver.received("us", Hello("us", VersionVector()), 2), 2)
    # The hello voids any transfer from us a broken connection cut short, then the log goes.
    assert _jobs(readies) == ["discard", "read_log"]
    (entries,) = [m for m in _sent(readies) if isinstance(m, Entries)]
    assert entries.vector == one.store.context.vv


def test_entries_are_persisted_before_they_are_acknowledged(one: One) -> None:
    one.driver.connected("us", 0)
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    us_entry = _entry_from("us", Increment("n", 5))
    ready = one.driver.received("us", Entries.of((us_entry,)), 5)
    assert [(j.kind, j.writes, j.inbound) for j in ready.jobs] == [("apply", True, True)]
    assert not [m for m in _sent([ready]) if isinstance(m, Ack)], "no ack before the apply is done"
    (apply,) = ready.jobs
    after = one.driver.done(apply, apply.run(), 6)
    assert [o.message for o in after.messages] == [Ack(one.store.context.vv)]
    assert one.store.get("n") is not None


def test_one_log_read_per_peer_is_in_flight_at_a_time(one: One) -> None:
    one.driver.connected("us", 0)
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    one.write(Increment("n", 1))
    first = one.driver.local_committed(10)
    assert first.wake_at_ms == 10, "a write after a quiet spell goes at once"
    tick = one.driver.tick(10)
    (read,) = [j for j in tick.jobs if j.kind == "read_log"]
    assert read.bulk, "it makes a large message: the host runs it when the stream has room"
    one.write(Increment("n", 1))
    one.driver.local_committed(30)
    assert not [j for j in one.driver.tick(30).jobs if j.kind == "read_log"], "the first is still running"
    after = one.driver.done(read, read.run(), 31)
    (entries,) = _sent([after])
    assert isinstance(entries, Entries)
    assert entries.vector == one.store.context.vv, "the read ran after the second commit: both went"


def test_a_log_read_for_a_connection_that_ended_sends_nothing(one: One) -> None:
    one.driver.connected("us", 0)
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    one.write(Increment("n", 1))
    one.driver.local_committed(10)
    (read,) = [j for j in one.driver.tick(10).jobs if j.kind == "read_log"]
    one.driver.disconnected("us", 11)
    one.driver.connected("us", 12)
    assert _sent([one.driver.done(read, read.run(), 13)]) == [], "the new connection starts from its hello"


def test_a_quiet_connection_gets_a_heartbeat_each_anti_entropy_period(one: One) -> None:
    ready = one.driver.connected("us", 0)
    assert ready.wake_at_ms <= SETTINGS.anti_entropy_ms
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    beats = []
    now = 0
    for _ in range(5):
        ready = one.driver.tick(now)
        beats += [o for o in ready.messages if o.heartbeat]
        now = ready.wake_at_ms
    assert now <= 5 * SETTINGS.anti_entropy_ms
    assert beats, "quiet for a period: a heartbeat"
    assert all(isinstance(o.message, Ack) and o.peer == "us" for o in beats)


def test_a_large_message_asks_for_a_tick_while_it_applies(one: One) -> None:
    one.driver.connected("us", 0)
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    big = _entry_from("us", SetRegister("r", b"x" * (LARGE_MESSAGE_BYTES + 1)))
    ready = one.driver.received("us", Entries.of((big,)), 100)
    assert ready.wake_at_ms == 100, "the other peers hear at once what is on its way"
    one.driver.tick(100)
    small = _entry_from("ap", Increment("n", 1))
    one.driver.connected("ap", 100)
    one.run(one.driver.received("ap", Hello("ap", VersionVector()), 100), 100)
    assert one.driver.received("ap", Entries.of((small,)), 200).wake_at_ms > 200


def test_entries_out_of_causal_order_close_the_connection(one: One) -> None:
    one.driver.connected("us", 0)
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    entry = _entry_from("us", Increment("n", 1))
    gap = RawLogEntry(entry.origin, 5, 5, entry.delta)  # 1..4 never came
    readies = one.run(one.driver.received("us", Entries.of((gap,)), 1), 1)
    assert [c for r in readies for c in r.close] == [
        ("us", "entries from us arrived out of causal order; resynchronising")
    ]
    assert one.driver.received("us", Ack(VersionVector()), 2).messages == [], "nothing more on that connection"


def test_persisting_what_a_peer_sent_fails_closes_its_connection(one: One) -> None:
    one.driver.connected("us", 0)
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    (apply,) = one.driver.received("us", Entries.of((RawLogEntry("us", 1, 1, b"not a delta"),)), 1).jobs
    with pytest.raises(ValueError):
        apply.run()
    ready = one.driver.failed(apply, ValueError("does not decode"), 2)
    assert [peer for peer, _ in ready.close] == ["us"]


def test_a_failure_persisting_what_an_ended_connection_sent_leaves_the_next_one_alone(one: One) -> None:
    one.driver.connected("us", 0)
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    (apply,) = one.driver.received("us", Entries.of((RawLogEntry("us", 1, 1, b"not a delta"),)), 1).jobs
    one.driver.disconnected("us", 2)
    one.driver.connected("us", 3)
    assert one.driver.failed(apply, ValueError("does not decode"), 4).close == []


def test_a_state_transfer_offers_digests_sends_the_buckets_wanted_and_is_joined(tmp_path: Path) -> None:
    sender, receiver = One(tmp_path / "a"), One(tmp_path / "b")
    try:
        for i in range(50):
            sender.write(SetRegister(f"k{i}", b"v"))
        sender.driver.connected("us", 0)
        sender.run(sender.driver.received("us", Hello("us", VersionVector()), 0), 0)
        # The log was trimmed past what us has: it needs a state transfer.
        ready = sender.driver._ready(0)  # nothing trimmed yet: nothing to say
        assert not ready.jobs
        sender.store.trim_log(sender.store.context.vv)
        readies = sender.run(sender.driver.tick(1), 1)
        assert "spool" in _jobs(readies)
        (offer,) = [m for m in _sent(readies) if isinstance(m, Offer)]
        # The receiver (as its peer "eu"... here both name themselves eu: drive the receiving side by hand).
        want = Want(frozenset(range(len(offer.digests))))
        pages_ready = sender.run(sender.driver.received("us", want, 2), 2)
        pages = [m for m in _sent(pages_ready) if isinstance(m, Page)]
        assert pages[-1].done
        assert sum(len(p.keys) for p in pages) == 50
        assert not list(tmp_path.glob("a/*.spool")), "the spool is released once the last page is out"
        receiver.driver.connected("ap", 3)
        receiver.run(receiver.driver.received("ap", Hello("ap", VersionVector()), 3), 3)
        receiver.run(receiver.driver.received("ap", offer, 4), 4)
        joined = [receiver.run(receiver.driver.received("ap", page, 5), 5) for page in pages]
        assert receiver.driver.transfers_joined == 1
        assert receiver.store.get("k49") is not None
        assert [m for r in joined[-1] for m in _sent([r]) if isinstance(m, Ack)], "acknowledged once joined"
    finally:
        sender.close()
        receiver.close()


def test_a_page_out_of_order_closes_the_connection(one: One) -> None:
    one.driver.connected("us", 0)
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    ready = one.driver.received("us", Page(1, ()), 1)
    assert [peer for peer, _ in ready.close] == ["us"]


def test_regression_a_late_transfer_page_never_finishes_another_transfer(one: One) -> None:
    """Found by the simulator's audit checker: a transfer's last page overtook its first (messages reordered).

    The page arrived when the previous transfer (of one page) had ended, and was taken as that
    transfer's page 1: the transfer was finished with that page's keys alone and the sender's whole
    context, so the join dropped every key the page did not carry. A page other than a first one
    between transfers now ends the connection, and nothing is joined.
    """
    one.write(SetRegister("kept", b"v"))
    one.driver.connected("us", 0)
    one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0)
    every = frozenset(range(DIGEST_BUCKETS))
    one.run(one.driver.received("us", Page(0, (), True, CausalContext(), every), 1), 1)  # a transfer of nothing
    assert one.driver.transfers_joined == 1
    # The next transfer's last page, first: with no keys and a context that covers "kept", it would remove it.
    late = one.driver.received("us", Page(1, (), True, one.store.context, every), 2)
    assert [peer for peer, _ in late.close] == ["us"]
    assert "finish" not in _jobs(one.run(late, 2))
    assert one.store.get("kept") is not None


def _entry_from(region: str, op: Operation) -> RawLogEntry:
    """The log entry a fresh region ``region`` writes for ``op``."""
    with tempfile.TemporaryDirectory() as tmp:
        store = LmdbStore(
            StorageConfig(Path(tmp) / region, region, StorageOptions(sync=False)), incarnations=lambda: "0" * 12
        )
        try:
            store.write_batch([WriteRequest([op])], HybridLogicalClock(FakeClock(1_700_000_000_000)))
            (entry,) = store.log_since(VersionVector(), 1 << 30).entries
            return RawLogEntry(*entry)
        finally:
            store.close()


# -- regions through a fake network ------------------------------------------------------------


@pytest.fixture
def net(tmp_path: Path) -> Iterator[FakeNetwork]:
    network = FakeNetwork(tmp_path, ["eu", "us", "ap"])
    yield network
    network.close()


def test_three_regions_converge_and_relay_across_a_cut_link(net: FakeNetwork) -> None:
    net.connect_all()
    net.cut("eu", "ap")  # eu and ap only meet through us
    net.write("eu", AddMembers("s", ("from-eu",)), Increment("n", 1))
    net.write("ap", AddMembers("s", ("from-ap",)), Increment("n", 2))
    net.write("us", SetRegister("r", b"us"))
    net.settle()
    entry = net.regions["ap"].store.get("s")
    assert entry is not None
    assert entry.read() is not None
    assert entry.read().value == frozenset({"from-eu", "from-ap"})  # type: ignore[union-attr]


def test_writes_on_both_sides_of_a_partition_converge_after_healing(net: FakeNetwork) -> None:
    net.connect_all()
    net.isolate("eu")
    for i in range(5):
        net.write("eu", Increment("n", 1), AddMembers("s", (f"eu{i}",)))
        net.write("us", Increment("n", 10), RemoveMembers("s", (f"eu{i}",)))
        net.run(5)
    net.heal()
    net.settle()
    n = net.regions["eu"].store.get("n")
    assert n is not None
    assert n.read().value == 55  # type: ignore[union-attr]


def test_a_region_behind_the_trimmed_log_is_repaired_by_a_state_transfer(tmp_path: Path) -> None:
    small_log = StorageOptions(sync=False, delta_log_bytes_max=2_000)
    net = FakeNetwork(
        tmp_path, ["eu", "us", "ap"], options=small_log, settings=replace(SETTINGS, message_bytes_max=4096)
    )
    try:
        net.connect_all()
        net.run(50)
        net.isolate("ap")
        for i in range(200):
            net.write("eu" if i % 2 else "us", SetRegister(f"k{i}", b"v" * 40))
        net.run(2_000)
        net.heal()
        net.settle()
        assert "finish" in net.regions["ap"].jobs, "ap was repaired by a transfer, not by the log"
        assert net.regions["ap"].driver.transfers_joined >= 1
        assert sum(r.driver.transfers_sent for r in net.regions.values()) >= 1
    finally:
        net.close()


operations = st.one_of(
    st.builds(SetRegister, st.sampled_from(["r"]), st.sampled_from([b"a", b"b"])),
    st.builds(Increment, st.just("n"), st.integers(-3, 3)),
    st.builds(AddMembers, st.just("s"), st.lists(st.sampled_from("xyz"), min_size=1, max_size=2).map(tuple)),
    st.builds(RemoveMembers, st.just("s"), st.lists(st.sampled_from("xyz"), min_size=1, max_size=2).map(tuple)),
    st.builds(DeleteKey, st.sampled_from(["r", "s", "n"])),
)
regions = st.sampled_from(["eu", "us", "ap"])
events = st.lists(
    st.one_of(
        st.tuples(st.just("write"), regions, operations),
        st.tuples(st.just("cut"), regions, regions),
        st.tuples(st.just("drop"), regions, regions),
        st.tuples(st.just("heal"), st.just(""), st.just("")),
        st.tuples(st.just("run"), st.just(""), st.integers(1, 500)),
    ),
    max_size=40,
)


# Real LMDB environments per example: fewer examples than the pure-core properties.
@settings(max_examples=examples(40), deadline=None)
@given(events, st.integers(0, 2**32 - 1))
def test_regions_converge_under_loss_and_partitions(
    script: list[tuple[str, str, Operation | str | int]], seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        net = FakeNetwork(Path(tmp), ["eu", "us", "ap"], seed=seed)
        try:
            net.connect_all()
            for kind, a, b in script:
                if kind == "write" and not isinstance(b, str | int):
                    net.write(a, b)
                elif kind == "cut" and isinstance(b, str) and a != b:
                    net.cut(a, b)
                elif kind == "drop" and isinstance(b, str) and a != b:
                    net.drop(a, b, 0.2)
                elif kind == "heal":
                    net.heal()
                elif kind == "run" and isinstance(b, int):
                    net.run(b)
            net.heal()
            net.settle()
        finally:
            net.close()


def test_jobs_say_where_they_run(one: One) -> None:
    """Writes on the store's writer; persisting a peer's message in order; large messages when there is room."""
    one.driver.connected("us", 0)
    kinds: dict[str, Job] = {}
    for ready in one.run(one.driver.received("us", Hello("us", VersionVector()), 0), 0):
        kinds |= {j.kind: j for j in ready.jobs}
    assert kinds["discard"].writes and kinds["discard"].inbound
