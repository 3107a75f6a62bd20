"""The store: an observed-remove map from key to an embedded CRDT.

The whole store of a region is one causal CRDT: a dot map ``key -> KeyState``
sharing a single causal context (Almeida, Shoker, Baquero, "Delta State
Replicated Data Types", JPDC 2018, the observed-remove map over dot stores).
A ``KeyState`` is itself a small dot map from value type to that type's dot
store, so a key is stored as ``(name, type)`` slots the way Riak's maps key
their fields by name and type.

Types and their first write. A key's type is fixed by its first write: on a
replica where the key holds a register, a counter or a set operation is refused
with ``TypeMismatch`` and changes nothing.

Concurrent creation with different types. Two regions that have not seen each
other's write can create the same key as, say, a register and a set. Neither
write is dropped: each lands in its own slot and both slots survive the join,
so every replica holds both. Reads show one *visible* type, chosen by a fixed
order, register before counter before set (any deterministic rule converges;
this one needs no metadata), and list the other slots as ``conflicts``.
Operations of the visible type are accepted, others are refused. Deleting the
key removes every slot the deleting region has seen, which is how a user
resolves the conflict.

Deleting a key is an observed remove: the delta's context holds every dot the
key shows on the deleting replica, so exactly what that replica saw goes;
updates it had not seen (concurrent ones) survive. A key with no dots left is
dropped from the map, so nothing is kept per deleted key; the context (one
integer per region once compact) remembers that the dots were seen, which is
why deleted data never comes back.

Every mutation mints at least one dot of the writing region, including removes
and deletes, so the context's version vector counts every event a replica has
applied. Replication uses that as its version vector.

Deltas. Mutators return a delta that is itself a ``StoreMap``. It names
everything the mutation touched, down to set members: a delete names every
slot and member of the key with empty entries. ``join_delta`` relies on that
to visit only what the delta names, so the merge work is the size of the delta,
not of the store (this in-memory form still copies its key and member indexes,
C-level dict copies; the node keeps keys in LMDB and joins key by key). A
full-state ``join`` visits everything and needs no names; ``combine`` joins
deltas and keeps the names.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple, Self

from crdtstore.crdt.awset import AWSet
from crdtstore.crdt.causal import CausalContext, Dot
from crdtstore.crdt.counter import Counter
from crdtstore.crdt.dotstore import Causal
from crdtstore.crdt.hlc import Timestamp
from crdtstore.crdt.register import Register, Sibling

__all__ = [
    "KeyState",
    "KeyValue",
    "StoreMap",
    "TypeMismatch",
    "ValueType",
]


class ValueType(IntEnum):
    """The embedded types; the number is the codec's slot tag and the read precedence."""

    REGISTER = 1
    COUNTER = 2
    SET = 3

    @property
    def label(self) -> str:
        return self.name.lower()


Slot = Register | Counter | AWSet

_SLOT_CLASS: dict[ValueType, type[Register] | type[Counter] | type[AWSet]] = {
    ValueType.REGISTER: Register,
    ValueType.COUNTER: Counter,
    ValueType.SET: AWSet,
}

# The empty slot of each type, shared: states are immutable.
_BOTTOM: dict[ValueType, Slot] = {vtype: cls.bottom() for vtype, cls in _SLOT_CLASS.items()}


class TypeMismatch(Exception):
    """An operation of one type on a key that holds another."""

    def __init__(self, key: str, held: ValueType, requested: ValueType) -> None:
        super().__init__(
            f"key {key!r} holds a {held.label}; a {requested.label} operation is not allowed on it "
            f"(delete the key first to change its type)"
        )
        self.key = key
        self.held = held
        self.requested = requested


Value = bytes | int | frozenset[str]


class KeyValue(NamedTuple):
    """What a read of one key shows."""

    type: ValueType
    value: Value
    siblings: tuple[Sibling, ...] = ()
    conflicts: tuple[tuple[ValueType, Value], ...] = ()


def _slot_value(slot: Slot) -> Value:
    if isinstance(slot, Register):
        win = slot.winner()
        assert win is not None, "a non-empty register has a winner"
        return win.value
    return slot.value()


