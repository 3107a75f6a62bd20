"""Dot stores and the causal join they share.

Every crdtstore type is a *causal CRDT* (Almeida, Shoker, Baquero, "Delta State
Replicated Data Types", JPDC 2018): a *dot store* paired with a
causal context. The dot store holds the events that are still visible; the
context holds every event ever seen. Joining two replicas ``(s1, c1)`` and
``(s2, c2)`` keeps

* what both stores hold,
* what only one store holds, as long as the other side never saw it
  (a dot the other side saw but no longer holds was removed there).

That single rule gives observed-remove semantics to every type: a removal is
just "the context grew and the store did not", so there are no tombstones, and
an update concurrent with a removal survives because its dot was not seen.

Three shapes of dot store appear in the paper and here:

* dot set   -- ``frozenset[Dot]``                 (an element's adds in a set)
* dot fun   -- ``dict[Dot, V]``, V immutable      (register writes, counter shares)
* dot map   -- ``dict[K, DotStore]``              (set members, the store's keys)

The types (``Register``, ``Counter``, ``AWSet``, ``KeyState``) follow one
contract, ``DotStore`` below, so the map can embed any of them, and
``Causal[T]`` pairs any of them with a context. A mutator returns a delta
``Causal[T]`` and the only way state changes is ``state.join(delta)``, so the
local path and the receive path are the same function.

Immutability: states are frozen dataclasses holding dicts that are built fresh
by every operation and never mutated afterwards. Python has no frozen dict; the
discipline is kept here and checked by the tests (a delta handed to the log is
compared before and after it is joined).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, Self, TypeVar

from crdtstore.crdt.causal import CausalContext, Dot

__all__ = ["Causal", "DotFunStore", "DotStore", "join_dot_fun", "join_dot_set"]

V = TypeVar("V")


class DotStore(Protocol):
    """What every embedded type answers.

    Deltas *name* what they touch: a delta may hold empty entries (a set member
    with no dots, a key with no slots, a slot with no entries) that say "this
    was touched and is now empty here". ``join_delta`` relies on that to visit
    only what the delta names, so applying a delta costs the size of the delta;
    ``join`` visits everything and never needs names; ``combine`` joins two
    deltas and keeps the names of both. States never hold empty entries.
    """

    @classmethod
    def bottom(cls) -> Self:
        """The empty state, identity of join."""
        ...

    def is_bottom(self) -> bool: ...

    def dots(self) -> Iterator[Dot]:
        """Every dot still visible in this store."""
        ...

    def join(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self:
        """The full join of two states (or a state and a delta); keeps no empty entries."""
        ...

    def join_delta(self, delta: Self, self_ctx: CausalContext, delta_ctx: CausalContext) -> Self:
        """``join`` for a delta that names everything it touches; visits only that."""
        ...

    def combine(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self:
        """Join two deltas into one that still names everything either names.

        Only what ``other`` names is visited: a delta's context covers nothing
        it does not name, so the rest of ``self`` is unaffected.
        """
        ...

    def emptied(self) -> Self:
        """A delta store that names everything in this one and holds none of it."""
        ...


S = TypeVar("S", bound=DotStore)


@dataclass(frozen=True, slots=True)
class Causal(Generic[S]):
    """A dot store with its causal context: a full replica state, or a delta."""

    store: S
    context: CausalContext

    def join(self, other: Causal[S]) -> Causal[S]:
        return Causal(
            self.store.join(other.store, self.context, other.context),
            self.context.join(other.context),
        )

    def join_delta(self, delta: Causal[S]) -> Causal[S]:
        return Causal(
            self.store.join_delta(delta.store, self.context, delta.context),
            self.context.join(delta.context),
        )

    def combine(self, other: Causal[S]) -> Causal[S]:
        return Causal(
            self.store.combine(other.store, self.context, other.context),
            self.context.join(other.context),
        )

    def next_dot(self, region: str) -> Dot:
        return self.context.next_dot(region)


def join_dot_set(s1: frozenset[Dot], c1: CausalContext, s2: frozenset[Dot], c2: CausalContext) -> frozenset[Dot]:
    """``(s1 & s2) | (s1 - c2) | (s2 - c1)``."""
    if s1 == s2:
        return s1
    # One side empty is the usual case: a member only one side holds, or a delta's.
    if not s2:
        return _unseen(s1, c2)
    if not s1:
        return _unseen(s2, c1)
    kept = [d for d in s1 if d in s2 or not c2.contains(d)]
    kept.extend(d for d in s2 if d not in s1 and not c1.contains(d))
    return frozenset(kept)


def _unseen(dots: frozenset[Dot], ctx: CausalContext) -> frozenset[Dot]:
    """The dots ``ctx`` has not seen (``dots`` itself when that is all of them)."""
    contains = ctx.contains
    kept = [d for d in dots if not contains(d)]
    return dots if len(kept) == len(dots) else frozenset(kept)


def join_dot_fun(
    f1: Mapping[Dot, V],
    c1: CausalContext,
    f2: Mapping[Dot, V],
    c2: CausalContext,
    join_values: Callable[[V, V], V] | None = None,
) -> dict[Dot, V]:
    """The dot-set rule on the keys; a dot held on both sides keeps one value.

    A dot names one event, so both sides hold the same value for it; a
    ``join_values`` may be given for value types that are themselves lattices.
    """
    out: dict[Dot, V] = {}
    seen_by_2, seen_by_1 = c2.contains, c1.contains
    for dot, value in f1.items():
        if dot in f2:
            out[dot] = value if join_values is None else join_values(value, f2[dot])
        elif not seen_by_2(dot):
            out[dot] = value
    for dot, value in f2.items():
        if dot not in f1 and not seen_by_1(dot):
            out[dot] = value
    return out


@dataclass(frozen=True, slots=True)
class DotFunStore(Generic[V]):
    """A dot store that is a dot fun ``dot -> V``: the base of the register and the counter.

    Its entries are few (one per region, or per concurrent write), so a delta
    join may visit them all; there is nothing finer to name.
    """

    entries: Mapping[Dot, V] = field(default_factory=dict)

    @classmethod
    def bottom(cls) -> Self:
        return cls()

    def is_bottom(self) -> bool:
        return not self.entries

    def dots(self) -> Iterator[Dot]:
        return iter(self.entries)

    def join(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self:
        if not other.entries and not self.entries:
            return self
        return type(self)(join_dot_fun(self.entries, self_ctx, other.entries, other_ctx))

    def join_delta(self, delta: Self, self_ctx: CausalContext, delta_ctx: CausalContext) -> Self:
        return self.join(delta, self_ctx, delta_ctx)

    def combine(self, other: Self, self_ctx: CausalContext, other_ctx: CausalContext) -> Self:
        return self.join(other, self_ctx, other_ctx)

    def emptied(self) -> Self:
        return type(self)()
