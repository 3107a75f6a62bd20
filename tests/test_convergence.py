"""Three replicas of the whole store against a reference model.

Replicas mutate locally; deltas are delivered in any order, duplicated or
never; anti-entropy (full state joins) happens now and then and at the end.
After every full anti-entropy all replicas must be identical and show what the
reference model says.

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
from crdtstore.crdt.hlc import ZERO
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
        self.deltas: list[StoreMap] = []
        self.model = Model()

    # -- local mutations ---------------------------------------------------------------

    def _accept(self, region: str, delta: StoreMap, effects: list[Effect]) -> None:
        for e in effects:
            assert delta.context.contains(e.dot), f"{e.kind} minted {e.dot} as the model expects"
        self.states[region] = self.states[region].join_delta(delta)
        self.deltas.append(delta)
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
        """Any delta to any replica, in any order, any number of times."""
        self.states[r] = self.states[r].join_delta(self.deltas[i % len(self.deltas)])

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
