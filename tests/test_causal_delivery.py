"""Replication applies every entry after its causal past: through relays, repairs and restarts.

The CRDT semantics (the causal counter above all, see ``crdtstore/crdt/counter.py``
and issue 14) assume causal delivery: a region applies an entry only when it
already has everything the entry's origin had seen when it wrote it. This
file holds the replication layer to that, with real ``LmdbStore``s.

What delivers causally is not one check but the way the parts fit together,
and the state machine below drives them as the node does:

* ``log_since`` sends a peer its log from the oldest entry the peer lacks, in
  this node's apply order, cut short (a byte bound, a held relay) but never
  with a hole in the middle;
* a stream carries its messages in order; the sender pipelines messages
  from what it has sent so far (``sent``), and when a stream breaks, or the
  receiver refuses an entry as a gap, both sides start again from a hello
  (``sent`` falls back to what the receiver really has);
* ``apply_remote`` takes an entry only if it continues its origin's run and
  the events its delta names are already here, and stops at the first gap;
* a peer whose vector does not reach the sender's log horizon (the log was
  trimmed past it) is repaired by a state transfer instead.

Messages built from what the receiver had at some earlier moment (an old
catch-up, a retransmission) may also arrive at any time, any number of
times, cut short, and interleaved with every other stream.

The property: whenever an entry is applied, the receiver already has the
context its origin had just before the write (recorded when it was written);
after every step every store's context is causally closed (it holds the past
of every event it holds); and once everyone has synchronised, all stores are
equal and every key reads.

Note what ``apply_remote`` alone does not check: an entry's past of *other*
origins that its delta does not name (eu deletes a key that us's entry had
already emptied; eu's delta names nothing of us). Such an entry is safe only
because it comes after its past in every sender's log and nothing is ever
sent with a hole; a suffix of a message delivered without its head would
break that, which is why a gap or a broken stream restarts from a hello.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from crdtstore.crdt import (
    CausalContext,
    Counter,
    Dot,
    HybridLogicalClock,
    KeyState,
    KeyValue,
    Share,
    StoreMap,
    ValueType,
    VersionVector,
    encode,
)
from crdtstore.crdt.origin import region_of
from crdtstore.operations import AddMembers, DeleteKey, Increment, Operation, RemoveMembers, SetRegister
from crdtstore.storage import (
    Applied,
    LmdbStore,
    RawLogEntry,
    RemoteOutcome,
    StorageConfig,
    StorageOptions,
    WriteRequest,
    bucket_of,
)
from crdtstore.testing.clock import FakeClock

REGIONS = ("eu", "us", "ap")
KEYS = ("k1", "k2", "n", "s")

operations = st.one_of(
    st.builds(SetRegister, st.sampled_from(KEYS), st.sampled_from([b"a", b"b"])),
    st.builds(Increment, st.sampled_from(KEYS), st.integers(-3, 3)),
    st.builds(AddMembers, st.sampled_from(KEYS), st.lists(st.sampled_from("xyz"), min_size=1, max_size=2).map(tuple)),
    st.builds(
        RemoveMembers, st.sampled_from(KEYS), st.lists(st.sampled_from("xyz"), min_size=1, max_size=2).map(tuple)
    ),
    st.builds(DeleteKey, st.sampled_from(KEYS)),
)
regions = st.sampled_from(REGIONS)
DISTURBANCES = (
    *("break", "restart", "catch-up", "late", "late-again"),
    *("trim-acked", "trim-all", "repair", "repair-by-digest"),
)
pairs = st.sampled_from([(s, r) for s in REGIONS for r in REGIONS if s != r])


@dataclass
class Stream:
    """One direction of one connection: messages in flight, in order, and how far the sender has sent."""

    sent: VersionVector
    queue: list[list[RawLogEntry]] = field(default_factory=list)


def _note(what: str) -> None:
    """Count it in ``--hypothesis-show-statistics`` (when a Hypothesis test is running)."""
    if currently_in_test_context():
        event(what)


# Sets here hold at most three members; these part sizes make some regions send them in parts and
# join them member by member (the path of sets larger than set_part_members), some whole.
_SET_PART_MEMBERS = {"eu": 1, "us": 2}


class Node:
    def __init__(self, root: Path, region: str) -> None:
        self.region = region
        options = StorageOptions(sync=False, set_part_members=_SET_PART_MEMBERS.get(region, 4096))
        self.config = StorageConfig(root / region, region, options)
        self.store = LmdbStore(self.config)
        self.clock = HybridLogicalClock(FakeClock(1_000), floor=self.store.hlc_mark)

    def restart(self) -> None:
        self.store.close()
        self.store = LmdbStore(self.config)
        self.clock = HybridLogicalClock(FakeClock(1_000), floor=self.store.hlc_mark)


class CausalDelivery(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="causal-delivery-"))
        self.nodes = {r: Node(self.root, r) for r in REGIONS}
        # (origin, last) of every entry ever written -> (first, the origin's context just before it).
        self.pasts: dict[tuple[str, int], tuple[int, CausalContext]] = {}
        self.streams: dict[tuple[str, str], Stream] = {}
        self.loose: list[tuple[str, str, list[RawLogEntry]]] = []  # (sender, receiver, entries)
        self.transfers = 0
        for s in REGIONS:
            for r in REGIONS:
                if s != r:
                    self._hello(s, r)

    # -- the network ---------------------------------------------------------------------

    def _hello(self, s: str, r: str) -> None:
        """(Re)connect s -> r: in-flight messages are lost, and s starts from what r really has."""
        self.streams[(s, r)] = Stream(self.nodes[r].store.context.vv)

    def _behind_horizon(self, s: str, after: VersionVector) -> bool:
        return not after.dominates(self.nodes[s].store.log_horizon)

    def _apply(self, s: str, r: str, entries: list[RawLogEntry]) -> bool:
        """Apply a message as the node does, checking each applied entry's past; False on a gap."""
        store = self.nodes[r].store
        running = store.context
        wanted = store.lacking(entries)
        outcomes, _ = store.apply_raw(entries, s, self.nodes[r].clock)
        assert len(outcomes) == len(wanted)
        for entry, outcome in zip(wanted, outcomes, strict=True):
            if outcome is not RemoteOutcome.APPLIED:
                continue
            first, past = self.pasts[(entry.origin, entry.last)]
            assert entry.first == first
            assert running.vv.get(entry.origin) == first - 1, "an origin's entries apply in order"
            assert running.dominates(past), (
                f"{r} applied {entry.origin}:{first}..{entry.last} from {s} without all of its causal past: "
                f"it had {running}, the entry needs {past}"
            )
            running = running.add_all(Dot(entry.origin, n) for n in range(first, entry.last + 1))
            relayed = region_of(entry.origin) != s
            _note("applied an entry relayed by a third region" if relayed else "applied an entry")
        if RemoteOutcome.GAP in outcomes:
            _note("refused a gap")
        assert store.context == running, "the store has exactly what it applied"
        return RemoteOutcome.GAP not in outcomes

    # -- rules -------------------------------------------------------------------------------

    @rule(r=regions, first=st.lists(operations, min_size=1, max_size=3), second=st.none() | operations)
    def write(self, r: str, first: list[Operation], second: Operation | None) -> None:
        """One batch of one or two requests; each applied request is one log entry."""
        node = self.nodes[r]
        requests = [WriteRequest(first)] + ([] if second is None else [WriteRequest([second])])
        before = node.store.context
        results = node.store.write_batch(requests, node.clock)
        origin = node.store.origin
        for result in results:
            if isinstance(result, Applied):
                first_dot = before.vv.get(origin) + 1
                self.pasts[(origin, result.token.vv.get(origin))] = (first_dot, before)
                before = result.token

    def push(self, pair: tuple[str, str], bytes_max: int, held: VersionVector) -> None:
        """The sender puts its next message on the stream, from what it has sent so far."""
        stream = self.streams[pair]
        if self._behind_horizon(pair[0], stream.sent):
            return  # the core asks for a repair instead (NeedsRepair)
        piece = self.nodes[pair[0]].store.log_since(stream.sent, bytes_max, held=held)
        if piece.entries:
            stream.queue.append(piece.entries)
            stream.sent = stream.sent.join(piece.reached)

    def receive(self, pair: tuple[str, str]) -> None:
        """The receiver takes the next message of the stream; a gap restarts the stream from a hello."""
        stream = self.streams[pair]
        if stream.queue and not self._apply(*pair, stream.queue.pop(0)):
            self._hello(*pair)

    @rule(
        pair=pairs,
        bytes_max=st.sampled_from([1, 200, 1 << 20]),
        held=st.none() | st.tuples(regions, st.integers(1, 6)),
        pushes=st.integers(1, 3),
        receives=st.sampled_from([1, 0, 2, 3]),  # usually at once; sometimes left in flight
    )
    def stream(
        self, pair: tuple[str, str], bytes_max: int, held: tuple[str, int] | None, pushes: int, receives: int
    ) -> None:
        """Up to ``pushes`` messages go on the s -> r stream (pipelined), then ``receives`` arrive, in order.

        What is not received stays in flight for a later step, or is lost if the stream breaks first.
        """
        hold = VersionVector() if held is None else VersionVector({held[0]: held[1]})
        for _ in range(pushes):
            self.push(pair, bytes_max, hold)
        for _ in range(receives):
            self.receive(pair)

    @rule(
        kind=st.sampled_from(DISTURBANCES),
        pair=pairs,
        n=st.integers(0, 20),
        bytes_max=st.sampled_from([1, 300, 1 << 20]),
    )
    def disturb(self, kind: str, pair: tuple[str, str], n: int, bytes_max: int) -> None:
        """Everything else the network and the nodes do (one rule, so writes and streams stay frequent)."""
        s, r = pair
        if kind == "break":  # what was in flight on the stream is lost
            self._hello(s, r)
        elif kind == "restart":  # r closes and reopens its store: all its streams break
            self.nodes[r].restart()
            for other in REGIONS:
                if other != r:
                    self._hello(other, r)
                    self._hello(r, other)
        elif kind == "catch-up":  # a message from what r has now, cut to n entries, to arrive later
            after = self.nodes[r].store.context.vv
            if not self._behind_horizon(s, after):
                entries = self.nodes[s].store.log_since(after, bytes_max).entries[: max(n, 1)]
                if entries:
                    self.loose.append((s, r, entries))
        elif kind in ("late", "late-again"):  # an old catch-up arrives now, in any order, maybe again later
            if self.loose:
                sender, receiver, entries = self.loose[n % len(self.loose)]
                if kind == "late":
                    self.loose.pop(n % len(self.loose))
                self._apply(sender, receiver, entries)
        elif kind in ("trim-acked", "trim-all"):  # by acknowledgement, or everything (the byte bound)
            store = self.nodes[s].store
            upto = store.context.vv
            if kind == "trim-acked":
                vectors = [self.nodes[p].store.context.vv for p in REGIONS if p != s]
                upto = VersionVector({o: min(v.get(o) for v in vectors) for o in REGIONS})
            if store.trim_log(upto, max(n, 1)):
                _note("trimmed the log")
        elif self._behind_horizon(s, self.nodes[r].store.context.vv) or n == 0:
            # A state transfer, as the driver does one for a peer behind the horizon (and now and then anyway).
            self._transfer(s, r, by_digest=kind == "repair-by-digest")

    def _transfer(self, s: str, r: str, *, by_digest: bool) -> None:
        sender, receiver = self.nodes[s].store, self.nodes[r].store
        self.transfers += 1
        spool = self.root / f"spool-{self.transfers}"
        context, _count, digests = sender.spool_snapshot(spool)
        with spool.open("rb") as f:
            pairs = [(key, body, part) for key, body, part in msgpack.Unpacker(f, raw=False)]
        buckets = None
        if by_digest:
            theirs = receiver.bucket_digests()
            buckets = frozenset(i for i, (a, b) in enumerate(zip(digests, theirs, strict=True)) if a != b)
            pairs = [(key, body, part) for key, body, part in pairs if bucket_of(key) in buckets]
        receiver.stage_snapshot(s, self.transfers, pairs)
        receiver.finish_snapshot(s, self.transfers, context, buckets, digests)
        _note("repaired by a state transfer")
        self._hello(s, r)

    # -- checks ------------------------------------------------------------------------------

    @invariant()
    def every_context_is_causally_closed(self) -> None:
        for r, node in self.nodes.items():
            context = node.store.context
            for (origin, last), (_first, past) in self.pasts.items():
                if context.contains(Dot(origin, last)):
                    assert context.dominates(past), f"{r} holds {origin}:{last} without its causal past"

    def teardown(self) -> None:
        try:
            self._synchronise_and_check()
        finally:
            for node in self.nodes.values():
                node.store.close()
            shutil.rmtree(self.root, ignore_errors=True)

    def _synchronise_and_check(self) -> None:
        for _ in range(4):
            for s in REGIONS:
                for r in REGIONS:
                    if s == r:
                        continue
                    after = self.nodes[r].store.context.vv
                    if self._behind_horizon(s, after):
                        self._transfer(s, r, by_digest=True)
                        continue
                    while True:
                        entries = self.nodes[s].store.log_since(self.nodes[r].store.context.vv, 1 << 20).entries
                        if not entries:
                            break
                        assert self._apply(s, r, entries), "a catch-up from a hello never has a gap"
            if len({node.store.context for node in self.nodes.values()}) == 1:
                break
        states = []
        for node in self.nodes.values():
            held, _ = node.store.scan("", limit=10_000)
            for _key, state in held:
                state.read()  # every key reads
            states.append(StoreMap(dict(held), node.store.context))
        assert states[0] == states[1] == states[2], "after synchronising, every store is the same"