@dataclass(frozen=True, slots=True)
class KeyState:
    """The slots of one key, one per value type that has live dots."""

    slots: Mapping[ValueType, Slot] = field(default_factory=dict)

    @classmethod
    def bottom(cls) -> Self:
        return cls()

    def is_bottom(self) -> bool:
        """True when no slot holds a dot (a delta may still name slots)."""
        for slot in self.slots.values():  # noqa: SIM110 -- a loop, not all() over a generator: a hot path
            if not slot.is_bottom():
                return False
        return True

    def dots(self) -> Iterator[Dot]:
        for slot in self.slots.values():
            yield from slot.dots()

    def join(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self:
        return self._join_slots(other, self_ctx, other_ctx, self.slots.keys() | other.slots.keys(), "join")

    def join_delta(self, delta: Self, self_ctx: CausalContext, delta_ctx: CausalContext) -> Self:
        # A delta names every slot it touches (a delete names them all), so the
        # slots it does not name are unchanged.
        return self._join_slots(delta, self_ctx, delta_ctx, delta.slots.keys(), "join_delta")

    def combine(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self:
        return self._join_slots(other, self_ctx, other_ctx, self.slots.keys() | other.slots.keys(), "combine")

    def emptied(self) -> Self:
        return type(self)({t: slot.emptied() for t, slot in self.slots.items()})

    def _join_slots(
        self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext, types: Collection[ValueType], how: str
    ) -> Self:
        mine, theirs = self.slots, other.slots
        out = dict(mine)
        keep_empty = how == "combine"
        for vtype in sorted(types) if len(types) > 1 else types:
            empty = _BOTTOM[vtype]
            slot, other_slot = mine.get(vtype, empty), theirs.get(vtype, empty)
            if slot is other_slot and (keep_empty or not isinstance(slot, AWSet)):
                # One slot shared by both sides (states from one base): every
                # dot is on both sides, so the join is the slot itself. (A
                # set's join would still drop members named with no dots.)
                joined: Slot = slot
            else:
                joined = getattr(slot, how)(other_slot, self_ctx, other_ctx)
            if keep_empty or not joined.is_bottom():
                out[vtype] = joined
            else:
                out.pop(vtype, None)
        return type(self)(out)

    @property
    def visible_type(self) -> ValueType | None:
        live = [t for t, slot in self.slots.items() if not slot.is_bottom()]
        return min(live) if live else None

    def read(self) -> KeyValue | None:
        vtype = self.visible_type
        if vtype is None:
            return None
        slot = self.slots[vtype]
        siblings: tuple[Sibling, ...] = ()
        if isinstance(slot, Register) and len(slot.entries) > 1:
            siblings = tuple(slot.siblings())
        conflicts = tuple(
            (t, _slot_value(s)) for t, s in sorted(self.slots.items()) if t != vtype and not s.is_bottom()
        )
        return KeyValue(vtype, _slot_value(slot), siblings, conflicts)


_EMPTY_KEY = KeyState()


@dataclass(frozen=True, slots=True)
class StoreMap:
    """A region's whole store, or a delta of it: keyed states plus one context."""

    entries: Mapping[str, KeyState] = field(default_factory=dict)
    context: CausalContext = field(default_factory=CausalContext)

    @classmethod
    def bottom(cls) -> StoreMap:
        return cls()

    # -- joins --------------------------------------------------------------------

    def join(self, other: StoreMap) -> StoreMap:
        """The full join; correct for any two states of one execution."""
        return self._join_keys(other, self.entries.keys() | other.entries.keys(), "join")

    def join_delta(self, delta: StoreMap) -> StoreMap:
        """Apply a delta that names every key it touches (what the mutators return).

        Equal to ``join`` for such deltas (a property test holds it to that).
        """
        return self._join_keys(delta, delta.entries.keys(), "join_delta")

    def combine(self, other: StoreMap) -> StoreMap:
        """Join two deltas into one delta that still names everything either names.

        A batch of operations travels and applies as one unit; its delta is the
        ``combine`` of the operations' deltas. Unlike ``join``, what a part
        emptied stays named, so ``join_delta`` of the result equals joining
        the parts one by one. Both must be deltas (they name what they touch),
        so only what ``other`` names is visited.
        """
        return self._join_keys(other, other.entries.keys(), "combine")

    def _join_keys(self, other: StoreMap, keys: Iterable[str], how: str) -> StoreMap:
        out = dict(self.entries)
        theirs = other.entries
        self_ctx, other_ctx = self.context, other.context
        keep_empty = how == "combine"
        for key in keys:
            joined = getattr(out.get(key, _EMPTY_KEY), how)(theirs.get(key, _EMPTY_KEY), self_ctx, other_ctx)
            if keep_empty or not joined.is_bottom():
                out[key] = joined
            else:
                out.pop(key, None)
        return StoreMap(out, self_ctx.join(other_ctx))

    # -- reads ----------------------------------------------------------------------

    def latest_timestamp(self) -> Timestamp | None:
        """The newest register timestamp in this state or delta: what a receiving clock must pass."""
        latest: Timestamp | None = None
        for state in self.entries.values():
            register = state.slots.get(ValueType.REGISTER)
            if isinstance(register, Register):
                for version in register.entries.values():
                    if latest is None or version.timestamp > latest:
                        latest = version.timestamp
        return latest

    def get(self, key: str) -> KeyValue | None:
        state = self.entries.get(key)
        return None if state is None else state.read()

    # -- mutators: each returns a delta ----------------------------------------------

    def write_register(self, key: str, value: bytes, timestamp: Timestamp, region: str) -> StoreMap:
        reg = self._slot(key, ValueType.REGISTER)
        assert isinstance(reg, Register)
        delta = reg.write(value, timestamp, self.context.next_dot(region))
        return self._delta(key, ValueType.REGISTER, delta)

    def increment(self, key: str, amount: int, region: str) -> StoreMap:
        counter = self._slot(key, ValueType.COUNTER)
        assert isinstance(counter, Counter)
        delta = counter.increment(amount, self.context.next_dot(region))
        return self._delta(key, ValueType.COUNTER, delta)

    def add_members(self, key: str, members: Iterable[str], region: str) -> StoreMap:
        return self._set_op(key, members, region, add=True)

    def remove_members(self, key: str, members: Iterable[str], region: str) -> StoreMap:
        return self._set_op(key, members, region, add=False)

    def delete(self, key: str, region: str) -> StoreMap:
        _check_key(key)
        dot = self.context.next_dot(region)
        state = self.entries.get(key, _EMPTY_KEY)
        return StoreMap({key: state.emptied()}, CausalContext.from_dots([dot, *state.dots()]))

    def _set_op(self, key: str, members: Iterable[str], region: str, *, add: bool) -> StoreMap:
        if isinstance(members, str):
            raise TypeError("pass the members as a list of strings, not one string")
        unique = sorted(set(members))
        if not unique:
            raise ValueError("a set operation needs at least one member")
        aw = self._slot(key, ValueType.SET)
        assert isinstance(aw, AWSet)
        first = self.context.next_dot(region).counter
        store: dict[str, frozenset[Dot]] = {}
        dots: list[Dot] = []
        for i, member in enumerate(unique):
            dot = Dot(region, first + i)
            part = aw.add(member, dot) if add else aw.remove(member, dot)
            store.update(part.store.entries)
            dots.extend(part.context.dots())
        return StoreMap({key: KeyState({ValueType.SET: AWSet(store)})}, CausalContext.from_dots(dots))

    def _slot(self, key: str, vtype: ValueType) -> Slot:
        _check_key(key)
        state = self.entries.get(key)
        if state is not None:
            held = state.visible_type
            if held is not None and held != vtype:
                raise TypeMismatch(key, held, vtype)
            slot = state.slots.get(vtype)
            if slot is not None:
                return slot
        return _SLOT_CLASS[vtype].bottom()

    @staticmethod
    def _delta(key: str, vtype: ValueType, delta: Causal[Register] | Causal[Counter]) -> StoreMap:
        return StoreMap({key: KeyState({vtype: delta.store})}, delta.context)


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"keys are strings, got {type(key).__name__}")
