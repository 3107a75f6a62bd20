"""Three replicas of the whole store against a reference model.

Replicas mutate locally; deltas are delivered the way replication delivers
them: causally. A delta reaches a replica only once that replica holds the
delta's causal past (everything its minting replica had seen when it minted
it), and otherwise in any order, duplicated or never; anti-entropy (full state
joins, which is what a repair by state transfer is) happens now and then and
at the end. After every full anti-entropy all replicas must be identical and
show what the reference model says.

Why causal delivery, not any order: it is what the protocol guarantees
(``LmdbStore.apply_remote`` refuses an entry that does not continue its
origin's run or whose delta names events not yet here; a sender sends its log
in its own apply order, a prefix at a time; a gap ends the stream and the
peer resends from a hello; a peer behind the trimmed log is repaired by a
state transfer; ``tests/test_causal_delivery.py`` holds the storage layer to
it). And the semantics below need it: a delete's delta carries the dots the
deleting replica *sees in the key*, not its whole context, so a delete that
finds the key already empty (an earlier delete of the same region removed
everything) carries nothing about the shares that earlier delete removed. A
replica that received the later delete without the earlier one would keep the
removed share, and its region's next increment would bring the deleted amount
back. Under causal delivery that replica has the earlier delete first.

The model is a specification over the history of accepted operations, written
without dot stores: each operation records the dots it minted (derived from
the region's own count of events) and the set of dots its replica had seen
(that replica's causal context at the time). Then, for every key:

* set: a member is present iff some add of it was seen by no remove of that
  member and no delete of the key;
* register: the live writes are those seen by no later write and no delete;
  the winner is the greatest (timestamp, region, counter);
* counter: each region's share is the running total of its increments since
  its previous share was last removed by a delete it had seen; the share
  counts iff no delete saw it (the causal-counter semantics documented in
  ``crdtstore/crdt/counter.py``);
* a key whose slots of several types are live reads as the first of
  register, counter, set, with the rest as conflicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdtstore.crdt import (
    CausalContext,
    Dot,
    HybridLogicalClock,
    KeyValue,
    Sibling,
    StoreMap,
    Timestamp,
    TypeMismatch,
    ValueType,
)
from crdtstore.crdt.counter import INT64_MIN
from crdtstore.crdt.hlc import ZERO
from crdtstore.operations import DeleteKey, Increment, Operation
from crdtstore.storage import (
    Applied,
    LmdbStore,
    LogEntry,
    RemoteOutcome,
    StorageConfig,
    StorageOptions,
    WriteRequest,
)
from crdtstore.testing.clock import FakeClock
from crdtstore.testing.strategies import REGIONS, amounts, keys, members, values


@dataclass(frozen=True)
class Effect:
    kind: str  # "add", "remove", "write", "incr", "delete"
    key: str
    dot: Dot
    seen: CausalContext
    member: str = ""
    value: bytes = b""
    ts: Timestamp = ZERO
    amount: int = 0


class Model:
    """The specification above, over the accepted operations alone.

    It takes each operation's ``seen`` to be its replica's whole context,
    which is sound only under causal delivery: a delete "saw" a share if its
    replica had ever seen that share, even when an earlier delete of its
    region had already removed it and the delete's delta names nothing. A
    replica that applies a delta has everything the delta's replica had seen,
    so what the model says that delete covers, every receiver already has.
    """

    def __init__(self) -> None:
        self.effects: list[Effect] = []
        self.minted: dict[str, int] = dict.fromkeys(REGIONS, 0)

    def mint(self, region: str) -> Dot:
        self.minted[region] += 1
        return Dot(region, self.minted[region])

    def _killed(self, e: Effect, by: tuple[str, ...]) -> bool:
        return any(
            k.key == e.key and k.kind in by and k.seen.contains(e.dot) and (k.kind == "delete" or k.member == e.member)
            for k in self.effects
        )

    def expected(self, key: str) -> KeyValue | None:
        slots: dict[ValueType, object] = {}
        siblings: tuple[Sibling, ...] = ()
        mine = [e for e in self.effects if e.key == key]

        present = frozenset(e.member for e in mine if e.kind == "add" and not self._killed(e, ("remove", "delete")))
        if present:
            slots[ValueType.SET] = present

        writes = [e for e in mine if e.kind == "write"]
        live = [
            w
            for w in writes
            if not any(o.seen.contains(w.dot) for o in mine if o.kind in ("write", "delete") and o is not w)
        ]
        if live:
            ranked = sorted(((w.ts, w.dot.region, w.dot.counter, w.value) for w in live), reverse=True)
            slots[ValueType.REGISTER] = ranked[0][3]
            if len(ranked) > 1:
                siblings = tuple(Sibling(Dot(region, counter), ts, value) for ts, region, counter, value in ranked)

        total = 0
        shares = False
        for region in REGIONS:
            incs = [e for e in mine if e.kind == "incr" and e.dot.region == region]
            incs.sort(key=lambda e: e.dot.counter)
            cum = 0
            prev: Effect | None = None
            for inc in incs:
                alive_prev = prev is not None and not any(
                    d.kind == "delete" and d.seen.contains(prev.dot) and inc.seen.contains(d.dot) for d in mine
                )
                cum = (cum if alive_prev else 0) + inc.amount
                prev = inc
            if prev is not None and not any(d.kind == "delete" and d.seen.contains(prev.dot) for d in mine):
                total += cum
                shares = True
        if shares:
            slots[ValueType.COUNTER] = total

        if not slots:
            return None
        visible = min(slots)
        value = slots[visible]
        conflicts = tuple((t, slots[t]) for t in sorted(slots) if t != visible)
        return KeyValue(visible, value, siblings if visible is ValueType.REGISTER else (), conflicts)  # type: ignore[arg-type]


class ReplicasAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clocks = {r: FakeClock(1_000) for r in REGIONS}
        self.hlcs = {r: HybridLogicalClock(self.clocks[r], max_offset_ms=50) for r in REGIONS}
        self.states = {r: StoreMap() for r in REGIONS}
        # Each delta with its causal past: the minting replica's context before the mutation.
        self.deltas: list[tuple[StoreMap, CausalContext]] = []
        self.model = Model()

    # -- local mutations ---------------------------------------------------------------

    def _accept(self, region: str, delta: StoreMap, effects: list[Effect]) -> None:
        for e in effects:
            assert delta.context.contains(e.dot), f"{e.kind} minted {e.dot} as the model expects"
        past = self.states[region].context
        self.states[region] = self.states[region].join_delta(delta)
        self.deltas.append((delta, past))
        self.model.effects.extend(effects)

    @rule(r=st.sampled_from(REGIONS), key=keys, value=values)
    def write(self, r: str, key: str, value: bytes) -> None:
        state = self.states[r]
        ts = self.hlcs[r].now()
        try:
            delta = state.write_register(key, value, ts, r)
        except TypeMismatch:
            return
        self._accept(r, delta, [Effect("write", key, self.model.mint(r), state.context, value=value, ts=ts)])

    @rule(r=st.sampled_from(REGIONS), key=keys, amount=amounts)
    def incr(self, r: str, key: str, amount: int) -> None:
        state = self.states[r]
        try:
            delta = state.increment(key, amount, r)
        except TypeMismatch:
            return
        self._accept(r, delta, [Effect("incr", key, self.model.mint(r), state.context, amount=amount)])

    @rule(r=st.sampled_from(REGIONS), key=keys, ms=st.lists(members, min_size=1, max_size=3), add=st.booleans())
    def set_op(self, r: str, key: str, ms: list[str], add: bool) -> None:
        state = self.states[r]
        try:
            delta = state.add_members(key, ms, r) if add else state.remove_members(key, ms, r)
        except TypeMismatch:
            return
        kind = "add" if add else "remove"
        effects = [Effect(kind, key, self.model.mint(r), state.context, member=m) for m in sorted(set(ms))]
        self._accept(r, delta, effects)

    @rule(r=st.sampled_from(REGIONS), key=keys)
    def delete(self, r: str, key: str) -> None:
        state = self.states[r]
        self._accept(r, state.delete(key, r), [Effect("delete", key, self.model.mint(r), state.context)])

    # -- the network and the clocks -----------------------------------------------------

    @precondition(lambda self: bool(self.deltas))
    @rule(r=st.sampled_from(REGIONS), i=st.integers(0, 10_000))
    def deliver(self, r: str, i: int) -> None:
        """Any delta whose causal past ``r`` holds, in any order among those, any number of times."""
        have = self.states[r].context
        ready = [delta for delta, past in self.deltas if have.dominates(past)]
        # Never empty: the first delta was minted from an empty context.
        self.states[r] = self.states[r].join_delta(ready[i % len(ready)])

    @rule(a=st.sampled_from(REGIONS), b=st.sampled_from(REGIONS))
    def sync_pair(self, a: str, b: str) -> None:
        self.states[a] = self.states[a].join(self.states[b])

    @rule(r=st.sampled_from(REGIONS), ms=st.integers(-100, 100))
    def clock_jump(self, r: str, ms: int) -> None:
        self.clocks[r].advance(ms)

    @rule()
    def anti_entropy(self) -> None:
        self._converge_and_check()

    def _converge_and_check(self) -> None:
        everything = StoreMap()
        for state in self.states.values():
            everything = everything.join(state)
        for r in REGIONS:
            self.states[r] = self.states[r].join(everything)
        first = self.states[REGIONS[0]]
        for r in REGIONS[1:]:
            assert self.states[r] == first, f"{r} diverged from {REGIONS[0]}"
        for key in ("k1", "k2", "k3"):
            expected = self.model.expected(key)
            got = first.get(key)
            if expected is None or got is None:
                assert got == expected, key
                continue
            assert got.type == expected.type, key
            assert got.value == expected.value, key
            assert got.conflicts == expected.conflicts, key
            assert got.siblings == expected.siblings, key

    @invariant()
    def stores_hold_only_dots_their_context_has_seen(self) -> None:
        for state in self.states.values():
            state.context._check()
            for key_state in state.entries.values():
                assert not key_state.is_bottom(), "no empty key is kept"
                for dot in key_state.dots():
                    assert state.context.contains(dot)

    def teardown(self) -> None:
        self._converge_and_check()


TestReplicasAgainstModel = ReplicasAgainstModel.TestCase


# -- regressions ---------------------------------------------------------------------------


def _ready(machine: ReplicasAgainstModel, region: str) -> list[StoreMap]:
    have = machine.states[region].context
    return [delta for delta, past in machine.deltas if have.dominates(past)]


@pytest.mark.parametrize(
    ("amount", "register_too"),
    [(0, False), (INT64_MIN + 1, True)],
    ids=["the-shortest", "a-counter-conflict-off-by-the-share-that-came-back"],
)
def test_regression_a_later_delete_delivered_without_the_earlier_one_brought_a_deleted_share_back(
    amount: int, register_too: bool
) -> None:
    """Found by the first fresh-database run of TestReplicasAgainstModel (issue 14).

    ap increments k2 by 1; eu receives it, deletes k2, deletes k1, deletes k2
    again; ap then increments k2 by ``amount``. The old ``deliver`` rule gave ap
    eu's second delete of k2 alone. That delta names no share (k2 was already
    empty at eu), so ap kept its share of 1 and its next increment carried it:
    every replica read 1 + amount where the model says amount (0, and in the
    second failure a counter conflict of -9223372036854775806 for ...807).
    Replication never delivers eu's third event before its first, so the
    state machine now delivers causally; the storage half of the same story is
    the next test.
    """
    m = ReplicasAgainstModel()
    if register_too:
        m.write("us", "k2", b"us")  # concurrent: k2 reads as a register with the counter as a conflict
    m.incr("ap", "k2", 1)
    (ap_incr,) = [d for d, _ in m.deltas if d.context.contains(Dot("ap", 1))]
    m.states["eu"] = m.states["eu"].join_delta(ap_incr)
    m.delete("eu", "k2")
    m.delete("eu", "k1")
    m.delete("eu", "k2")
    second_delete_of_k2 = m.deltas[-1][0]
    assert second_delete_of_k2.context == CausalContext.from_dots([Dot("eu", 3)]), "it names no share"
    # What the old rule did, and why it cannot be allowed: the deleted share comes back.
    alone = m.states["ap"].join_delta(second_delete_of_k2)
    brought_back = alone.join_delta(alone.increment("k2", amount, "ap"))
    assert brought_back.get("k2") == KeyValue(ValueType.COUNTER, 1 + amount, (), ())
    # Under causal delivery ap cannot receive it before eu's first delete of k2.
    assert not any(d is second_delete_of_k2 for d in _ready(m, "ap"))
    while not any(d is second_delete_of_k2 for d in _ready(m, "ap")):
        before = m.states["ap"].context
        for delta in _ready(m, "ap"):
            if delta.context.max_counter("eu"):  # eu's deltas only: us's write stays concurrent
                m.states["ap"] = m.states["ap"].join_delta(delta)
        assert m.states["ap"].context != before, "once its past is there, it may come"
    m.states["ap"] = m.states["ap"].join_delta(second_delete_of_k2)
    m.incr("ap", "k2", amount)
    expected = m.model.expected("k2")
    assert expected is not None
    counter = expected.value if expected.type is ValueType.COUNTER else dict(expected.conflicts)[ValueType.COUNTER]
    assert counter == amount, "the model: the deleted share is gone for good"
    m._converge_and_check()  # every replica agrees with the model


def test_regression_storage_refuses_a_later_delete_whose_earlier_one_is_missing(tmp_path: Path) -> None:
    """The same counterexample through ``LmdbStore``: eu's second delete of k2 alone is a gap."""
    options = StorageOptions(sync=False)
    ap = LmdbStore(StorageConfig(tmp_path / "ap", "ap", options))
    eu = LmdbStore(StorageConfig(tmp_path / "eu", "eu", options))
    clock = HybridLogicalClock(FakeClock(1_000))
    try:

        def write(store: LmdbStore, *ops: Operation) -> None:
            (result,) = store.write_batch([WriteRequest(list(ops))], clock)
            assert isinstance(result, Applied)

        def log(store: LmdbStore, origin: str) -> list[LogEntry]:
            return [e for e in store.log_entries() if e.origin == origin]

        write(ap, Increment("k2", 1))
        assert eu.apply_remote(log(ap, ap.origin), source="ap") == [RemoteOutcome.APPLIED]
        write(eu, DeleteKey("k2"))
        write(eu, DeleteKey("k1"))
        write(eu, DeleteKey("k2"))
        first, other, second = log(eu, eu.origin)
        assert ap.apply_remote([second], source="eu") == [RemoteOutcome.GAP]
        assert ap.context.vv.get(eu.origin) == 0, "nothing of it was applied"
        assert ap.apply_remote([first, other, second], source="eu") == [RemoteOutcome.APPLIED] * 3
        write(ap, Increment("k2", 0))
        assert eu.apply_remote(log(ap, ap.origin), source="ap") == [RemoteOutcome.DUPLICATE, RemoteOutcome.APPLIED]
        for store in (ap, eu):
            state = store.get("k2")
            assert state is not None
            assert state.read() == KeyValue(ValueType.COUNTER, 0, (), ())
    finally:
        ap.close()
        eu.close()