# Three real LMDB environments per example: half the profile's examples (250 in ci, 5,000 thorough).
CausalDelivery.TestCase.settings = settings(max_examples=max(10, settings().max_examples // 2), stateful_step_count=40)
TestCausalDelivery = CausalDelivery.TestCase


def test_the_check_catches_an_entry_applied_without_a_past_its_delta_does_not_name() -> None:
    """The property above can fail: storage alone would take this entry, only the sender's order prevents it.

    us writes k1; eu receives it and writes k2. eu's entry names nothing of
    us, so ``apply_remote`` takes it at ap without us's entry; what keeps ap
    from ever being offered it alone is that eu's log holds us's entry first
    and a message is never sent (or applied) with a hole. Delivered without
    its head, the message breaks causality, and the check says so.
    """
    machine = CausalDelivery()
    try:
        machine.write("us", [SetRegister("k1", b"a")], None)
        machine.stream(("us", "eu"), 1 << 20, None, pushes=1, receives=1)
        machine.write("eu", [SetRegister("k2", b"b")], None)
        machine.stream(("eu", "ap"), 1 << 20, None, pushes=1, receives=0)
        (message,) = machine.streams[("eu", "ap")].queue
        origin = {name: node.store.origin for name, node in machine.nodes.items()}
        assert [(e.origin, e.last) for e in message] == [(origin["us"], 1), (origin["eu"], 1)], "eu's log: past first"
        with pytest.raises(AssertionError, match="without all of its causal past"):
            machine._apply("eu", "ap", message[1:])
        assert machine.nodes["ap"].store.context.vv.get(origin["eu"]) == 1, "storage took it: it names nothing missing"
    finally:
        for node in machine.nodes.values():
            node.store.close()
        shutil.rmtree(machine.root, ignore_errors=True)


def test_regression_a_key_holding_two_shares_of_one_region_stays_readable_and_writable(tmp_path: Path) -> None:
    """The codec counterexample of issue 14 in a store: such a key was DATA_LOSS for every read and write.

    The state (a counter with shares ap:1, eu:1 and ap:3 under ap=3, eu=1)
    is one a join of deltas delivered out of causal order produces; here it
    arrives the way a whole key state can, in a state transfer.
    """
    counter = Counter({Dot("ap", 1): Share(2, 0), Dot("eu", 1): Share(0, 1), Dot("ap", 3): Share(5, 0)})
    state = KeyState({ValueType.COUNTER: counter})
    context = CausalContext(VersionVector({"ap": 3, "eu": 1}))
    us = Node(tmp_path, "us")
    ap = Node(tmp_path, "ap")
    try:
        us.store.stage_snapshot("eu", 1, [("n", encode(state), 0)])
        assert us.store.finish_snapshot("eu", 1, context) == 1
        assert us.store.get("n") == state
        (result,) = us.store.write_batch([WriteRequest([Increment("n", 10)])], us.clock)
        assert isinstance(result, Applied)
        us.restart()
        after = us.store.get("n")
        assert after is not None
        assert after.read() == KeyValue(ValueType.COUNTER, 2 - 1 + 5 + 10, (), ())
        # It travels on: in the log (encoded and decoded again) and in a state transfer.
        assert [e.delta.entries["n"] for e in us.store.log_entries()] == [
            KeyState({ValueType.COUNTER: Counter({Dot(us.store.origin, 1): Share(10, 0)})})
        ]
        spool = tmp_path / "spool"
        snapshot_context, count, _ = us.store.spool_snapshot(spool)
        with spool.open("rb") as f:
            ap.store.stage_snapshot("us", 1, [tuple(item) for item in msgpack.Unpacker(f, raw=False)])
        assert count == 1
        ap.store.finish_snapshot("us", 1, snapshot_context)
        assert ap.store.get("n") == after
    finally:
        us.store.close()
        ap.store.close()
